//! `--scenario FILE|PRESET`: a load described in TOML instead of flags.
//!
//! A scenario sets the flags of the same names (with `_` for `-`): the
//! shape (`clients`, `room_size`, `payload`, `spread_rooms`), the rate
//! (`rate`, `warmup`, `duration`, or `stages = [{seconds, rate}, …]` for a
//! ramp), what each message brings along (`reactions`, `edits`, `typing`,
//! `history_reads`, `private`, `mids`) and reconnects (`churn`, `churn_away_ms`).
//! `classes = [{name, share, think_s}, …]` divides every room's members
//! into classes that send every `think_s` seconds (0: never); without a
//! `rate`, the rate is what they send together. A flag given on the
//! command line wins over the scenario. Presets ship
//! in `loadgen/scenarios/` and are built in: `fanout-a`, `fanout-b`,
//! `one-room-100k`, `chat-mix`, `churn`, `centrifugo-1m`.

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::cli::Args;

/// The presets, by name.
pub const PRESETS: [(&str, &str); 6] = [
    ("fanout-a", include_str!("../scenarios/fanout-a.toml")),
    ("fanout-b", include_str!("../scenarios/fanout-b.toml")),
    ("one-room-100k", include_str!("../scenarios/one-room-100k.toml")),
    ("chat-mix", include_str!("../scenarios/chat-mix.toml")),
    ("churn", include_str!("../scenarios/churn.toml")),
    ("centrifugo-1m", include_str!("../scenarios/centrifugo-1m.toml")),
];

/// One stage of a ramp.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Seconds it lasts.
    pub seconds: f64,
    /// The rate (msg/s) it reaches at its end.
    pub rate: f64,
}

/// One client class.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Class {
    /// Its name.
    pub name: String,
    /// Its share of every room's members (the shares add up to 1).
    pub share: f64,
    /// Seconds between a member's messages; 0 or absent: never sends.
    #[serde(default)]
    pub think_s: f64,
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it is, in words.
    pub description: Option<String>,
    /// `--clients`.
    pub clients: Option<u32>,
    /// `--room-size`.
    pub room_size: Option<u32>,
    /// `--payload`.
    pub payload: Option<usize>,
    /// `--spread-rooms`.
    pub spread_rooms: Option<bool>,
    /// `--rate` (during the warm-up, with stages).
    pub rate: Option<f64>,
    /// `--warmup`.
    pub warmup: Option<f64>,
    /// `--duration` (without stages).
    pub duration: Option<f64>,
    /// `--drain`.
    pub drain: Option<f64>,
    /// `--stages`, as a list.
    pub stages: Option<Vec<Stage>>,
    /// `--classes`, as a list; without `rate`, the rate is what they send.
    pub classes: Option<Vec<Class>>,
    /// `--reactions`.
    pub reactions: Option<f64>,
    /// `--edits`.
    pub edits: Option<f64>,
    /// `--typing`.
    pub typing: Option<f64>,
    /// `--history-reads`.
    pub history_reads: Option<f64>,
    /// `--private`.
    pub private: Option<f64>,
    /// `--mids`.
    pub mids: Option<bool>,
    /// `--churn`.
    pub churn: Option<f64>,
    /// `--churn-away-ms`.
    pub churn_away_ms: Option<u64>,
}

/// The scenario's TOML text: a file, or a preset by name.
pub fn text_of(name: &str) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(name) {
        return Ok(t);
    }
    match PRESETS.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => Ok(t.to_string()),
        None => bail!(
            "{name:?} is neither a file nor a preset ({})",
            PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Scenario {
    /// Parses a scenario's TOML.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text).context("not a scenario")?;
        if s.stages.as_ref().is_some_and(Vec::is_empty) {
            bail!("stages: an empty list");
        }
        Ok(s)
    }

    /// Sets every flag the scenario names and `given` says was not on the
    /// command line.
    pub fn apply(&self, a: &mut Args, given: impl Fn(&str) -> bool) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field && !given(stringify!($field)) {
                    a.$field = v.clone();
                }
            )*};
        }
        set!(
            clients,
            room_size,
            payload,
            rate,
            warmup,
            duration,
            drain,
            reactions,
            edits,
            typing,
            history_reads,
            private,
            churn,
            churn_away_ms
        );
        if let Some(v) = self.spread_rooms
            && !given("spread_rooms")
        {
            a.spread_rooms = v;
        }
        if let Some(v) = self.mids
            && !given("mids")
        {
            a.mids = v;
        }
        if let Some(cl) = &self.classes
            && !given("classes")
        {
            a.classes =
                Some(cl.iter().map(|c| format!("{}:{}:{}", c.name, c.share, c.think_s)).collect::<Vec<_>>().join(","));
            if self.rate.is_none()
                && !given("rate")
                && let Ok(specs) = crate::cli::parse_classes(a.classes.as_deref().unwrap_or(""))
            {
                let r = crate::cli::class_rate(&specs, a.clients);
                if r > 0.0 {
                    a.rate = r;
                }
            }
        }
        if let Some(st) = &self.stages
            && !given("stages")
        {
            a.stages = Some(st.iter().map(|s| format!("{}:{}", s.seconds, s.rate)).collect::<Vec<_>>().join(","));
        }
    }
}

/// The command line, with `--scenario` (or the text a coordinator passed
/// on) applied beneath the flags given.
pub fn parse_args() -> anyhow::Result<Args> {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let m = Args::command().get_matches();
    let mut a = Args::from_arg_matches(&m)?;
    let text = match (&a.scenario_text, &a.scenario) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(name)) => Some(text_of(name).context("--scenario")?),
        (None, None) => None,
    };
    if let Some(text) = text {
        let s = Scenario::parse(&text).context("--scenario")?;
        s.apply(&mut a, |id| m.value_source(id) == Some(ValueSource::CommandLine));
        if a.scenario_text.is_none() {
            a.scenario_text = Some(text);
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_preset_parses_and_is_a_valid_load() {
        for (name, text) in PRESETS {
            let s = Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(s.description.is_some(), "{name} says what it is");
            let mut a = Args::try_parse_from(["loadgen", "--url", "ws://127.0.0.1:1/"]).unwrap();
            s.apply(&mut a, |_| false);
            crate::cli::Config::from_args(a).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn classes_set_the_weights_and_the_rate() {
        let s = Scenario::parse(
            "clients = 1000\nroom_size = 100\nclasses = [{name = \"lurker\", share = 0.9}, {name = \"talker\", share = 0.1, think_s = 20}]\n",
        )
        .unwrap();
        let mut a = Args::try_parse_from(["loadgen", "--url", "ws://127.0.0.1:1/"]).unwrap();
        s.apply(&mut a, |_| false);
        // 1,000 clients · 0.1 every 20 s: 5 msg/s.
        assert_eq!(a.rate, 5.0);
        assert_eq!(a.classes.as_deref(), Some("lurker:0.9:0,talker:0.1:20"));
        crate::cli::Config::from_args(a).unwrap();
    }

    #[test]
    fn the_command_line_wins_and_unknown_keys_are_refused() {
        let s = Scenario::parse("clients = 50\nroom_size = 5\nstages = [{seconds = 2, rate = 10}]\n").unwrap();
        let mut a = Args::try_parse_from(["loadgen", "--url", "ws://x:1/", "--clients", "7"]).unwrap();
        s.apply(&mut a, |f| f == "clients");
        assert_eq!((a.clients, a.room_size, a.stages.as_deref()), (7, 5, Some("2:10")));
        let e = format!("{:#}", Scenario::parse("clients = 5\nthink = 3\n").unwrap_err());
        assert!(e.contains("think"), "{e}");
        assert!(Scenario::parse("stages = []").is_err());
        assert!(text_of("no-such-preset").is_err());
    }
}
