//! The coordinator: decides how many worker processes to use, runs them (or
//! the single worker in-process), starts everyone's schedule at one instant,
//! shows progress and merges the results.
//!
//! Worker processes are this same binary, started with hidden flags
//! `--worker-index I --worker-count W` and the user's flags. They talk over
//! pipes: JSON lines on their stdout (progress, ready, report) and a single
//! `go T0` line on their stdin once every worker has logged in all its
//! clients, where `T0` is a CLOCK_MONOTONIC instant shortly ahead, so all
//! schedules start together.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::Config;
use crate::plan::Plan;
use crate::report::{ProgressPrinter, Summary};
use crate::stats::Stats;
use crate::sys;
use crate::worker::{self, Link, Progress, ToCoordinator};

/// Lead between `go` and the first message, so every worker has it in time.
const GO_LEAD_NS: u64 = 100_000_000;
/// File descriptors a worker keeps besides its clients.
const FD_MARGIN: u64 = 200;

/// Runs the whole load and returns the merged statistics and summary.
pub fn run(cfg: &Config) -> anyhow::Result<(Stats, Summary)> {
    let plan = Plan {
        clients: cfg.clients,
        room_size: cfg.room_size,
        nodes: cfg.targets.len() as u32,
        spread: cfg.args.spread_rooms,
        classes: cfg.classes,
    };
    let limit = sys::raise_nofile();
    let fd_cap = limit.saturating_sub(FD_MARGIN).clamp(1, u32::MAX as u64) as u32;
    let workers = match cfg.args.workers {
        Some(w) => w.min(cfg.clients),
        None => plan.auto_workers(cfg.args.clients_per_worker, fd_cap),
    };
    if !cfg.args.quiet {
        eprintln!(
            "loadgen: {} clients in {} rooms of {} over {} node(s), {} worker process(es){}; {} msg/s × {} B, warm-up {} s, measure {} s",
            cfg.clients,
            plan.rooms(),
            cfg.room_size,
            cfg.targets.len(),
            workers,
            if cfg.source_spread { ", sources spread over 127.0.0.0/8" } else { "" },
            cfg.rate,
            cfg.payload,
            cfg.args.warmup,
            cfg.args.duration
        );
    }
    let server_pids = &cfg.args.server_pid;
    let sampler = crate::sampler::Sampler::start(cfg.server_metrics.clone(), cfg.local);
    let agents = cfg.args.agents.len() as u32;
    let workers = if agents > 0 { workers.max(agents) } else { workers };
    let mut agent_reports = Vec::new();
    let (stats, server_cpu) = if agents > 0 {
        run_agents(cfg, workers, &mut agent_reports)?
    } else if workers == 1 {
        let mut link = InlineLink { printer: printer(cfg), server_pids, server_cpu0: None };
        let stats = worker::run(cfg, 0, 1, &mut link)?;
        let cpu = server_cpu_delta(server_pids, link.server_cpu0.as_deref());
        (stats, cpu)
    } else {
        run_processes(cfg, workers)?
    };
    let mut summary = Summary::new(cfg, workers, &stats, server_cpu);
    summary.server_samples = sampler.map(crate::sampler::Sampler::stop).unwrap_or_default();
    summary.agents = agent_reports;
    Ok((stats, summary))
}

/// The link of the single in-process worker.
struct InlineLink<'a> {
    printer: ProgressPrinter,
    server_pids: &'a [u32],
    server_cpu0: Option<Vec<Option<u64>>>,
}

impl Link for InlineLink<'_> {
    fn progress(&mut self, p: &Progress) {
        self.printer.print(p);
    }
    fn ready(&mut self) -> Option<u64> {
        self.server_cpu0 = Some(self.server_pids.iter().map(|p| cchat::procfs::process_cpu_ns(*p)).collect());
        Some(sys::now_ns() + GO_LEAD_NS / 10)
    }
}

/// The progress printer for the whole run.
fn printer(cfg: &Config) -> ProgressPrinter {
    ProgressPrinter::new(cfg.args.quiet, cfg.args.clients as u64, messages_to_send(cfg))
}

/// Messages the run sends in all, warm-up included (the workers' schedules
/// together), for the progress bar.
fn messages_to_send(cfg: &Config) -> u64 {
    cfg.schedule(0).end as u64
}

/// Server CPU used since `before` (None if any server could not be read).
fn server_cpu_delta(pids: &[u32], before: Option<&[Option<u64>]>) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let before = before?;
    let mut sum = 0;
    for (pid, b) in pids.iter().zip(before) {
        sum += cchat::procfs::process_cpu_ns(*pid)?.checked_sub((*b)?)?;
    }
    Some(sum)
}

/// Kills the workers (by their own PIDs) unless disarmed.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// The user's flags for a worker, at this run's rate (a --find-max
/// step's, not --rate's), without what only the coordinator uses.
fn worker_args(cfg: &Config) -> Vec<String> {
    let mut args = Vec::new();
    let mut given = std::env::args().skip(1);
    while let Some(a) = given.next() {
        match a.as_str() {
            "--rate" | "--agents" | "--agent-secret" | "--scenario" | "--scenario-text" => {
                given.next();
            }
            s if ["--rate=", "--agents=", "--agent-secret=", "--scenario=", "--scenario-text="]
                .iter()
                .any(|p| s.starts_with(p)) => {}
            _ => args.push(a),
        }
    }
    // The scenario as read here: an agent's machine may not have the file.
    if let Some(t) = &cfg.args.scenario_text {
        args.push("--scenario-text".into());
        args.push(t.clone());
    }
    args.push("--rate".into());
    args.push(cfg.rate.to_string());
    args
}

/// Where the workers run, and how they are told to go.
enum Fleet {
    /// Processes of this machine.
    Local(Children),
    /// Agents on other machines (or other processes of this one).
    Agents(Vec<crate::agent::AgentLink>),
}

impl Fleet {
    fn go(&mut self, t0: u64) -> anyhow::Result<()> {
        match self {
            Fleet::Local(children) => {
                for (j, c) in children.0.iter_mut().enumerate() {
                    let stdin = c.stdin.as_mut().expect("piped stdin");
                    writeln!(stdin, "go {t0}")
                        .and_then(|_| stdin.flush())
                        .with_context(|| format!("telling worker {j} to go"))?;
                }
            }
            Fleet::Agents(links) => {
                for l in links {
                    l.go(t0)?;
                }
            }
        }
        Ok(())
    }
}

fn run_processes(cfg: &Config, workers: u32) -> anyhow::Result<(Stats, Option<u64>)> {
    let exe = std::env::current_exe().context("finding loadgen's own binary")?;
    let args = worker_args(cfg);
    let (tx, rx) = mpsc::channel::<Heard>();
    let mut children = Children(Vec::new());
    for i in 0..workers {
        let mut child = Command::new(&exe)
            .args(&args)
            .args(["--worker-index", &i.to_string(), "--worker-count", &workers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        let out = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Heard::Line(i as usize, l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Heard::Exit(i as usize));
        });
        children.0.push(child);
    }
    drop(tx);
    run_fleet(cfg, workers, Fleet::Local(children), rx)
}

/// Workers spread over `--agents` (worker i on agent i mod N).
fn run_agents(
    cfg: &Config,
    workers: u32,
    reports: &mut Vec<crate::report::AgentReport>,
) -> anyhow::Result<(Stats, Option<u64>)> {
    let a = &cfg.args;
    let secret = a.agent_secret.as_deref().context("--agents needs --agent-secret")?;
    let n = a.agents.len() as u32;
    let (tx, rx) = mpsc::channel::<Heard>();
    let mut links = Vec::new();
    for (k, addr) in a.agents.iter().enumerate() {
        let indices: Vec<u32> = (0..workers).filter(|i| i % n == k as u32).collect();
        let link =
            crate::agent::AgentLink::start(addr, secret, worker_args(cfg), indices.clone(), workers, tx.clone())?;
        if !a.quiet {
            eprintln!(
                "loadgen: agent {addr}: workers {indices:?}, clock offset {:+.3} ms (ping {:.3} ms)",
                link.offset_ns as f64 / 1e6,
                link.rtt_ns as f64 / 1e6
            );
        }
        reports.push(crate::report::AgentReport {
            addr: addr.clone(),
            workers: indices,
            clock_offset_ms: link.offset_ns as f64 / 1e6,
            ping_ms: link.rtt_ns as f64 / 1e6,
        });
        links.push(link);
    }
    drop(tx);
    run_fleet(cfg, workers, Fleet::Agents(links), rx)
}

/// What the coordinator hears from a worker, wherever it runs.
use crate::agent::Heard;

/// Waits for every worker to log in, starts them together, shows progress
/// and merges their reports.
fn run_fleet(
    cfg: &Config,
    workers: u32,
    mut fleet: Fleet,
    rx: mpsc::Receiver<Heard>,
) -> anyhow::Result<(Stats, Option<u64>)> {
    let n = workers as usize;
    let mut progress = vec![Progress::default(); n];
    let mut ready = vec![false; n];
    let mut reports: Vec<Option<Stats>> = (0..n).map(|_| None).collect();
    let mut printer = printer(cfg);
    let mut server_cpu0: Option<Vec<Option<u64>>> = None;
    let a = &cfg.args;
    let started = sys::now_ns();
    let mut deadline = started + ((a.connect_timeout + 30.0) * 1e9) as u64;
    let mut last_print = started;
    while reports.iter().any(Option::is_none) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Heard::Line(i, _)) if i >= n => bail!("a line from worker {i}, which this run does not have"),
            Ok(Heard::Line(i, line)) => match serde_json::from_str::<ToCoordinator>(&line) {
                Ok(ToCoordinator::Progress(p)) => progress[i] = p,
                Ok(ToCoordinator::Ready) => {
                    ready[i] = true;
                    progress[i].connected = progress[i].clients.max(progress[i].connected);
                    if ready.iter().all(|r| *r) {
                        server_cpu0 = Some(a.server_pid.iter().map(|p| cchat::procfs::process_cpu_ns(*p)).collect());
                        let t0 = sys::now_ns() + GO_LEAD_NS;
                        fleet.go(t0)?;
                        deadline = t0 + ((a.warmup + a.duration + a.drain + 60.0) * 1e9) as u64;
                    }
                }
                Ok(ToCoordinator::Report(w)) => {
                    reports[i] = Some(Stats::from_wire(*w).with_context(|| format!("worker {i}'s report"))?)
                }
                Err(e) => bail!("worker {i} said something unreadable ({e}): {line:.200}"),
            },
            Ok(Heard::Exit(i)) => {
                if reports.get(i).is_some_and(Option::is_none) {
                    bail!("worker {i} exited before reporting (its error is above, or in its agent's log)");
                }
            }
            Ok(Heard::Failed(why)) => bail!("{why}: the run is incomplete"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("all workers exited before reporting"),
        }
        let now = sys::now_ns();
        if now > deadline {
            bail!("workers did not finish in time");
        }
        if now - last_print >= 1_000_000_000 {
            last_print = now;
            let mut total = progress[0];
            for p in &progress[1..] {
                total.add(p);
            }
            printer.print(&total);
        }
    }
    let server_cpu = server_cpu_delta(&a.server_pid, server_cpu0.as_deref());
    let mut it = reports.into_iter().map(|r| r.expect("all reported"));
    let mut merged = it.next().expect("at least one worker");
    for r in it {
        merged.merge(&r)?;
    }
    if let Fleet::Local(children) = &mut fleet {
        for c in &mut children.0 {
            let _ = c.wait();
        }
    }
    Ok((merged, server_cpu))
}
