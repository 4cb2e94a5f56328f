//! `loadgen`: cchat's load generator. It measures broadcast fan-out latency,
//! from one client to 100,000, and checks every delivery on the way.
//!
//! # What a run does
//!
//! 1. Opens `--clients` WebSocket connections (at `--connect-concurrency`)
//!    and logs client `c` into room `c / --room-size`; rooms go to the
//!    `--url`s round-robin, whole.
//! 2. Starts a fixed, open-loop schedule: `--rate` messages per second in
//!    total, message `m` due at `t0 + m/rate` in room `m % rooms`, each
//!    carrying its due time and number in `msg` ([`scan`]).
//! 3. Every recipient scans each delivery (byte search, no JSON parse),
//!    checks that its room's `seq` rises by exactly one, and records the
//!    latency from the *due* time in an HdrHistogram — so a late send or a
//!    stalled server counts in full (no coordinated omission). Per message it
//!    keeps the latest arrival: the broadcast completion time. The kernel's
//!    receive timestamp of each read gives a second figure, the latency up
//!    to arrival in loadgen's socket, which loadgen's own scheduling cannot
//!    inflate: the gap between the two is loadgen's share.
//! 4. After `--warmup` + `--duration` seconds and a `--drain`, it counts the
//!    deliveries that never came, prints a summary (`--json`, `--hgrm`,
//!    `--svg` write it to files too) and exits non-zero on any loss,
//!    disorder, error frame or closed connection.
//!
//! With `--churn F`, each second a fraction F of the clients (at random)
//! drop their connection, stay away `--churn-away-ms`, and log in again
//! resuming their room (`since`: the last message they saw); messages due
//! meanwhile wait, and what they sent in the seconds before the drop is
//! sent again under the same `mid`. The checks stay the same — every
//! member sees every message exactly once, in order — and the summary adds
//! the drops, resumes (a `"recovered": false` fails the run), resends, the
//! server's `dup` answers and the resume time.
//!
//! Beyond one process's open-file limit it re-executes itself as worker
//! processes ([`coord`]), each with a slice of whole rooms ([`plan`]) and its
//! own epoll loop ([`worker`]); client sockets are bound to source addresses
//! spread over 127.0.0.0/8 when the target is loopback. Workers report
//! histograms in HdrHistogram's V2 encoding and the coordinator merges them
//! exactly ([`stats`]).
//!
//! # Modules
//!
//! | module | concept |
//! |---|---|
//! | [`cli`] | flags and the validated config |
//! | [`agent`] | `loadgen agent` and the coordinator's authenticated link to it |
//! | [`scenario`] | `--scenario`: a load in TOML, and the presets |
//! | [`plan`] | clients → rooms → nodes, clients → workers, source addresses |
//! | [`schedule`] | the open-loop send schedule and expected deliveries |
//! | [`scan`] | `msg` layout, server frames, the delivery scanner |
//! | [`conn`] | one client connection: socket, upgrade, state |
//! | [`worker`] | the per-process event loop |
//! | [`stats`] | measurements, their wire form and exact merge |
//! | [`coord`] | worker processes, the common start, merging |
//! | [`objective`] | `--assert` and `--objective` terms (`p99<=50ms,lost=0`) |
//! | [`findmax`] | `--find-max`: the highest rate within an objective, step by step |
//! | [`report`] | progress, summary, `.hgrm`, SVG |
//! | [`sampler`] | the server side each second: `/metrics`, the kernel's sockets |
//! | [`html`] | the self-contained HTML report beside `--json` |
//! | [`sys`] | epoll, clocks, limits, CPU time |

#![warn(missing_docs)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser as _;

pub mod agent;
pub mod cli;
pub mod conn;
pub mod coord;
pub mod findmax;
pub mod html;
pub mod objective;
pub mod plan;
pub mod report;
pub mod sampler;
pub mod scan;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod sys;
pub mod worker;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("agent") {
        let a = cli::AgentArgs::parse_from(std::env::args().skip(1));
        if a.agent_secret.len() < 8 {
            eprintln!("loadgen agent: --agent-secret must be at least 8 characters");
            return ExitCode::from(2);
        }
        return match agent::serve(&a.listen, &a.agent_secret) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("loadgen agent: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    let args = match scenario::parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cfg = match cli::Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    // Objectives are checked before any connection is made.
    let objectives =
        [("--objective", cfg.args.find_max.then_some(&cfg.args.objective)), ("--assert", cfg.args.assert.as_ref())];
    for (flag, text) in objectives {
        if let Some(Err(e)) = text.map(|t| objective::Objective::parse(t)) {
            eprintln!("loadgen: {flag}: {e:#}");
            return ExitCode::from(2);
        }
    }
    if let (Some(index), Some(count)) = (cfg.args.worker_index, cfg.args.worker_count) {
        return run_worker(&cfg, index, count);
    }
    match run(&cfg) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// A worker process: measure, report on stdout, exit.
fn run_worker(cfg: &cli::Config, index: u32, count: u32) -> ExitCode {
    let r = worker::run(cfg, index, count, &mut worker::ChildLink).and_then(|s| s.to_wire());
    match r {
        Ok(w) => {
            worker::ChildLink::send(&worker::ToCoordinator::Report(Box::new(w)));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen worker {index}: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// The coordinator: run, print, write files. Ok(false) when a check failed.
fn run(cfg: &cli::Config) -> anyhow::Result<bool> {
    if cfg.args.find_max {
        return find_max(cfg);
    }
    let (stats, summary) = coord::run(cfg)?;
    print!("{}", summary.text());
    let a = &cfg.args;
    let mut ok = summary.ok;
    if let Some(text) = &a.assert {
        let objective = objective::Objective::parse(text)?;
        let broken = objective.broken(&summary);
        if broken.is_empty() {
            println!("assert       {objective}: held");
        } else {
            println!("assert       {objective}: BROKEN: {}", broken.join("; "));
            ok = false;
        }
    }
    if let Some(path) = &a.json {
        let mut text = serde_json::to_string_pretty(&summary)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        let page = path.with_extension("html");
        std::fs::write(&page, html::run_page(cfg, &summary, &stats))
            .with_context(|| format!("writing {}", page.display()))?;
    }
    if let Some(path) = &a.hgrm {
        std::fs::write(path, report::hgrm(&stats.latency)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.svg {
        let title = format!(
            "{} clients, rooms of {}, {} msg/s × {} B, {} s: latency percentile spectrum",
            cfg.clients, cfg.room_size, cfg.rate, cfg.payload, a.duration
        );
        let completion = stats.completion();
        let plot = report::svg(
            &title,
            &[
                ("delivery latency", &stats.latency),
                ("broadcast completion", &completion),
                ("arrival in loadgen's socket", &stats.socket_latency),
            ],
        );
        std::fs::write(path, plot).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ok)
}

/// `--find-max`: whole runs at stepped rates; Ok(false) when no step held.
fn find_max(cfg: &cli::Config) -> anyhow::Result<bool> {
    let objective = objective::Objective::parse(&cfg.args.objective)?;
    let report = findmax::find_max(cfg, &objective, |c| Ok(coord::run(c)?.1))?;
    print!("{}", report.text());
    if let Some(path) = &cfg.args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        let page = path.with_extension("html");
        std::fs::write(&page, html::find_max_page(cfg, &report))
            .with_context(|| format!("writing {}", page.display()))?;
    }
    Ok(report.max_rate.is_some())
}
