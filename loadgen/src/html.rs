//! The report people read: one self-contained HTML file per run, written
//! beside `--json` (same name, `.html`). Inline SVG plots (the latency
//! percentile spectrum, latency and server figures over time, and for
//! `--find-max` latency against rate), the figures as tables, the exact
//! command, the machine and the date. No script, no outside resource.

use std::fmt::Write as _;

use crate::cli::Config;
use crate::findmax::FindMax;
use crate::report::{Percentiles, Summary};
use crate::sampler::Sample;
use crate::stats::Stats;

/// The page of a single run.
pub fn run_page(cfg: &Config, summary: &Summary, stats: &Stats) -> String {
    let title =
        format!("loadgen: {} clients, rooms of {}, {} msg/s × {} B", cfg.clients, cfg.room_size, cfg.rate, cfg.payload);
    let mut b = String::new();
    verdict(&mut b, summary.ok, &summary.failures);
    figures(&mut b, summary);
    let _ = write!(b, "<h2>Latency percentile spectrum</h2>");
    let completion = stats.completion();
    b += &crate::report::svg(
        "delivery latency by percentile",
        &[
            ("delivery latency", &stats.latency),
            ("broadcast completion", &completion),
            ("arrival in loadgen's socket", &stats.socket_latency),
        ],
    );
    let sched = cfg.schedule(0);
    let start = sched.due(sched.first_measured);
    let over_time = completion_over_time(&stats.last_arrival, |i| {
        (sched.due(sched.first_measured + i as u32) - start) as f64 / 1e9
    });
    if !over_time.is_empty() {
        let _ = write!(
            b,
            "<h2>Over time</h2><p>Broadcast completion of the messages due in each second of the measured phase.</p>"
        );
        let series: Vec<(&str, Vec<(f64, f64)>)> = vec![
            ("p50", over_time.iter().map(|r| (r.0, r.1)).collect()),
            ("p99", over_time.iter().map(|r| (r.0, r.2)).collect()),
            ("max", over_time.iter().map(|r| (r.0, r.3)).collect()),
        ];
        b += &line_chart("completion latency per second", "second of the measured phase", "ms", &series);
        let rate: Vec<(f64, f64)> = over_time.iter().map(|r| (r.0, r.4)).collect();
        b += &line_chart(
            "messages completed per second",
            "second of the measured phase",
            "messages",
            &[("completed", rate)],
        );
    }
    server(&mut b, &summary.server_samples);
    page(&title, &b)
}

/// The page of a `--find-max` run.
pub fn find_max_page(cfg: &Config, report: &FindMax) -> String {
    let title = format!(
        "loadgen --find-max: {} clients, rooms of {}, objective {}",
        cfg.clients, cfg.room_size, report.objective
    );
    let mut b = String::new();
    match report.max_rate {
        Some(r) => {
            let _ = write!(
                b,
                "<p class=\"ok\">Highest rate that held: <b>{r:.1} msg/s</b> ({:.0} deliveries/s).</p>",
                report.max_deliveries_per_second.unwrap_or(0.0)
            );
        }
        None => b += "<p class=\"bad\">No rate held: even the lowest step broke the objective.</p>",
    }
    b += "<h2>Steps</h2><table><tr><th>step</th><th>rate msg/s</th><th>deliveries/s</th><th>p50 ms</th><th>p99 ms</th><th>completion p99 ms</th><th>lost</th><th>errors</th><th>held</th></tr>";
    for (i, s) in report.steps.iter().enumerate() {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            i + 1,
            s.rate,
            s.deliveries_per_second,
            s.p50_ms,
            s.p99_ms,
            s.completion_p99_ms,
            s.lost,
            s.errors,
            if s.held { "ok" } else { "bad" },
            if s.held { "yes".to_string() } else { esc(&format!("no: {}", s.why.join("; "))) }
        );
    }
    b += "</table>";
    let mut steps: Vec<&crate::findmax::Step> = report.steps.iter().collect();
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let p = |f: fn(&crate::findmax::Step) -> f64| steps.iter().map(|s| (s.rate, f(s))).collect::<Vec<_>>();
    b += &line_chart(
        "latency against rate",
        "msg/s",
        "ms",
        &[("p50", p(|s| s.p50_ms)), ("p99", p(|s| s.p99_ms)), ("completion p99", p(|s| s.completion_p99_ms))],
    );
    if let Some(best) = &report.best {
        b += "<h2>The highest step that held</h2>";
        figures(&mut b, best);
        server(&mut b, &best.server_samples);
    }
    page(&title, &b)
}

/// Per second of the measured phase: (second, p50, p99, max, count) of
/// the completion latency (ms) of the messages due in it; `at(i)`: when
/// measured message i was due, in seconds from the first.
pub fn completion_over_time(last_arrival: &[u32], at: impl Fn(usize) -> f64) -> Vec<(f64, f64, f64, f64, f64)> {
    let mut seconds: Vec<Vec<u32>> = Vec::new();
    for (i, &v) in last_arrival.iter().enumerate() {
        if v == 0 {
            continue;
        }
        let s = at(i).max(0.0) as usize;
        if seconds.len() <= s {
            seconds.resize_with(s + 1, Vec::new);
        }
        seconds[s].push(v - 1);
    }
    let at = |v: &[u32], q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    seconds
        .iter_mut()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(s, v)| {
            v.sort_unstable();
            (s as f64, at(v, 0.5), at(v, 0.99), at(v, 1.0), v.len() as f64)
        })
        .collect()
}

fn verdict(b: &mut String, ok: bool, failures: &[String]) {
    if ok {
        *b += "<p class=\"ok\">Passed: no loss, no disorder, no error.</p>";
    } else {
        *b += "<p class=\"bad\">Failed:</p><ul>";
        for f in failures {
            let _ = write!(b, "<li>{}</li>", esc(f));
        }
        *b += "</ul>";
    }
}

fn figures(b: &mut String, s: &Summary) {
    let c = &s.config;
    let _ = write!(
        b,
        "<h2>Load</h2><table><tr><th>clients</th><th>rooms</th><th>room size</th><th>rate msg/s</th><th>payload B</th><th>measured s</th><th>workers</th><th>nodes</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        c.clients,
        c.rooms,
        c.room_size,
        c.rate,
        c.payload,
        c.duration_s,
        c.workers,
        esc(&c.urls.join(" "))
    );
    let d = &s.deliveries;
    let _ = write!(
        b,
        "<h2>Deliveries</h2><table><tr><th>expected</th><th>received</th><th>lost</th><th>refused</th><th>per second</th><th>error frames</th><th>seq gaps</th><th>closed</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        d.expected,
        d.received,
        d.lost,
        d.refused,
        d.per_second,
        s.checks.error_frames,
        s.checks.seq_gaps,
        s.checks.closed
    );
    *b += "<h2>Latency (ms)</h2><table><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th><th>count</th></tr>";
    for (name, p) in [
        ("delivery (from the due time)", &s.latency_ms),
        ("broadcast completion", &s.completion_ms),
        ("arrival in loadgen's socket", &s.socket_latency_ms),
        ("loadgen's send lag", &s.send_lag_ms),
    ] {
        row(b, name, p);
    }
    *b += "</table>";
    let cpu = &s.cpu;
    let _ = write!(
        b,
        "<h2>CPU</h2><table><tr><th>loadgen ns/delivery</th><th>server ns/delivery</th><th>server CPU s</th></tr><tr><td>{:.0}</td><td>{}</td><td>{}</td></tr></table>",
        cpu.loadgen_ns_per_delivery,
        cpu.server_ns_per_delivery.map_or("—".to_string(), |v| format!("{v:.0}")),
        cpu.server_cpu_s.map_or("—".to_string(), |v| format!("{v:.2}")),
    );
}

fn row(b: &mut String, name: &str, p: &Percentiles) {
    let _ = write!(
        b,
        "<tr><th>{}</th><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
        esc(name),
        p.p50,
        p.p90,
        p.p99,
        p.p999,
        p.max,
        p.mean,
        p.count
    );
}

/// The server's figures over time: CPU (% of one core), memory and
/// connections per node; the kernel's TCP memory.
fn server(b: &mut String, samples: &[Sample]) {
    if samples.is_empty() {
        return;
    }
    *b += "<h2>Server side</h2>";
    let nodes = samples.iter().filter_map(|s| s.node).max().map_or(0, |n| n + 1);
    let cpu: Vec<(String, Vec<(f64, f64)>)> = (0..nodes)
        .map(|n| {
            let total: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| s.node == Some(n))
                .filter_map(|s| Some((s.t_s, *s.values.get("process_cpu_seconds_total")?)))
                .collect();
            let pts = total
                .windows(2)
                .filter(|w| w[1].0 > w[0].0)
                .map(|w| (w[1].0, (w[1].1 - w[0].1) / (w[1].0 - w[0].0) * 100.0))
                .collect();
            (format!("node {n}"), pts)
        })
        .collect();
    let level = |metric: &str, scale: f64| {
        (0..nodes)
            .map(|n| {
                let pts = samples
                    .iter()
                    .filter(|s| s.node == Some(n))
                    .filter_map(|s| Some((s.t_s, s.values.get(metric)? / scale)))
                    .collect::<Vec<_>>();
                (format!("node {n}"), pts)
            })
            .collect::<Vec<_>>()
    };
    let show = |b: &mut String, title: &str, unit: &str, series: Vec<(String, Vec<(f64, f64)>)>| {
        let series: Vec<(&str, Vec<(f64, f64)>)> =
            series.iter().filter(|(_, p)| !p.is_empty()).map(|(n, p)| (n.as_str(), p.clone())).collect();
        if !series.is_empty() {
            *b += &line_chart(title, "seconds since the run started", unit, &series);
        }
    };
    show(b, "server CPU", "% of one core", cpu);
    show(b, "server resident memory", "MiB", level("process_resident_memory_bytes", 1048576.0));
    show(b, "connections", "connections", level("cchat_connections", 1.0));
    show(b, "shard queues", "entries", level("cchat_shard_queue_depth", 1.0));
    let kernel: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.node.is_none())
        .filter_map(|s| Some((s.t_s, s.values.get("kernel_tcp_mem_bytes")? / 1048576.0)))
        .collect();
    show(b, "kernel TCP socket memory (this machine)", "MiB", vec![("kernel".to_string(), kernel)]);
}

/// A line chart of (x, y) series, as inline SVG.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    const W: f64 = 860.0;
    const H: f64 = 320.0;
    const L: f64 = 70.0;
    const R: f64 = 130.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return String::new();
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = |y: f64| H - B - y / y1 * (H - T - B);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"{L}\" y=\"24\" font-size=\"15\">{}</text>",
        esc(title),
        esc(title)
    );
    for i in 0..=4 {
        let y = y1 * i as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{x2}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\">{label}</text>",
            x2 = W - R,
            yy = sy(y),
            tx = L - 6.0,
            ty = sy(y) + 4.0,
            label = short(y)
        );
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            sx(x),
            H - B + 16.0,
            short(x)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{:.1}\" font-size=\"12\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        (L + W - R) / 2.0,
        H - 12.0,
        esc(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        esc(y_label)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = p.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = write!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for &(x, y) in p {
            let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{c}\"/>", sx(x), sy(y));
        }
        let ly = T + 14.0 + i as f64 * 18.0;
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{c}\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"12\">{}</text>",
            W - R + 10.0,
            ly - 4.0,
            W - R + 28.0,
            ly,
            esc(name)
        );
    }
    s += "</svg>";
    s
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The whole document around `body`.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font:14px system-ui,sans-serif;margin:2em auto;max-width:900px;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f4f4f4}}code{{background:#f4f4f4;padding:2px 4px;word-break:break-all}}\
         .ok{{color:#1a7f37}}.bad{{color:#c62828}}svg{{max-width:100%;height:auto;display:block;margin:1em 0}}</style>\
         </head><body><h1>{t}</h1>\
         <p>Command: <code data-testid=\"command\">{cmd}</code></p>\
         <p>Machine: {machine}. Date: {date}.</p>{body}</body></html>\n",
        t = esc(title),
        cmd = esc(&command_line()),
        machine = esc(&machine()),
        date = date_utc(),
    )
}

/// The command as run, shell-quoted where needed.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Host, kernel, CPU model and count, memory.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let host = read("/proc/sys/kernel/hostname").trim().to_string();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(String::new(), |kb| format!(", {:.1} GiB", kb as f64 / 1048576.0));
    format!("{host}, Linux {kernel}, {cores} × {model}{mem}")
}

/// Now, as `YYYY-MM-DD HH:MM:SS UTC`.
fn date_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// HTML-escaped text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_is_bucketed_by_due_second() {
        // 10 msg/s: messages 0..9 due in second 0, 10..19 in second 1.
        let mut v = vec![0u32; 20];
        for (i, x) in v.iter_mut().enumerate() {
            *x = 1 + (i as u32 + 1) * 1000; // (i + 1) ms
        }
        v[5] = 0; // never arrived: not counted
        let t = completion_over_time(&v, |i| i as f64 / 10.0);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].0, t[0].3, t[0].4), (0.0, 10.0, 9.0));
        assert_eq!((t[1].0, t[1].1, t[1].3, t[1].4), (1.0, 16.0, 20.0, 10.0));
    }

    #[test]
    fn charts_and_text_are_escaped_and_drawn() {
        let c = line_chart("a<b", "x", "y", &[("s&t", vec![(0.0, 1.0), (1.0, 2.0)])]);
        assert!(c.starts_with("<svg") && c.contains("a&lt;b") && c.contains("s&amp;t") && c.contains("<polyline"));
        assert_eq!(line_chart("empty", "x", "y", &[("s", vec![])]), "");
        assert!(date_utc().ends_with(" UTC") && date_utc().starts_with("20"));
    }
}
