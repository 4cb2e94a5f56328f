//! What a worker measures, how it travels to the coordinator, and how the
//! coordinator merges it.
//!
//! Histograms cross the process boundary in HdrHistogram's V2 encoding
//! (base64 in a JSON line) and are added bucket by bucket, so the merged
//! percentiles are exactly those of all deliveries together, never an
//! average of percentiles. Broadcast completion needs the *last* arrival of
//! each message over all recipients, which may live in several workers: each
//! worker keeps, per measured message, the largest latency it saw, and the
//! coordinator takes the maximum per message before building that histogram.

use std::collections::BTreeMap;
use std::io::Cursor;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, up to an hour, 3 significant digits.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// Counts kept by each worker and summed by the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Clients this worker owns.
    pub clients: u64,
    /// Clients logged in.
    pub connected: u64,
    /// Connect attempts that failed and were retried.
    pub connect_retries: u64,
    /// Nanoseconds from start until the worker's last client logged in.
    pub connect_ns: u64,
    /// Messages sent (warm-up included).
    pub sent: u64,
    /// Measured messages sent.
    pub sent_measured: u64,
    /// Messages that could not be sent (the sender's connection was gone).
    pub send_failures: u64,
    /// Deliveries received during the traffic phase (warm-up included).
    pub recv_total: u64,
    /// Deliveries of measured messages received.
    pub recv_measured: u64,
    /// Deliveries of measured messages this worker's clients should receive.
    pub expected_measured: u64,
    /// Bytes read during the traffic phase.
    pub recv_bytes: u64,
    /// Compressed frames read (`--deflate`), at any phase.
    #[serde(default)]
    pub deflated_frames: u64,
    /// Times a member's `seq` jumped forward (messages missing in between).
    pub seq_gaps: u64,
    /// Messages skipped by those jumps.
    pub seq_skipped: u64,
    /// Times a member's `seq` repeated or went back (duplicate or reordering).
    pub seq_backwards: u64,
    /// Times a member saw the room's `epoch` change (the sequence restarted).
    pub epoch_changes: u64,
    /// `{"cmd":"error"}` frames received.
    pub error_frames: u64,
    /// Of them, messages the server refused for its rate limit ("sending too fast").
    pub refused: u64,
    /// Deliveries the refused measured messages would have made (all their
    /// room's members but the sender, wherever they are).
    pub refused_deliveries: u64,
    /// Connections the server closed or reset after login.
    pub closed: u64,
    /// Frames loadgen could not read (unknown layout, broken framing).
    pub unexpected: u64,
    /// Deliveries whose id is not in the schedule or that were still
    /// arriving after the drain.
    pub stray: u64,
    /// CPU time of the worker during the traffic phase (ns).
    pub cpu_run_ns: u64,
    /// CPU time of the worker in all (ns).
    pub cpu_total_ns: u64,
    /// Wall time of the traffic phase (ns).
    pub run_ns: u64,
    /// `--churn`: connections dropped on purpose, and logged in again.
    #[serde(default)]
    pub drops: u64,
    /// `--churn`: logins that resumed (`"recovered": true`).
    #[serde(default)]
    pub resumed: u64,
    /// `--churn`: logins the server could not resume (`"recovered": false`):
    /// their member may have missed messages.
    #[serde(default)]
    pub not_recovered: u64,
    /// Messages sent again under their `mid` after a reconnect.
    #[serde(default)]
    pub resent: u64,
    /// Of them, those the server already had (answered `"dup": true`).
    #[serde(default)]
    pub dup_answers: u64,
    /// Messages that fell due while their sender was reconnecting, sent once
    /// it was back.
    #[serde(default)]
    pub queued_while_down: u64,
    /// `--follow-drain`: clients a draining node closed (1012) that came back.
    #[serde(default)]
    pub drain_reconnects: u64,
    /// `--reactions`: reactions sent.
    #[serde(default)]
    pub reactions_sent: u64,
    /// `--edits`: edits sent.
    #[serde(default)]
    pub edits_sent: u64,
    /// `--typing`: typing frames sent.
    #[serde(default)]
    pub typing_sent: u64,
    /// Room events (reactions, edits, deletions) received.
    #[serde(default)]
    pub events_received: u64,
    /// `--history-reads`: history pages asked for.
    #[serde(default)]
    pub history_sent: u64,
    /// Of them, answered.
    #[serde(default)]
    pub history_answered: u64,
    /// `--private`: private messages sent.
    #[serde(default)]
    pub private_sent: u64,
    /// Private messages received.
    #[serde(default)]
    pub private_received: u64,
    /// Private messages refused because their target was away (`--churn`).
    #[serde(default)]
    pub private_refused: u64,
}

impl Counters {
    /// Adds another worker's counts (times: the longest).
    pub fn add(&mut self, o: &Counters) {
        self.clients += o.clients;
        self.connected += o.connected;
        self.connect_retries += o.connect_retries;
        self.connect_ns = self.connect_ns.max(o.connect_ns);
        self.sent += o.sent;
        self.sent_measured += o.sent_measured;
        self.send_failures += o.send_failures;
        self.recv_total += o.recv_total;
        self.recv_measured += o.recv_measured;
        self.expected_measured += o.expected_measured;
        self.recv_bytes += o.recv_bytes;
        self.deflated_frames += o.deflated_frames;
        self.seq_gaps += o.seq_gaps;
        self.seq_skipped += o.seq_skipped;
        self.seq_backwards += o.seq_backwards;
        self.epoch_changes += o.epoch_changes;
        self.error_frames += o.error_frames;
        self.refused += o.refused;
        self.refused_deliveries += o.refused_deliveries;
        self.closed += o.closed;
        self.unexpected += o.unexpected;
        self.stray += o.stray;
        self.cpu_run_ns += o.cpu_run_ns;
        self.cpu_total_ns += o.cpu_total_ns;
        self.run_ns = self.run_ns.max(o.run_ns);
        self.drops += o.drops;
        self.resumed += o.resumed;
        self.not_recovered += o.not_recovered;
        self.resent += o.resent;
        self.dup_answers += o.dup_answers;
        self.queued_while_down += o.queued_while_down;
        self.reactions_sent += o.reactions_sent;
        self.edits_sent += o.edits_sent;
        self.drain_reconnects += o.drain_reconnects;
        self.typing_sent += o.typing_sent;
        self.events_received += o.events_received;
        self.history_sent += o.history_sent;
        self.history_answered += o.history_answered;
        self.private_sent += o.private_sent;
        self.private_received += o.private_received;
        self.private_refused += o.private_refused;
    }
}

/// Everything one worker measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Counts.
    pub counters: Counters,
    /// Delivery latency from the due time (µs), measured messages only.
    pub latency: Histogram<u64>,
    /// The same up to the kernel's receive timestamp: arrival in loadgen's
    /// socket, before loadgen read it (µs).
    pub socket_latency: Histogram<u64>,
    /// How late each measured message left loadgen (µs): loadgen's own lag.
    pub send_lag: Histogram<u64>,
    /// `--churn`: from dropping a connection to its resumed login's ack,
    /// which the missed messages follow at once (µs).
    pub resume: Histogram<u64>,
    /// Per measured message: 1 + the largest latency (µs) of its deliveries
    /// here, 0 if none arrived here.
    pub last_arrival: Vec<u32>,
    /// The first few problems, in words.
    pub problems: Vec<String>,
    /// Close codes the server sent, with counts (0: reset without a close frame).
    pub close_codes: BTreeMap<u16, u64>,
}

/// Problems kept in words (the counters have the rest).
const MAX_PROBLEMS: usize = 10;

impl Stats {
    /// Empty stats for `measured` measured messages.
    pub fn new(measured: usize) -> Stats {
        Stats {
            counters: Counters::default(),
            latency: new_hist(),
            socket_latency: new_hist(),
            send_lag: new_hist(),
            resume: new_hist(),
            last_arrival: vec![0; measured],
            problems: Vec::new(),
            close_codes: BTreeMap::new(),
        }
    }

    /// Notes a problem in words, keeping only the first few.
    pub fn problem(&mut self, what: impl FnOnce() -> String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what());
        }
    }

    /// Adds another worker's stats.
    pub fn merge(&mut self, o: &Stats) -> anyhow::Result<()> {
        self.counters.add(&o.counters);
        self.latency.add(&o.latency).context("merging latency histograms")?;
        self.socket_latency.add(&o.socket_latency).context("merging socket latency histograms")?;
        self.send_lag.add(&o.send_lag).context("merging send-lag histograms")?;
        self.resume.add(&o.resume).context("merging resume histograms")?;
        if self.last_arrival.len() != o.last_arrival.len() {
            anyhow::bail!("workers disagree on the number of measured messages");
        }
        for (a, b) in self.last_arrival.iter_mut().zip(&o.last_arrival) {
            *a = (*a).max(*b);
        }
        for p in &o.problems {
            self.problem(|| p.clone());
        }
        for (c, n) in &o.close_codes {
            *self.close_codes.entry(*c).or_default() += n;
        }
        Ok(())
    }

    /// Broadcast completion (µs): per measured message, the latency of its
    /// last delivery. Messages nobody received (rooms of one) are left out.
    pub fn completion(&self) -> Histogram<u64> {
        let mut h = new_hist();
        for &v in &self.last_arrival {
            if v > 0 {
                h.saturating_record((v - 1) as u64);
            }
        }
        h
    }

    /// The form that crosses the pipe to the coordinator.
    pub fn to_wire(&self) -> anyhow::Result<WireStats> {
        let mut bytes = Vec::with_capacity(self.last_arrival.len() * 4);
        for v in &self.last_arrival {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(WireStats {
            counters: self.counters.clone(),
            latency: encode_hist(&self.latency)?,
            socket_latency: encode_hist(&self.socket_latency)?,
            send_lag: encode_hist(&self.send_lag)?,
            resume: encode_hist(&self.resume)?,
            last_arrival: B64.encode(bytes),
            problems: self.problems.clone(),
            close_codes: self.close_codes.clone(),
        })
    }

    /// Back from the wire.
    pub fn from_wire(w: WireStats) -> anyhow::Result<Stats> {
        let bytes = B64.decode(w.last_arrival).context("last_arrival is not base64")?;
        if bytes.len() % 4 != 0 {
            anyhow::bail!("last_arrival is not a u32 array");
        }
        Ok(Stats {
            counters: w.counters,
            latency: decode_hist(&w.latency)?,
            socket_latency: decode_hist(&w.socket_latency)?,
            send_lag: decode_hist(&w.send_lag)?,
            resume: decode_hist(&w.resume)?,
            last_arrival: bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect(),
            problems: w.problems,
            close_codes: w.close_codes,
        })
    }
}

/// [`Stats`] as a worker prints it: histograms V2-encoded, then base64.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireStats {
    /// Counts.
    pub counters: Counters,
    /// Latency histogram, V2 + base64.
    pub latency: String,
    /// Socket-arrival latency histogram, V2 + base64.
    pub socket_latency: String,
    /// Send-lag histogram, V2 + base64.
    pub send_lag: String,
    /// Resume histogram, V2 + base64.
    pub resume: String,
    /// Per-message last arrival, little-endian u32s, base64.
    pub last_arrival: String,
    /// Problems in words.
    pub problems: Vec<String>,
    /// Close codes.
    pub close_codes: BTreeMap<u16, u64>,
}

/// Encodes a histogram with HdrHistogram's V2 serializer, then base64.
pub fn encode_hist(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut v = Vec::new();
    V2Serializer::new().serialize(h, &mut v).map_err(|e| anyhow::anyhow!("serializing histogram: {e:?}"))?;
    Ok(B64.encode(v))
}

/// Decodes [`encode_hist`]'s output.
pub fn decode_hist(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = B64.decode(s).context("histogram is not base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("deserializing histogram: {e:?}"))?;
    // Keep the bounds of our own histograms so that merges never fail.
    let mut out = new_hist();
    out.add(&h).context("histogram out of bounds")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_through_the_wire_is_exact() {
        let mut a = Stats::new(3);
        let mut b = Stats::new(3);
        let mut all = new_hist();
        for v in 1..5000u64 {
            let (s, x) = if v % 3 == 0 { (&mut a, v * 7) } else { (&mut b, v * 13 + 100_000) };
            s.latency.record(x).unwrap();
            all.record(x).unwrap();
        }
        a.last_arrival = vec![0, 5, 9];
        b.last_arrival = vec![3, 7, 0];
        a.counters.recv_measured = 10;
        b.counters.recv_measured = 20;
        b.close_codes.insert(1008, 2);
        let wa = serde_json::to_string(&a.to_wire().unwrap()).unwrap();
        let wb = serde_json::to_string(&b.to_wire().unwrap()).unwrap();
        let mut m = Stats::new(3);
        m.merge(&Stats::from_wire(serde_json::from_str(&wa).unwrap()).unwrap()).unwrap();
        m.merge(&Stats::from_wire(serde_json::from_str(&wb).unwrap()).unwrap()).unwrap();
        assert_eq!(m.latency, all);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(m.latency.value_at_quantile(q), all.value_at_quantile(q));
        }
        assert_eq!(m.last_arrival, vec![3, 7, 9]);
        assert_eq!(m.counters.recv_measured, 30);
        assert_eq!(m.close_codes[&1008], 2);
        let c = m.completion();
        assert_eq!((c.len(), c.min(), c.max()), (3, 2, 8));
    }
}
