//! Core pinning: shard i runs pinned to core i (DESIGN §2), and is released
//! from its core while other processes keep that core busy.
//!
//! Why release at all: a pinned shard whose core is shared with a busy
//! process (a load generator, a backup job, a noisy neighbour) waits for that
//! core even while another core idles. Measured beside loadgen on 2 cores
//! (bench/README.md, "Pinning"): a pinned shard spent about a quarter of
//! its time runnable but waiting, and p99 latency was 30–40% higher than
//! with the shards free to move. On a host where the server has its cores to
//! itself the shards never wait, so they stay pinned, as the design intends.
//!
//! How: once a second each shard reads how long its thread waited runnable
//! for a CPU (the kernel's run-queue wait, second field of
//! `/proc/thread-self/schedstat`). [`PinPolicy`] (pure, tested below) turns
//! that into a decision; [`CorePin`] does the system calls for the calling
//! thread. A second in which the process's cgroup was throttled (its CPU
//! quota spent: `throttled_usec`, or v1's `throttled_time`, in `cpu.stat`) is not held
//! against the core: the wait was the quota's, and no other core would help.
//! Releasing can cascade: a released shard that settles on another shard's
//! core may make that one wait and be released in turn; both then float,
//! which is what measured best beside a busy neighbour. A released shard may run on any core the process may use; it
//! tries its pin again after [`FIRST_RETRY`], and each time the pin has to
//! be released again the wait before the next try doubles, up to
//! [`MAX_RETRY`], so a host that stays busy costs at most one contended
//! second per try.

use std::time::{Duration, Instant};

/// Wait before a released shard first tries its pin again.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Longest wait between tries.
pub const MAX_RETRY: Duration = Duration::from_secs(16 * 60);
/// Shortest window the policy judges (shorter ones are too noisy).
pub const MIN_WINDOW: Duration = Duration::from_millis(500);

/// What the shard thread should do with its affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep the current affinity.
    Stay,
    /// Leave the core: allow every core the process may use.
    Release,
    /// Pin to the shard's core again.
    Repin,
}

/// The release/re-pin decision, free of I/O.
#[derive(Debug, Clone)]
pub struct PinPolicy {
    /// Share of a window spent waiting for the core (0..1) above which a
    /// pinned shard is released; 0 never releases.
    threshold: f64,
    pinned: bool,
    /// How long to float before the next try at the pin.
    retry: Duration,
    /// Time floating since the last release.
    floating: Duration,
    /// Time pinned without a release since the last re-pin.
    calm: Duration,
}

impl PinPolicy {
    /// A pinned shard's policy; `threshold` is the waiting share (0..1) that
    /// releases it, 0 for never.
    pub fn new(threshold: f64) -> Self {
        PinPolicy { threshold, pinned: true, retry: FIRST_RETRY, floating: Duration::ZERO, calm: Duration::ZERO }
    }

    /// Whether the shard is pinned now.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Feeds one window: the thread waited runnable for `waited` out of `window`.
    pub fn observe(&mut self, waited: Duration, window: Duration) -> Action {
        if self.threshold <= 0.0 || window < MIN_WINDOW {
            return Action::Stay;
        }
        if self.pinned {
            if waited.as_secs_f64() > self.threshold * window.as_secs_f64() {
                self.pinned = false;
                self.floating = Duration::ZERO;
                // A pin that held for a long while earns the short retry again.
                if self.calm >= MAX_RETRY {
                    self.retry = FIRST_RETRY;
                }
                return Action::Release;
            }
            self.calm += window;
            return Action::Stay;
        }
        self.floating += window;
        if self.floating < self.retry {
            return Action::Stay;
        }
        self.pinned = true;
        self.calm = Duration::ZERO;
        self.retry = (self.retry * 2).min(MAX_RETRY);
        Action::Repin
    }
}

/// The pinning of the calling thread (a shard), driven by [`PinPolicy`].
#[derive(Debug)]
pub struct CorePin {
    core: usize,
    all: Vec<usize>,
    policy: PinPolicy,
    /// When the last window began, the thread's wait then, and the
    /// cgroup's throttled time then.
    last: Option<(Instant, u64, u64)>,
    /// cgroup v2 `cpu.stat` of this process, when there is one.
    cpu_stat: Option<std::path::PathBuf>,
    /// The kernel refused an affinity change before (warned once).
    refused: bool,
}

/// What [`CorePin::tick`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// The change that took effect (`Stay` when the kernel refused one).
    pub action: Action,
    /// Share (0..1) of the window the thread waited for a CPU.
    pub waited: f64,
    /// The kernel refused the change the policy asked for.
    pub refused: bool,
}

impl CorePin {
    /// For a thread pinned to `core`, allowed to float over `all`. None when
    /// there is nothing to manage: releasing is off, there is no other core
    /// to float to, or the kernel does not report run-queue waits.
    pub fn new(core: usize, all: Vec<usize>, threshold: f64) -> Option<Self> {
        if threshold <= 0.0 || all.len() < 2 || thread_wait().is_none() {
            return None;
        }
        Some(CorePin {
            core,
            all,
            policy: PinPolicy::new(threshold),
            last: None,
            cpu_stat: cgroup_cpu_stat(),
            refused: false,
        })
    }

    /// Whether this kernel reports run-queue waits (without them pins are
    /// never released).
    pub fn supported() -> bool {
        thread_wait().is_some()
    }

    /// The core this thread is pinned to.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Whether the thread is pinned now.
    pub fn pinned(&self) -> bool {
        self.policy.pinned()
    }

    /// Call about once a second from the pinned thread itself.
    pub fn tick(&mut self) -> Tick {
        let stay = |waited| Tick { action: Action::Stay, waited, refused: false };
        let (Some(wait), now) = (thread_wait(), Instant::now()) else {
            return stay(0.0);
        };
        let throttled = self.cpu_stat.as_deref().and_then(throttled_us).unwrap_or(0);
        let Some((t0, w0, th0)) = self.last.replace((now, wait, throttled)) else {
            return stay(0.0);
        };
        let window = now - t0;
        let mut waited = Duration::from_nanos(wait.saturating_sub(w0));
        let share = waited.as_secs_f64() / window.as_secs_f64().max(1e-9);
        if throttled > th0 {
            // The cgroup's quota ran out: another core would not help.
            waited = Duration::ZERO;
        }
        let action = self.policy.observe(waited, window);
        let ok = match action {
            Action::Stay => true,
            Action::Release => set_affinity(&self.all),
            Action::Repin => set_affinity(&[self.core]),
        };
        if ok {
            return Tick { action, waited: share, refused: false };
        }
        // The kernel refused (a cpuset changed under us): keep the policy in
        // step with what the thread really is; it asks again next time.
        self.policy.pinned = !self.policy.pinned;
        let first = !std::mem::replace(&mut self.refused, true);
        Tick { action: Action::Stay, waited: share, refused: first }
    }
}

/// This process's cgroup `cpu.stat` (v2 unified, or v1's cpu controller),
/// if there is one.
fn cgroup_cpu_stat() -> Option<std::path::PathBuf> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let candidates = cgroup.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, rel) = (f.next()?, f.next()?, f.next()?);
        let rel = rel.trim_start_matches('/');
        if controllers.is_empty() {
            Some(root.join(rel).join("cpu.stat"))
        } else if controllers.split(',').any(|c| c == "cpu") {
            Some(root.join(controllers).join(rel).join("cpu.stat"))
        } else {
            None
        }
    });
    candidates.into_iter().find(|p| p.exists())
}

/// Microseconds the cgroup has been throttled.
fn throttled_us(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_throttled(&text)
}

/// `throttled_usec` (cgroup v2) or `throttled_time` (v1, nanoseconds) in µs.
fn parse_throttled(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        let v: u64 = value.trim().parse().ok()?;
        match key {
            "throttled_usec" => Some(v),
            "throttled_time" => Some(v / 1000),
            _ => None,
        }
    })
}

/// Nanoseconds the calling thread has spent runnable but waiting for a CPU.
fn thread_wait() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Sets the calling thread's affinity; false if the kernel refused.
fn set_affinity(cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data, filled here and passed by pointer with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn reads_throttled_time_from_cpu_stat() {
        let stat = "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 4\nnr_throttled 1\nthrottled_usec 1234\n";
        assert_eq!(parse_throttled(stat), Some(1234));
        assert_eq!(parse_throttled("nr_periods 0\nnr_throttled 2\nthrottled_time 5000000\n"), Some(5000), "v1: ns");
        assert_eq!(parse_throttled("usage_usec 5\n"), None);
    }

    #[test]
    fn finds_this_process_cpu_stat() {
        let v1 = std::path::Path::new("/sys/fs/cgroup/cpu/cpu.stat").exists();
        let v2 = std::path::Path::new("/sys/fs/cgroup/cpu.stat").exists();
        let found = cgroup_cpu_stat();
        if v1 || v2 {
            // (Its throttled time exists only where the cpu controller is on.)
            assert!(found.is_some(), "no cpu.stat found for this process");
        }
    }

    #[test]
    fn stays_pinned_while_the_core_is_free() {
        let mut p = PinPolicy::new(0.10);
        for _ in 0..1000 {
            assert_eq!(p.observe(ms(20), SEC), Action::Stay);
        }
        assert!(p.pinned());
    }

    #[test]
    fn releases_when_waiting_passes_the_threshold() {
        let mut p = PinPolicy::new(0.10);
        assert_eq!(p.observe(ms(100), SEC), Action::Stay, "exactly at the threshold is not above it");
        assert_eq!(p.observe(ms(101), SEC), Action::Release);
        assert!(!p.pinned());
    }

    #[test]
    fn zero_threshold_never_releases() {
        let mut p = PinPolicy::new(0.0);
        assert_eq!(p.observe(SEC, SEC), Action::Stay);
        assert!(p.pinned());
    }

    #[test]
    fn short_windows_are_not_judged() {
        let mut p = PinPolicy::new(0.10);
        assert_eq!(p.observe(ms(400), ms(400)), Action::Stay);
        assert!(p.pinned());
    }

    #[test]
    fn retries_the_pin_with_doubling_backoff() {
        let mut p = PinPolicy::new(0.10);
        let mut retry = FIRST_RETRY;
        for _ in 0..8 {
            assert_eq!(p.observe(ms(500), SEC), Action::Release);
            let mut floated = Duration::ZERO;
            loop {
                floated += SEC;
                // Floating, the shard rarely waits; that says nothing about its core.
                match p.observe(Duration::ZERO, SEC) {
                    Action::Stay => assert!(floated < retry),
                    Action::Repin => break,
                    Action::Release => panic!("released while floating"),
                }
            }
            assert_eq!(floated, retry, "re-pinned after the retry interval");
            assert!(p.pinned());
            retry = (retry * 2).min(MAX_RETRY);
        }
        assert_eq!(retry, MAX_RETRY, "the backoff is capped");
    }

    #[test]
    fn a_long_calm_pin_resets_the_backoff() {
        let mut p = PinPolicy::new(0.10);
        for _ in 0..3 {
            assert_eq!(p.observe(ms(500), SEC), Action::Release);
            while p.observe(Duration::ZERO, SEC) != Action::Repin {}
        }
        // Pinned and calm for the longest retry interval: the next release
        // retries after the first interval again.
        let calm = MAX_RETRY.as_secs();
        for _ in 0..calm {
            assert_eq!(p.observe(Duration::ZERO, SEC), Action::Stay);
        }
        assert_eq!(p.observe(ms(500), SEC), Action::Release);
        let mut floated = Duration::ZERO;
        while p.observe(Duration::ZERO, SEC) != Action::Repin {
            floated += SEC;
        }
        assert_eq!(floated + SEC, FIRST_RETRY);
    }
}
