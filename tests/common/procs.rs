//! Every process the suite starts is stopped when its test ends, however it
//! ends. Each is spawned in a process group of its own (so a child that
//! forks — chromedriver's Chromium, a redis-server's rewrite — goes with
//! it) and kept on a list; a guard's drop kills the group and reaps it, and
//! whatever is still on the list when the test binary exits (a guard held
//! by a thread nobody joined, say) is killed then. `.ci/run` checks that
//! nothing the suite started outlives it.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, Once};

static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn atexit(f: extern "C" fn()) -> i32;
}

const SIGKILL: i32 = 9;

extern "C" fn kill_the_rest() {
    let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: plain syscalls on process groups this binary created.
        unsafe {
            kill(-(pid as i32), SIGKILL);
            kill(pid as i32, SIGKILL);
        }
    }
}

/// Spawns `cmd` in a process group of its own and puts it on the list.
pub fn spawn(cmd: &mut Command) -> std::io::Result<Child> {
    static HOOK: Once = Once::new();
    // SAFETY: registers a function with no preconditions.
    HOOK.call_once(|| unsafe {
        atexit(kill_the_rest);
    });
    let child = cmd.process_group(0).spawn()?;
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(child.id());
    Ok(child)
}

/// Kills `child` and its process group, waits for it, and takes it off the list.
pub fn reap(child: &mut Child) {
    let pid = child.id();
    // SAFETY: the group was made for this child by `spawn`.
    unsafe {
        kill(-(pid as i32), SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid);
}
