//! CPU times from /proc, in nanoseconds: of a process (`/proc/PID/stat`,
//! user + system) and of the whole machine (`/proc/stat`, busy time of all
//! CPUs); this process's resident memory. Parsing is pure; the readers
//! return None where /proc is missing.

/// CPU time (utime + stime) of process `pid`.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    parse_process_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time (utime + stime) of this process, all threads.
pub fn own_cpu_ns() -> Option<u64> {
    process_cpu_ns(std::process::id())
}

/// Resident memory of this process (VmRSS in /proc/self/status).
pub fn own_rss_bytes() -> Option<u64> {
    parse_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// VmRSS (kB) from a /proc/PID/status text, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()? * 1024)
}

/// Busy time of all CPUs together since boot.
pub fn machine_busy_ns() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after the last `)`:
/// utime and stime are fields 14 and 15.
pub fn parse_process_cpu(pid_stat: &str) -> Option<u64> {
    let rest = &pid_stat[pid_stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(ticks_to_ns(ticks))
}

/// Busy time from /proc/stat's first line: user, nice, system, irq,
/// softirq, steal (guest time is inside user).
pub fn parse_machine_busy(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(ticks_to_ns(at(0) + at(1) + at(2) + at(5) + at(6) + at(7)))
}

fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * (1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pid_stat_and_proc_stat() {
        let tick = ticks_to_ns(1);
        let own = "4242 (shard (x) 1) S 1 2 3 4 5 6 7 8 9 10 700 300 0 0 20 0 3 0";
        assert_eq!(parse_process_cpu(own), Some(1000 * tick));
        let all = "cpu  100 5 50 9000 7 3 2 1 0 0\ncpu0 50 2 25 4500 3 1 1 0 0 0\n";
        assert_eq!(parse_machine_busy(all), Some((100 + 5 + 50 + 3 + 2 + 1) * tick));
        assert_eq!(parse_process_cpu("garbage"), None);
        assert_eq!(parse_machine_busy("intr 1 2 3"), None);
        assert_eq!(parse_rss("Name:\tx\nVmRSS:\t   2048 kB\nThreads: 3\n"), Some(2048 * 1024));
        assert_eq!(parse_rss("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_machine() {
        assert!(own_cpu_ns().is_some());
        assert!(machine_busy_ns().is_some());
        assert!(own_rss_bytes().is_some_and(|b| b > 0));
        assert!(process_cpu_ns(std::process::id()).is_some());
    }
}
