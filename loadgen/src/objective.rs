//! Objectives a run must meet: `--assert` (a non-zero exit for CI) and
//! `--find-max` (the highest rate that meets one). No I/O.
//!
//! An objective is terms joined by commas, each `MEASURE OP VALUE`:
//! `p99<=50ms,lost=0`. Measures: delivery latency percentiles `p50`,
//! `p90`, `p99`, `p999`, `max`, `mean` (with `ms`, `us` or `s`; ms when
//! bare), broadcast completion `completion_p99` (and the other
//! percentiles), and the counts `lost`, `errors` (error frames, refusals
//! included), `refused`, `gaps` (seq jumps and reversals), `closed`.
//! Operators: `<=`, `<`, `=`.

use std::fmt;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::report::{Percentiles, Summary};

/// What a term measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    /// A delivery-latency figure (ms).
    Latency(Pct),
    /// A broadcast-completion figure (ms).
    Completion(Pct),
    Lost,
    Errors,
    Refused,
    Gaps,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pct {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
}

impl Pct {
    fn parse(s: &str) -> Option<Pct> {
        Some(match s {
            "p50" | "median" => Pct::P50,
            "p90" => Pct::P90,
            "p99" => Pct::P99,
            "p999" | "p99.9" => Pct::P999,
            "max" => Pct::Max,
            "mean" => Pct::Mean,
            _ => return None,
        })
    }

    fn of(self, p: &Percentiles) -> f64 {
        match self {
            Pct::P50 => p.p50,
            Pct::P90 => p.p90,
            Pct::P99 => p.p99,
            Pct::P999 => p.p999,
            Pct::Max => p.max,
            Pct::Mean => p.mean,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Le,
    Lt,
    Eq,
}

/// One `MEASURE OP VALUE` term.
#[derive(Debug, Clone, PartialEq)]
struct Term {
    text: String,
    measure: Measure,
    op: Op,
    /// In ms for latencies, a count otherwise.
    limit: f64,
}

/// A parsed objective.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Objective {
    terms: Vec<Term>,
}

/// One term's outcome in a run.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The term as written.
    pub term: String,
    /// What the run measured.
    pub measured: f64,
    /// Whether it held.
    pub held: bool,
}

impl Objective {
    /// Parses `p99<=50ms,lost=0`.
    pub fn parse(text: &str) -> anyhow::Result<Objective> {
        let mut terms = Vec::new();
        for raw in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            terms.push(Term::parse(raw).with_context(|| format!("objective term {raw:?}"))?);
        }
        if terms.is_empty() {
            bail!("an empty objective: give terms such as \"p99<=50ms,lost=0\"");
        }
        Ok(Objective { terms })
    }

    /// Each term against a run's summary.
    pub fn verdicts(&self, s: &Summary) -> Vec<Verdict> {
        self.terms
            .iter()
            .map(|t| {
                let measured = t.measure.of(s);
                let held = match t.op {
                    Op::Le => measured <= t.limit,
                    Op::Lt => measured < t.limit,
                    Op::Eq => measured == t.limit,
                };
                Verdict { term: t.text.clone(), measured, held }
            })
            .collect()
    }

    /// Whether every term holds for this run.
    pub fn holds(&self, s: &Summary) -> bool {
        self.verdicts(s).iter().all(|v| v.held)
    }

    /// The terms that broke, in words (`p99 63.20 ms, wanted p99<=50ms`).
    pub fn broken(&self, s: &Summary) -> Vec<String> {
        self.terms
            .iter()
            .zip(self.verdicts(s))
            .filter(|(_, v)| !v.held)
            .map(|(t, v)| format!("{} was {}, wanted {}", t.measure, t.measure.show(v.measured), t.text))
            .collect()
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<&str> = self.terms.iter().map(|t| t.text.as_str()).collect();
        f.write_str(&texts.join(","))
    }
}

impl Term {
    fn parse(raw: &str) -> anyhow::Result<Term> {
        let text: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, op, len) = ["<=", "<", "="]
            .iter()
            .find_map(|o| {
                text.find(o).map(|i| {
                    let op = match *o {
                        "<=" => Op::Le,
                        "<" => Op::Lt,
                        _ => Op::Eq,
                    };
                    (i, op, o.len())
                })
            })
            .context("no operator: use <=, < or =")?;
        let (name, value) = (&text[..at], &text[at + len..]);
        let measure = match name {
            "lost" => Measure::Lost,
            "errors" => Measure::Errors,
            "refused" => Measure::Refused,
            "gaps" => Measure::Gaps,
            "closed" => Measure::Closed,
            n => match n.strip_prefix("completion_") {
                Some(p) => Measure::Completion(Pct::parse(p).with_context(|| format!("unknown percentile {p:?}"))?),
                None => Measure::Latency(Pct::parse(n).with_context(|| {
                    format!("unknown measure {n:?} (p50, p90, p99, p999, max, mean, completion_p99, lost, errors, refused, gaps, closed)")
                })?),
            },
        };
        let limit = match measure {
            Measure::Latency(_) | Measure::Completion(_) => {
                let (num, scale) = if let Some(v) = value.strip_suffix("ms") {
                    (v, 1.0)
                } else if let Some(v) = value.strip_suffix("us") {
                    (v, 0.001)
                } else if let Some(v) = value.strip_suffix('s') {
                    (v, 1000.0)
                } else {
                    (value, 1.0)
                };
                num.parse::<f64>().with_context(|| format!("{value:?} is not a time such as 50ms"))? * scale
            }
            _ => value.parse::<u64>().with_context(|| format!("{value:?} is not a count"))? as f64,
        };
        if !limit.is_finite() || limit < 0.0 {
            bail!("{value:?} is not a limit");
        }
        Ok(Term { text, measure, op, limit })
    }
}

impl Measure {
    fn of(self, s: &Summary) -> f64 {
        let c = &s.checks;
        match self {
            Measure::Latency(p) => p.of(&s.latency_ms),
            Measure::Completion(p) => p.of(&s.completion_ms),
            Measure::Lost => s.deliveries.lost as f64,
            Measure::Errors => c.error_frames as f64,
            Measure::Refused => c.refused as f64,
            Measure::Gaps => (c.seq_gaps + c.seq_backwards) as f64,
            Measure::Closed => c.closed as f64,
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Measure::Latency(_) | Measure::Completion(_) => format!("{v:.2} ms"),
            _ => format!("{v}"),
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |p: &Pct| match p {
            Pct::P50 => "p50",
            Pct::P90 => "p90",
            Pct::P99 => "p99",
            Pct::P999 => "p999",
            Pct::Max => "max",
            Pct::Mean => "mean",
        };
        match self {
            Measure::Latency(p) => write!(f, "latency {}", pct(p)),
            Measure::Completion(p) => write!(f, "completion {}", pct(p)),
            Measure::Lost => f.write_str("lost"),
            Measure::Errors => f.write_str("errors"),
            Measure::Refused => f.write_str("refused"),
            Measure::Gaps => f.write_str("gaps"),
            Measure::Closed => f.write_str("closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn terms_parse_with_units_and_operators() {
        let o = Objective::parse("p99<=50ms, lost=0,p50<2s,completion_p99<=500us,errors<=3").unwrap();
        let t = &o.terms;
        assert_eq!((t[0].measure, t[0].op, t[0].limit), (Measure::Latency(Pct::P99), Op::Le, 50.0));
        assert_eq!((t[1].measure, t[1].op, t[1].limit), (Measure::Lost, Op::Eq, 0.0));
        assert_eq!((t[2].measure, t[2].op, t[2].limit), (Measure::Latency(Pct::P50), Op::Lt, 2000.0));
        assert_eq!((t[3].measure, t[3].limit), (Measure::Completion(Pct::P99), 0.5));
        assert_eq!((t[4].measure, t[4].limit), (Measure::Errors, 3.0));
        assert_eq!(o.to_string(), "p99<=50ms,lost=0,p50<2s,completion_p99<=500us,errors<=3");
    }

    #[test]
    fn bad_terms_say_what_is_wrong() {
        for (bad, says) in [
            ("", "empty"),
            ("p98<=5ms", "unknown measure"),
            ("p99>=5ms", "unknown measure"),
            ("p99 50ms", "no operator"),
            ("lost=0.5", "not a count"),
            ("p99<=fast", "not a time"),
            ("p99<=-1ms", "not a limit"),
        ] {
            let e = format!("{:#}", Objective::parse(bad).unwrap_err());
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    proptest! {
        /// Any text: parsed or refused, never a panic; what parses prints back parseable.
        #[test]
        fn any_text_parses_or_is_refused(s in "[ -~]{0,40}") {
            if let Ok(o) = Objective::parse(&s) {
                prop_assert_eq!(Objective::parse(&o.to_string()).unwrap(), o);
            }
        }
    }
}
