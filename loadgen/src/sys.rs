//! The few system calls loadgen makes directly: epoll, the monotonic clock,
//! resource limits and CPU accounting. All `unsafe` lives here.
//!
//! loadgen drives its sockets with edge-triggered epoll from one thread per
//! process rather than with an async runtime: a client that holds thousands of
//! mostly-idle sockets and reads each into one shared buffer wants exactly
//! "tell me which fds are readable, in one call", and nothing else between it
//! and `recv`. Every CPU cycle it saves goes to the server it shares the
//! machine with.

use std::io;
use std::os::fd::RawFd;

/// Nanoseconds on `CLOCK_MONOTONIC`. The clock is system-wide, so values taken
/// in different worker processes on one machine compare directly: that is what
/// lets a sender stamp a message and another process measure its latency.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: rl is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return 1024;
    }
    if rl.rlim_cur < rl.rlim_max {
        let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
        // SAFETY: want is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            rl.rlim_cur = rl.rlim_max;
        }
    }
    rl.rlim_cur
}

/// Puts the calling thread (and threads it starts later) under SCHED_BATCH:
/// its wake-ups no longer preempt the thread running on the core.
pub fn sched_batch() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user + system) this process has used, in nanoseconds.
pub fn cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `SO_TIMESTAMPNS` (and its control message type) on Linux.
const SO_TIMESTAMPNS: libc::c_int = 35;

/// Nanoseconds on `CLOCK_REALTIME` (the clock of receive timestamps).
pub fn realtime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC (ns): turns the kernel's receive
/// timestamps into loadgen's monotonic time.
pub fn rt_offset_ns() -> u64 {
    realtime_ns().saturating_sub(now_ns())
}

/// Asks the kernel to stamp received data with its arrival time, so that
/// time spent waiting in the socket for loadgen to read it can be told
/// apart from time spent getting there.
pub fn enable_rx_timestamps(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value points to a c_int of the given size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `recv` without blocking that also returns the kernel's receive timestamp
/// (CLOCK_REALTIME ns) of the last segment read, or 0 if there was none.
pub fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u64)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg describes valid buffers.
    let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = 0;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in,
    // within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == SO_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((r as usize, stamp))
}

/// `send` without blocking and without SIGPIPE.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// The pending error of a socket (`SO_ERROR`), which tells how a
/// non-blocking connect ended.
pub fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for writes and len holds err's size.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if err != 0 {
        return Err(io::Error::from_raw_os_error(err));
    }
    Ok(())
}

/// Readable (or hung up / in error), edge-triggered: the owner reads until a
/// short read, and the kernel does not re-poll the socket after every event.
pub const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Writable.
pub const OUT: u32 = libc::EPOLLOUT as u32;

/// An epoll set whose events carry a `u64` token.
#[derive(Debug)]
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
    /// False once the kernel said it has no `epoll_pwait2`.
    pwait2: bool,
}

impl Epoll {
    /// A new set that returns up to `batch` events per wait.
    pub fn new(batch: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; batch], pwait2: true })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for `events`, reporting `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes the events watched on `fd`.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ns` (0: poll) and returns (token, events) pairs.
    ///
    /// Uses `epoll_pwait2` for a nanosecond timeout: the send schedule needs
    /// sub-millisecond wake-ups, or every message would leave up to a
    /// millisecond late and that lateness would be measured as latency.
    pub fn wait(&mut self, timeout_ns: u64) -> io::Result<impl Iterator<Item = (u64, u32)> + '_> {
        let n = loop {
            let r = if self.pwait2 {
                let ts = libc::timespec {
                    tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
                };
                // SAFETY: events has room for events.len() entries; ts is valid.
                unsafe {
                    libc::epoll_pwait2(
                        self.fd,
                        self.events.as_mut_ptr(),
                        self.events.len() as libc::c_int,
                        &ts,
                        std::ptr::null(),
                    )
                }
            } else {
                let ms = timeout_ns.div_ceil(1_000_000).min(i32::MAX as u64) as libc::c_int;
                // SAFETY: events has room for events.len() entries.
                unsafe { libc::epoll_wait(self.fd, self.events.as_mut_ptr(), self.events.len() as libc::c_int, ms) }
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOSYS) if self.pwait2 => self.pwait2 = false,
                _ => return Err(e),
            }
        };
        Ok(self.events[..n].iter().map(|e| (e.u64, e.events)))
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: fd is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sched_batch_sets_the_calling_threads_policy() {
        std::thread::spawn(|| {
            super::sched_batch().expect("SCHED_BATCH needs no privilege");
            // SAFETY: pid 0 is the calling thread.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_BATCH);
            // A thread started now inherits it.
            let child = std::thread::spawn(|| unsafe { libc::sched_getscheduler(0) }).join().unwrap();
            assert_eq!(child, libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
        // SAFETY: as above; the test's own thread is left as it was.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
