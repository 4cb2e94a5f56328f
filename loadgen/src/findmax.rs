//! `--find-max`: the highest rate a server sustains within an objective.
//!
//! Each step is a whole run (connect, warm-up, measure, drain) at one rate,
//! so that no step inherits another's backlog. The rate is multiplied by
//! `--step-factor` while steps hold (divided while they break), then the
//! highest that held and the lowest that broke are bisected until they are
//! within `--precision` of each other or `--max-steps` ran. A step holds
//! when the run's own checks pass (no loss, disorder or error) and every
//! term of `--objective` holds. As wrk2 and hashrocket's websocket-bench
//! do, every step's row is reported, not only the answer.

use serde::Serialize;

use crate::cli::Config;
use crate::objective::{Objective, Verdict};
use crate::report::Summary;

/// One step's row.
#[derive(Debug, Serialize)]
pub struct Step {
    /// Messages per second asked for.
    pub rate: f64,
    /// Deliveries received per second.
    pub deliveries_per_second: f64,
    /// Delivery latency (ms).
    pub p50_ms: f64,
    /// Delivery latency (ms).
    pub p99_ms: f64,
    /// Broadcast completion (ms).
    pub completion_p99_ms: f64,
    /// Deliveries lost.
    pub lost: u64,
    /// Error frames (refusals included).
    pub errors: u64,
    /// Server CPU per delivery, when `--server-pid` was given.
    pub server_ns_per_delivery: Option<f64>,
    /// The objective and the run's checks held.
    pub held: bool,
    /// Why not, in words.
    pub why: Vec<String>,
    /// Each objective term's measure.
    pub verdicts: Vec<Verdict>,
}

/// What `--find-max` reports (`--json` writes it).
#[derive(Debug, Serialize)]
pub struct FindMax {
    /// The objective, as given.
    pub objective: String,
    /// The highest rate that held (None: even the lowest step broke).
    pub max_rate: Option<f64>,
    /// Deliveries per second at that rate.
    pub max_deliveries_per_second: Option<f64>,
    /// Every step, in the order run.
    pub steps: Vec<Step>,
    /// The full summary of the highest step that held.
    pub best: Option<Summary>,
}

impl FindMax {
    /// The report in words: a table of steps and the answer.
    pub fn text(&self) -> String {
        let mut s = format!("find-max     objective {}\n", self.objective);
        s += "  step   rate msg/s   deliveries/s    p50 ms    p99 ms   compl. p99   lost  errors  held\n";
        for (i, st) in self.steps.iter().enumerate() {
            s += &format!(
                "  {:>4} {:>12.1} {:>14.0} {:>9.2} {:>9.2} {:>12.2} {:>6} {:>7}  {}\n",
                i + 1,
                st.rate,
                st.deliveries_per_second,
                st.p50_ms,
                st.p99_ms,
                st.completion_p99_ms,
                st.lost,
                st.errors,
                if st.held { "yes".to_string() } else { format!("no: {}", st.why.join("; ")) }
            );
        }
        match (self.max_rate, self.max_deliveries_per_second) {
            (Some(r), Some(d)) => s += &format!("highest rate that held: {r:.1} msg/s ({d:.0} deliveries/s)\n"),
            _ => s += "no rate held: even the lowest step broke the objective\n",
        }
        s
    }
}

/// The next rate to try, or None when done. `held`: the highest rate that
/// held so far; `broke`: the lowest that broke.
pub fn next_rate(held: Option<f64>, broke: Option<f64>, factor: f64, precision: f64, floor: f64) -> Option<f64> {
    match (held, broke) {
        (Some(h), None) => Some(h * factor),
        (None, Some(b)) => Some(b / factor).filter(|r| *r >= floor),
        (Some(h), Some(b)) if (b - h) / h > precision => Some((h + b) / 2.0),
        _ => None,
    }
}

/// Runs the steps; `run` is one whole run at a rate.
pub fn find_max(
    cfg: &Config,
    objective: &Objective,
    mut run: impl FnMut(&Config) -> anyhow::Result<Summary>,
) -> anyhow::Result<FindMax> {
    let a = &cfg.args;
    let (mut held, mut broke): (Option<f64>, Option<f64>) = (None, None);
    let mut best: Option<Summary> = None;
    let mut steps = Vec::new();
    let mut rate = cfg.rate;
    // A step sends at least one message per room over the measured time.
    let floor = 1.0 / a.duration.max(0.1);
    for n in 0..a.max_steps {
        let mut step_cfg = cfg.clone();
        step_cfg.rate = rate;
        step_cfg.args.rate = rate;
        if !a.quiet {
            eprintln!("find-max: step {} at {rate:.1} msg/s", n + 1);
        }
        let s = run(&step_cfg)?;
        let mut why = s.failures.clone();
        why.extend(objective.broken(&s));
        let ok = why.is_empty();
        steps.push(Step {
            rate,
            deliveries_per_second: s.deliveries.per_second,
            p50_ms: s.latency_ms.p50,
            p99_ms: s.latency_ms.p99,
            completion_p99_ms: s.completion_ms.p99,
            lost: s.deliveries.lost,
            errors: s.checks.error_frames,
            server_ns_per_delivery: s.cpu.server_ns_per_delivery,
            held: ok,
            why,
            verdicts: objective.verdicts(&s),
        });
        if ok {
            if held.is_none_or(|h| rate > h) {
                held = Some(rate);
                best = Some(s);
            }
        } else if broke.is_none_or(|b| rate < b) {
            broke = Some(rate);
        }
        match next_rate(held, broke, a.step_factor, a.precision, floor) {
            Some(r) => rate = r,
            None => break,
        }
    }
    Ok(FindMax {
        objective: objective.to_string(),
        max_rate: held,
        max_deliveries_per_second: best.as_ref().map(|b| b.deliveries.per_second),
        steps,
        best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a server that holds up to `limit`: the answer is within
    /// the precision of it, whatever the first rate.
    #[test]
    fn the_steps_close_in_on_the_limit() {
        for (start, limit) in [(10.0, 1000.0), (5000.0, 1000.0), (999.0, 1000.0), (1.0, 37.0)] {
            let (mut held, mut broke) = (None::<f64>, None::<f64>);
            let mut rate = start;
            let mut steps = 0;
            loop {
                steps += 1;
                if rate <= limit {
                    held = Some(held.map_or(rate, |h: f64| h.max(rate)));
                } else {
                    broke = Some(broke.map_or(rate, |b: f64| b.min(rate)));
                }
                match next_rate(held, broke, 2.0, 0.05, 0.1) {
                    Some(r) => rate = r,
                    None => break,
                }
                assert!(steps < 40, "no end from {start}");
            }
            let h = held.unwrap();
            assert!(h <= limit && h >= limit / 1.05, "from {start}: found {h} for {limit} in {steps} steps");
        }
    }

    #[test]
    fn below_the_floor_it_stops() {
        assert_eq!(next_rate(None, Some(0.15), 2.0, 0.05, 0.1), None);
    }
}
