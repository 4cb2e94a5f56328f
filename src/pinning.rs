//! Core pinning: shard i runs pinned to core i (thread per core), and is released
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
//! `/proc/thread-self/schedstat`) and how much CPU other processes used
//! (`/proc/stat` minus this process's `/proc/self/stat`). [`PinPolicy`]
//! (pure, tested below) turns that into a decision; [`CorePin`] does the
//! system calls for the calling thread. A released shard may run on any core
//! the process may use. It pins itself again once other processes have been
//! quiet (under a tenth of a core) for [`FIRST_RETRY`] in a row, not while
//! they are busy: a re-pin beside a still-busy neighbour would cost a
//! contended second in the middle of the load. If the pin has to be
//! released again, the quiet time asked for doubles, up to [`MAX_RETRY`].
//! A second in which the process's cgroup was throttled (its CPU quota
//! spent: `throttled_usec`, or v1's `throttled_time`, in `cpu.stat`) is not
//! held against the core: the wait was the quota's, and no other core would
//! help. Releasing can cascade: a released shard that settles on another
//! shard's core may make that one wait and be released in turn; both then
//! float, which is what measured best beside a busy neighbour.

use std::time::{Duration, Instant};

use crate::procfs;

/// Quiet time (other processes under [`QUIET_OTHERS`]) after which a
/// released shard first pins itself again.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// Longest quiet time asked for before a re-pin.
pub const MAX_RETRY: Duration = Duration::from_secs(16 * 60);
/// CPU, in cores, that other processes may use in a window still counted
/// as quiet.
pub const QUIET_OTHERS: f64 = 0.1;
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

/// One judged stretch of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Its length.
    pub length: Duration,
    /// How long the shard's thread waited runnable for a CPU in it.
    pub waited: Duration,
    /// CPU other processes used in it, in cores (1.0 = one core all along).
    pub others: f64,
}

/// The release/re-pin decision, free of I/O.
#[derive(Debug, Clone)]
pub struct PinPolicy {
    /// Share of a window spent waiting for the core (0..1) above which a
    /// pinned shard is released; 0 never releases.
    threshold: f64,
    pinned: bool,
    /// Quiet time asked for before the next re-pin.
    retry: Duration,
    /// Quiet time in a row since the last release (or busy window).
    quiet: Duration,
    /// Time pinned without a release since the last re-pin.
    calm: Duration,
}

impl PinPolicy {
    /// A pinned shard's policy; `threshold` is the waiting share (0..1) that
    /// releases it, 0 for never.
    pub fn new(threshold: f64) -> Self {
        PinPolicy { threshold, pinned: true, retry: FIRST_RETRY, quiet: Duration::ZERO, calm: Duration::ZERO }
    }

    /// Whether the shard is pinned now.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Feeds one window.
    pub fn observe(&mut self, w: Window) -> Action {
        if self.threshold <= 0.0 || w.length < MIN_WINDOW {
            return Action::Stay;
        }
        if self.pinned {
            if w.waited.as_secs_f64() > self.threshold * w.length.as_secs_f64() {
                self.pinned = false;
                self.quiet = Duration::ZERO;
                // A pin that held for a long while earns the short retry again.
                if self.calm >= MAX_RETRY {
                    self.retry = FIRST_RETRY;
                }
                return Action::Release;
            }
            self.calm += w.length;
            return Action::Stay;
        }
        // Floating, the shard seldom waits, so its wait says nothing about
        // its core; the neighbours' CPU does.
        if w.others < QUIET_OTHERS {
            self.quiet += w.length;
        } else {
            self.quiet = Duration::ZERO;
        }
        if self.quiet < self.retry {
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
    /// The counters at the start of the current window.
    last: Option<Counters>,
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
        let Some(now) = Counters::read(self.cpu_stat.as_deref()) else {
            return stay(0.0);
        };
        let Some(then) = self.last.replace(now) else {
            return stay(0.0);
        };
        let length = now.at - then.at;
        let secs = length.as_secs_f64().max(1e-9);
        let mut waited = Duration::from_nanos(now.wait_ns.saturating_sub(then.wait_ns));
        let share = waited.as_secs_f64() / secs;
        if now.throttled_us > then.throttled_us {
            // The cgroup's quota ran out: another core would not help.
            waited = Duration::ZERO;
        }
        let others = match (now.others_ns, then.others_ns) {
            (Some(a), Some(b)) => a.saturating_sub(b) as f64 / 1e9 / secs,
            // Unknown: never taken for quiet.
            _ => f64::INFINITY,
        };
        let action = self.policy.observe(Window { length, waited, others });
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

/// The kernel counters a window is judged by.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    /// Run-queue wait of the calling thread.
    wait_ns: u64,
    /// Throttled time of the process's cgroup (0 when unknown).
    throttled_us: u64,
    /// CPU time of every other process (None when unknown).
    others_ns: Option<u64>,
}

impl Counters {
    fn read(cpu_stat: Option<&std::path::Path>) -> Option<Counters> {
        Some(Counters {
            at: Instant::now(),
            wait_ns: thread_wait()?,
            throttled_us: cpu_stat.and_then(throttled_us).unwrap_or(0),
            others_ns: others_ns(),
        })
    }
}

/// CPU time used by every process but this one.
fn others_ns() -> Option<u64> {
    Some(procfs::machine_busy_ns()?.saturating_sub(procfs::own_cpu_ns()?))
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

    fn w(waited_ms: u64, others: f64) -> Window {
        Window { length: SEC, waited: ms(waited_ms), others }
    }

    #[test]
    fn others_cpu_is_readable_here() {
        assert!(others_ns().is_some(), "this machine has /proc/stat and /proc/self/stat");
    }

    #[test]
    fn stays_pinned_while_the_core_is_free() {
        let mut p = PinPolicy::new(0.10);
        for _ in 0..1000 {
            assert_eq!(p.observe(w(20, 0.9)), Action::Stay);
        }
        assert!(p.pinned());
    }

    #[test]
    fn releases_when_waiting_passes_the_threshold() {
        let mut p = PinPolicy::new(0.10);
        assert_eq!(p.observe(w(100, 0.9)), Action::Stay, "exactly at the threshold is not above it");
        assert_eq!(p.observe(w(101, 0.9)), Action::Release);
        assert!(!p.pinned());
    }

    #[test]
    fn zero_threshold_never_releases() {
        let mut p = PinPolicy::new(0.0);
        assert_eq!(p.observe(w(1000, 1.0)), Action::Stay);
        assert!(p.pinned());
    }

    #[test]
    fn short_windows_are_not_judged() {
        let mut p = PinPolicy::new(0.10);
        assert_eq!(p.observe(Window { length: ms(400), waited: ms(400), others: 1.0 }), Action::Stay);
        assert!(p.pinned());
    }

    #[test]
    fn floats_while_the_neighbours_stay_busy() {
        let mut p = PinPolicy::new(0.10);
        assert_eq!(p.observe(w(500, 0.8)), Action::Release);
        // An hour of a busy neighbour: no re-pin, so no contended second.
        for _ in 0..3600 {
            assert_eq!(p.observe(w(0, 0.8)), Action::Stay);
        }
        // Quiet stretches shorter than the retry, broken by busy seconds, do not add up.
        for _ in 0..10 {
            for _ in 0..FIRST_RETRY.as_secs() - 1 {
                assert_eq!(p.observe(w(0, 0.05)), Action::Stay);
            }
            assert_eq!(p.observe(w(0, 0.5)), Action::Stay);
        }
        assert!(!p.pinned());
    }

    #[test]
    fn re_pins_after_quiet_with_doubling_backoff() {
        let mut p = PinPolicy::new(0.10);
        let mut retry = FIRST_RETRY;
        for _ in 0..8 {
            assert_eq!(p.observe(w(500, 0.9)), Action::Release);
            let mut quiet = Duration::ZERO;
            loop {
                quiet += SEC;
                match p.observe(w(0, 0.0)) {
                    Action::Stay => assert!(quiet < retry),
                    Action::Repin => break,
                    Action::Release => panic!("released while floating"),
                }
            }
            assert_eq!(quiet, retry, "re-pinned after the retry interval of quiet");
            assert!(p.pinned());
            retry = (retry * 2).min(MAX_RETRY);
        }
        assert_eq!(retry, MAX_RETRY, "the backoff is capped");
    }

    #[test]
    fn a_long_calm_pin_resets_the_backoff() {
        let mut p = PinPolicy::new(0.10);
        for _ in 0..3 {
            assert_eq!(p.observe(w(500, 0.9)), Action::Release);
            while p.observe(w(0, 0.0)) != Action::Repin {}
        }
        // Pinned and calm for the longest retry interval: the next release
        // asks for the first interval of quiet again.
        for _ in 0..MAX_RETRY.as_secs() {
            assert_eq!(p.observe(w(0, 0.0)), Action::Stay);
        }
        assert_eq!(p.observe(w(500, 0.9)), Action::Release);
        let mut quiet = SEC;
        while p.observe(w(0, 0.0)) != Action::Repin {
            quiet += SEC;
        }
        assert_eq!(quiet, FIRST_RETRY);
    }
}
