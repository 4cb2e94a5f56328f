//! What the user sees: progress lines while running, the summary (text and
//! JSON), the `.hgrm` percentile distribution and the SVG spectrum plot.

use std::fmt::Write as _;
use std::io::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Config;
use crate::stats::Stats;
use crate::worker::{Phase, Progress};

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        // value_at_quantile reports the highest value equivalent to the
        // bucket, as HdrHistogram does everywhere (a conservative figure).
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The run's settings, as reported.
#[derive(Debug, Serialize)]
pub struct RunConfig {
    /// Target nodes.
    pub urls: Vec<String>,
    /// Clients.
    pub clients: u32,
    /// Members per room.
    pub room_size: u32,
    /// Rooms.
    pub rooms: u32,
    /// Messages per second in total.
    pub rate: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Drain seconds (at most).
    pub drain_s: f64,
    /// Bytes of `msg`.
    pub payload: usize,
    /// Worker processes.
    pub workers: u32,
    /// Connections opened at once.
    pub connect_concurrency: u32,
    /// Source addresses spread over 127.0.0.0/8.
    pub source_spread: bool,
    /// `--stages`, if the rate ramped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<String>,
    /// `--classes`, if members sent unequally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<String>,
    /// `--scenario`, if one was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
}

/// Connect phase.
#[derive(Debug, Serialize)]
pub struct ConnectReport {
    /// Seconds until every client was logged in.
    pub seconds: f64,
    /// Clients logged in per second.
    pub per_second: f64,
    /// Failed attempts that were retried.
    pub retries: u64,
}

/// Messages sent.
#[derive(Debug, Serialize)]
pub struct MessagesReport {
    /// Sent in all (warm-up included).
    pub sent: u64,
    /// Measured messages sent.
    pub measured: u64,
    /// Messages whose sender was no longer connected.
    pub send_failures: u64,
}

/// Deliveries of measured messages.
#[derive(Debug, Serialize)]
pub struct DeliveriesReport {
    /// Deliveries the schedule implies.
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Expected but not received by the end of the drain.
    pub lost: u64,
    /// Deliveries of messages the server refused (rate limit): not expected.
    pub refused: u64,
    /// Received per second of measured time.
    pub per_second: f64,
    /// Bytes read from the sockets from the start of traffic (frames as on the
    /// wire: compressed ones compressed).
    pub bytes_received: u64,
    /// Those bytes per message frame received (a ratio to compare runs by).
    pub bytes_per_delivery: f64,
    /// Frames that came compressed (`--deflate`).
    pub deflated_frames: u64,
}

/// Order and error checks.
#[derive(Debug, Serialize)]
pub struct ChecksReport {
    /// Forward jumps of a member's `seq`.
    pub seq_gaps: u64,
    /// Messages skipped by those jumps.
    pub seq_skipped: u64,
    /// Repeats or reversals of a member's `seq`.
    pub seq_backwards: u64,
    /// Epoch changes seen.
    pub epoch_changes: u64,
    /// Error frames.
    pub error_frames: u64,
    /// Of them, messages refused for the server's rate limit.
    pub refused: u64,
    /// Connections closed by the server after login.
    pub closed: u64,
    /// Their close codes (0: no close frame) and counts.
    pub close_codes: std::collections::BTreeMap<u16, u64>,
    /// Frames loadgen could not read.
    pub unexpected: u64,
    /// Deliveries outside the schedule.
    pub stray: u64,
    /// The first problems, in words.
    pub problems: Vec<String>,
}

/// CPU cost.
#[derive(Debug, Serialize)]
pub struct CpuReport {
    /// loadgen's CPU seconds during the traffic phase (all workers).
    pub loadgen_cpu_s: f64,
    /// Deliveries loadgen received in that phase (warm-up included).
    pub deliveries: u64,
    /// loadgen CPU nanoseconds per received delivery.
    pub loadgen_ns_per_delivery: f64,
    /// Server CPU seconds in the same phase (with --server-pid).
    pub server_cpu_s: Option<f64>,
    /// Server CPU nanoseconds per delivery.
    pub server_ns_per_delivery: Option<f64>,
}

/// Everything a run reports; `--json` writes it.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// No loss, no disorder, no error.
    pub ok: bool,
    /// Why not, in words.
    pub failures: Vec<String>,
    /// Settings.
    pub config: RunConfig,
    /// Connect phase.
    pub connect: ConnectReport,
    /// Sends.
    pub messages: MessagesReport,
    /// Deliveries.
    pub deliveries: DeliveriesReport,
    /// Delivery latency from the due time.
    pub latency_ms: Percentiles,
    /// Delivery latency up to the kernel's receive timestamp (arrival in
    /// loadgen's socket): the part loadgen's own scheduling cannot inflate.
    pub socket_latency_ms: Percentiles,
    /// Per message, latency of its last delivery.
    pub completion_ms: Percentiles,
    /// How late loadgen sent (its own lag, included in the latency).
    pub send_lag_ms: Percentiles,
    /// Checks.
    pub checks: ChecksReport,
    /// Room events: reactions sent (`--reactions`), events received.
    pub events: EventsReport,
    /// `--churn`: drops, resumes and resends (None without churn).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnReport>,
    /// CPU.
    pub cpu: CpuReport,
    /// `--agents`: each agent, its workers and its clock.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentReport>,
    /// The server side each second (`--server-metrics`, the kernel's sockets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_samples: Vec<crate::sampler::Sample>,
}

/// An agent of a distributed run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    /// `host:port`.
    pub addr: String,
    /// The worker indices it ran.
    pub workers: Vec<u32>,
    /// Its clock minus the coordinator's, as measured (ms).
    pub clock_offset_ms: f64,
    /// Round trip of the ping that measured it (ms).
    pub ping_ms: f64,
}

/// Room events in the run.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    /// Reactions sent (`--reactions`).
    pub sent: u64,
    /// Edits sent (`--edits`).
    pub edits: u64,
    /// Typing frames sent (`--typing`).
    pub typing: u64,
    /// Room events received (each member's copy).
    pub received: u64,
    /// History pages asked for (`--history-reads`).
    pub history_reads: u64,
    /// Of them, answered.
    pub history_answered: u64,
    /// Private messages sent (`--private`).
    pub private_sent: u64,
    /// Private messages received by their targets.
    pub private_received: u64,
    /// Refused: their target was away (`--churn`).
    pub private_refused: u64,
}

/// What reconnect churn did (`--churn`).
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Connections dropped on purpose.
    pub drops: u64,
    /// Of them, logged in again with their room resumed.
    pub resumed: u64,
    /// Resumes the server could not recover (`"recovered": false`).
    pub not_recovered: u64,
    /// Messages sent again under their `mid` after a reconnect.
    pub resent: u64,
    /// Of them, answered `"dup": true` (the server had them already).
    pub dup_answers: u64,
    /// Messages that fell due while their sender was away, sent on its return.
    pub queued_while_down: u64,
    /// Clients a draining node closed (1012) that came back on another node.
    pub drain_reconnects: u64,
    /// From the drop to the resumed login's ack (the missed messages follow it).
    pub resume_ms: Percentiles,
}

impl Summary {
    /// Builds the summary from merged stats.
    pub fn new(cfg: &Config, workers: u32, s: &Stats, server_cpu_ns: Option<u64>) -> Summary {
        let c = &s.counters;
        let a = &cfg.args;
        // A message the server refused is not delivered: its deliveries are
        // not expected, and the refusal is reported as such, not as loss.
        let expected = c.expected_measured.saturating_sub(c.refused_deliveries);
        let lost = expected.saturating_sub(c.recv_measured);
        let mut failures = Vec::new();
        if lost > 0 {
            failures.push(format!("{lost} of {expected} expected deliveries lost"));
        }
        if c.seq_gaps > 0 {
            failures.push(format!("seq jumped forward {} times ({} messages skipped)", c.seq_gaps, c.seq_skipped));
        }
        if c.seq_backwards > 0 {
            failures.push(format!("seq repeated or went back {} times (duplicates or disorder)", c.seq_backwards));
        }
        if c.refused > 0 {
            failures.push(format!(
                "{} messages refused by the server's rate limit (\"sending too fast\"): start the server with --rate-limit 0 for a load test",
                c.refused
            ));
        }
        if c.history_answered < c.history_sent && a.churn == 0.0 && !a.follow_drain {
            failures.push(format!(
                "{} of {} history reads unanswered",
                c.history_sent - c.history_answered,
                c.history_sent
            ));
        }
        // Private messages are not stored (CChat's): one to a member whose
        // connection is away (--churn, a drain) reaches nobody, so only a
        // run without reconnects can demand every one.
        let reconnects = a.churn > 0.0 || a.follow_drain;
        if c.private_received + c.private_refused > c.private_sent
            || (!reconnects && c.private_received + c.private_refused != c.private_sent)
        {
            failures.push(format!(
                "{} private messages sent, {} received by their targets ({} refused: target away)",
                c.private_sent, c.private_received, c.private_refused
            ));
        }
        if c.error_frames > c.refused {
            failures.push(format!("{} error frames", c.error_frames - c.refused));
        }
        if c.closed > 0 {
            let codes: Vec<String> = s
                .close_codes
                .iter()
                .map(|(k, n)| format!("{n}× {}", if *k == 0 { "reset".into() } else { k.to_string() }))
                .collect();
            failures.push(format!("{} connections closed by the server ({})", c.closed, codes.join(", ")));
        }
        if c.unexpected > 0 {
            failures.push(format!("{} unreadable frames", c.unexpected));
        }
        if c.send_failures > 0 {
            failures.push(format!("{} messages could not be sent", c.send_failures));
        }
        if c.not_recovered > 0 {
            failures.push(format!("{} resumes were not recovered (members may have missed messages)", c.not_recovered));
        }
        if c.recv_measured > expected {
            failures.push(format!("{} more deliveries than expected", c.recv_measured - expected));
        }
        let connect_s = c.connect_ns as f64 / 1e9;
        let per_delivery = |ns: u64| {
            if c.recv_total == 0 { 0.0 } else { ns as f64 / c.recv_total as f64 }
        };
        Summary {
            ok: failures.is_empty(),
            failures,
            config: RunConfig {
                urls: a.urls.clone(),
                clients: cfg.clients,
                room_size: cfg.room_size,
                rooms: cfg.clients.div_ceil(cfg.room_size),
                rate: cfg.rate,
                duration_s: a.duration,
                warmup_s: a.warmup,
                drain_s: a.drain,
                payload: cfg.payload,
                workers,
                connect_concurrency: a.connect_concurrency,
                source_spread: cfg.source_spread,
                stages: a.stages.clone(),
                classes: a.classes.clone(),
                scenario: a.scenario.clone(),
            },
            connect: ConnectReport {
                seconds: connect_s,
                per_second: if connect_s > 0.0 { c.connected as f64 / connect_s } else { 0.0 },
                retries: c.connect_retries,
            },
            messages: MessagesReport { sent: c.sent, measured: c.sent_measured, send_failures: c.send_failures },
            deliveries: DeliveriesReport {
                expected,
                refused: c.refused_deliveries,
                received: c.recv_measured,
                lost,
                per_second: c.recv_measured as f64 / a.duration,
                bytes_received: c.recv_bytes,
                bytes_per_delivery: c.recv_bytes as f64 / c.recv_total.max(1) as f64,
                deflated_frames: c.deflated_frames,
            },
            latency_ms: Percentiles::of(&s.latency),
            socket_latency_ms: Percentiles::of(&s.socket_latency),
            completion_ms: Percentiles::of(&s.completion()),
            send_lag_ms: Percentiles::of(&s.send_lag),
            checks: ChecksReport {
                seq_gaps: c.seq_gaps,
                seq_skipped: c.seq_skipped,
                seq_backwards: c.seq_backwards,
                epoch_changes: c.epoch_changes,
                error_frames: c.error_frames,
                refused: c.refused,
                closed: c.closed,
                close_codes: s.close_codes.clone(),
                unexpected: c.unexpected,
                stray: c.stray,
                problems: s.problems.clone(),
            },
            events: EventsReport {
                sent: c.reactions_sent,
                edits: c.edits_sent,
                typing: c.typing_sent,
                received: c.events_received,
                history_reads: c.history_sent,
                history_answered: c.history_answered,
                private_sent: c.private_sent,
                private_received: c.private_received,
                private_refused: c.private_refused,
            },
            churn: (a.churn > 0.0 || a.follow_drain).then(|| ChurnReport {
                drain_reconnects: c.drain_reconnects,
                drops: c.drops,
                resumed: c.resumed,
                not_recovered: c.not_recovered,
                resent: c.resent,
                dup_answers: c.dup_answers,
                queued_while_down: c.queued_while_down,
                resume_ms: Percentiles::of(&s.resume),
            }),
            cpu: CpuReport {
                loadgen_cpu_s: c.cpu_run_ns as f64 / 1e9,
                deliveries: c.recv_total,
                loadgen_ns_per_delivery: per_delivery(c.cpu_run_ns),
                server_cpu_s: server_cpu_ns.map(|n| n as f64 / 1e9),
                server_ns_per_delivery: server_cpu_ns.map(per_delivery),
            },
            server_samples: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// The summary as text.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let c = &self.config;
        let _ = writeln!(
            o,
            "\n{} clients in {} rooms of {} on {} node(s), {} msg/s × {} B for {} s ({} worker process(es))",
            c.clients,
            c.rooms,
            c.room_size,
            c.urls.len(),
            c.rate,
            c.payload,
            c.duration_s,
            c.workers
        );
        let _ = writeln!(
            o,
            "connect      {:.2} s, {:.0} clients/s, {} retries",
            self.connect.seconds, self.connect.per_second, self.connect.retries
        );
        let d = &self.deliveries;
        let _ = writeln!(
            o,
            "deliveries   {} of {} expected, {} lost, {:.0}/s (messages sent: {}, measured {})",
            d.received, d.expected, d.lost, d.per_second, self.messages.sent, self.messages.measured
        );
        let _ = writeln!(
            o,
            "wire         {} bytes read, {:.1} per delivery, {} frames compressed",
            d.bytes_received, d.bytes_per_delivery, d.deflated_frames
        );
        if d.refused > 0 {
            let _ = writeln!(
                o,
                "             {} deliveries not expected: their messages were refused by the server's rate limit",
                d.refused
            );
        }
        let _ = writeln!(
            o,
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  (ms)",
            "", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (name, p) in [
            ("latency", &self.latency_ms),
            ("at socket", &self.socket_latency_ms),
            ("completion", &self.completion_ms),
            ("send lag", &self.send_lag_ms),
        ] {
            let _ = writeln!(
                o,
                "{name:<12} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean
            );
        }
        let _ = writeln!(
            o,
            "             latency: from when a message was due to its reading by each recipient; at socket: the same up\n             to the kernel's receive timestamp (before loadgen read it); completion: per message, until its\n             last recipient read it; send lag: how late loadgen sent messages after they were due"
        );
        let k = &self.checks;
        let _ = writeln!(
            o,
            "checks       seq gaps {}, seq backwards {}, error frames {} ({} refused for the rate limit), closed {}, unreadable {}, epoch changes {}",
            k.seq_gaps, k.seq_backwards, k.error_frames, k.refused, k.closed, k.unexpected, k.epoch_changes
        );
        if self.events.sent > 0 || self.events.edits > 0 || self.events.typing > 0 || self.events.received > 0 {
            let _ = writeln!(
                o,
                "events       {} reactions, {} edits and {} typing sent, {} events received (counted with the deliveries below)",
                self.events.sent, self.events.edits, self.events.typing, self.events.received
            );
        }
        if self.events.private_sent > 0 {
            let _ = writeln!(
                o,
                "private      {} sent, {} received by their targets, {} refused (target away){}",
                self.events.private_sent,
                self.events.private_received,
                self.events.private_refused,
                if self.churn.is_some() {
                    "; not stored, so one to a target reconnecting may reach nobody"
                } else {
                    ""
                }
            );
        }
        if self.events.history_reads > 0 {
            let _ = writeln!(
                o,
                "history      {} pages asked for, {} answered",
                self.events.history_reads, self.events.history_answered
            );
        }
        if let Some(ch) = &self.churn {
            let r = &ch.resume_ms;
            let _ = writeln!(
                o,
                "churn        {} drops and {} drained, {} resumed, {} not recovered; {} resent ({} already stored), {} sent late; resume p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ch.drops,
                ch.drain_reconnects,
                ch.resumed,
                ch.not_recovered,
                ch.resent,
                ch.dup_answers,
                ch.queued_while_down,
                r.p50,
                r.p99,
                r.max
            );
        }
        let u = &self.cpu;
        let _ = write!(
            o,
            "cpu          loadgen {:.2} s = {:.0} ns per received delivery",
            u.loadgen_cpu_s, u.loadgen_ns_per_delivery
        );
        if let (Some(s), Some(n)) = (u.server_cpu_s, u.server_ns_per_delivery) {
            let _ = write!(o, "; server {s:.2} s = {n:.0} ns per delivery");
        }
        let _ = writeln!(o);
        if self.ok {
            let _ = writeln!(o, "OK: no loss, no disorder, no errors");
        } else {
            let _ = writeln!(o, "FAILED: {}", self.failures.join("; "));
            for p in &k.problems {
                let _ = writeln!(o, "  {p}");
            }
        }
        o
    }
}

/// Prints a progress line about once a second, with rates since the last one.
#[derive(Debug)]
pub struct ProgressPrinter {
    quiet: bool,
    /// Clients of the whole run, for the connect bar (workers that have not
    /// reported yet count as none logged in).
    clients: u64,
    /// Messages the whole run sends (warm-up and measured), for the run's bar.
    to_send: u64,
    start_ns: u64,
    last: Option<(u64, Progress)>,
    /// On a terminal the line is redrawn in place (one line per phase);
    /// otherwise (a log, a pipe) a new line about once a second.
    in_place: bool,
    /// A line drawn in place and not yet ended: whether it is the traffic
    /// phase's (run, drain) or the connect phase's.
    open_line: Option<bool>,
}

/// A `[####....]` bar of `done` out of `total` (full when `total` is 0).
fn bar(done: u64, total: u64) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH as u64).checked_div(total).map_or(WIDTH, |d| (d as usize).min(WIDTH));
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

impl ProgressPrinter {
    /// A printer (silent when `quiet`) for a run of `clients` clients that
    /// sends `to_send` messages.
    pub fn new(quiet: bool, clients: u64, to_send: u64) -> ProgressPrinter {
        use std::io::IsTerminal as _;
        ProgressPrinter {
            quiet,
            clients,
            to_send,
            start_ns: crate::sys::now_ns(),
            last: None,
            in_place: std::io::stderr().is_terminal(),
            open_line: None,
        }
    }

    /// Prints the line for the totals `p`.
    pub fn print(&mut self, p: &Progress) {
        let now = crate::sys::now_ns();
        let (dt, prev) = match self.last {
            Some((t, prev)) => ((now - t) as f64 / 1e9, prev),
            None => ((now - self.start_ns) as f64 / 1e9, Progress::default()),
        };
        self.last = Some((now, *p));
        // Worker processes have not reported yet.
        if self.quiet || p.clients == 0 {
            return;
        }
        let rate = |a: u64, b: u64| if dt > 0.0 { a.saturating_sub(b) as f64 / dt } else { 0.0 };
        let t = (now - self.start_ns) as f64 / 1e9;
        let line = match p.phase {
            Phase::Connect | Phase::Ready => {
                let clients = self.clients.max(p.clients);
                format!(
                    "[{t:6.1}s] connect {} {}/{clients} logged in, {:.0}/s, retries {}, problems {}",
                    bar(p.connected, clients),
                    p.connected,
                    rate(p.connected, prev.connected),
                    p.retries,
                    p.problems
                )
            }
            Phase::Run | Phase::Drain => format!(
                "[{t:6.1}s] {} {} sent {} ({:.0}/s), received {} ({:.0}/s), problems {}",
                if p.phase == Phase::Run { "run  " } else { "drain" },
                bar(p.sent, self.to_send),
                p.sent,
                rate(p.sent, prev.sent),
                p.received,
                rate(p.received, prev.received),
                p.problems
            ),
        };
        let mut err = std::io::stderr().lock();
        if self.in_place {
            // A new phase keeps the last line of the one before.
            let traffic = matches!(p.phase, Phase::Run | Phase::Drain);
            if self.open_line.is_some_and(|t| t != traffic) {
                let _ = writeln!(err);
            }
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
            self.open_line = Some(traffic);
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
}

impl Drop for ProgressPrinter {
    /// Ends a line drawn in place, so that what follows starts on its own.
    fn drop(&mut self) {
        if self.open_line.is_some() {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

/// HdrHistogram's percentile distribution text (`.hgrm`), values in ms.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(o, "{value:>12.3} {q:>14.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(o, "{value:>12.3} {q:>14.12} {total:>10}",);
        }
    }
    let _ = writeln!(o, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1000.0, h.stdev() / 1000.0);
    let _ = writeln!(o, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64 / 1000.0, h.len());
    let _ = writeln!(o, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), h.distinct_values());
    o
}

/// A latency percentile spectrum (the HdrHistogram plot: x is the
/// percentile on a log scale of 1/(1-p), y the latency in ms) of delivery
/// latency and broadcast completion, as a self-contained SVG.
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    const W: f64 = 860.0;
    const H: f64 = 480.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 50.0;
    const B: f64 = 60.0;
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    // x runs from 1 (0th percentile) to 10^decades (as far as the data go).
    let count = series.iter().map(|(_, h)| h.len()).max().unwrap_or(1).max(10);
    let decades = ((count as f64).log10().floor()).clamp(1.0, 6.0);
    let ymax_us = series.iter().map(|(_, h)| h.max()).max().unwrap_or(1).max(1);
    let (ystep, ymax) = nice_axis(ymax_us as f64 / 1000.0);
    let px = |x: f64| L + (x.log10() / decades) * (W - L - R);
    let py = |ms: f64| H - B - (ms / ymax) * (H - T - B);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12" role="img" aria-label="{t}">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{t}</text>
"#,
        W / 2.0,
        t = xml_escape(title)
    );
    // Grid and axes.
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        let (x2, yy, tx, ty, label) = (W - R, py(y), L - 6.0, py(y) + 4.0, fmt_ms(y));
        let _ = writeln!(
            o,
            r##"<line x1="{L}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##
        );
        y += ystep;
    }
    for d in 0..=decades as u32 {
        let x = px(10f64.powi(d as i32));
        let label = match d {
            0 => "0%".to_string(),
            1 => "90%".to_string(),
            2 => "99%".to_string(),
            _ => format!("99.{}%", "9".repeat(d as usize - 2)),
        };
        let anchor = if d == decades as u32 { "end" } else { "middle" };
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{T}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="{anchor}">{label}</text>"##,
            H - B,
            H - B + 18.0
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#444"/>
<text x="{}" y="{}" text-anchor="middle">percentile</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (ms)</text>"##,
        W - L - R,
        H - T - B,
        (L + W - R) / 2.0,
        H - 14.0,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    for (i, (name, h)) in series.iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        let color = colors[i % colors.len()];
        let mut pts = String::new();
        let steps = (decades * 40.0) as u32;
        for k in 0..=steps {
            let x = 10f64.powf(k as f64 / 40.0);
            let q = 1.0 - 1.0 / x;
            let ms = h.value_at_quantile(q) as f64 / 1000.0;
            let _ = write!(pts, "{:.1},{:.1} ", px(x), py(ms));
        }
        let _ = writeln!(o, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.trim_end());
        let ly = T + 18.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{} (p99 {} ms, max {} ms)</text>"#,
            L + 12.0,
            L + 36.0,
            L + 42.0,
            ly + 4.0,
            xml_escape(name),
            fmt_ms(h.value_at_quantile(0.99) as f64 / 1000.0),
            fmt_ms(h.max() as f64 / 1000.0)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// A round axis step and maximum for values up to `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    (step, (max / step).ceil() * step)
}

fn fmt_ms(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_hist;

    #[test]
    fn bars_fill_in_proportion_and_never_overflow() {
        assert_eq!(bar(0, 10), format!("[{}]", ".".repeat(30)));
        assert_eq!(bar(5, 10), format!("[{}{}]", "#".repeat(15), ".".repeat(15)));
        assert_eq!(bar(10, 10), format!("[{}]", "#".repeat(30)));
        // More sent than planned (rounding), or nothing planned: a full bar.
        assert_eq!(bar(11, 10), bar(10, 10));
        assert_eq!(bar(0, 0), bar(10, 10));
    }

    #[test]
    fn outputs_are_well_formed() {
        let mut h = new_hist();
        for v in 1..10_000u64 {
            h.record(v * 3).unwrap();
        }
        let text = hgrm(&h);
        assert!(text.contains("Percentile"));
        assert!(text.contains("#[Max     ="));
        let last_value: Vec<&str> = text.lines().rev().nth(3).unwrap().split_whitespace().collect();
        assert_eq!(last_value[1], "1.000000000000");
        let s = svg("t <1>", &[("latency", &h), ("completion", &new_hist())]);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t &lt;1&gt;"));
        assert_eq!(s.matches("<polyline").count(), 1);
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(nice_axis(7.3), (2.0, 8.0));
        assert_eq!(nice_axis(0.9), (0.2, 1.0));
        assert_eq!(nice_axis(120.0), (20.0, 120.0));
    }
}
