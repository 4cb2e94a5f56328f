//! A TCP proxy for the tests that attack a path: the relay between two
//! nodes (`trust.rs`), a node's link to Redis (`store.rs`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the next chunk it carries from the dialer.
pub const PASS: u8 = 0;
pub const FLIP: u8 = 1;
pub const REPEAT: u8 = 2;

/// A TCP proxy on a path (two nodes, a node and Redis): passes bytes
/// through, alters or repeats the next chunk going one way when told to,
/// or drops what comes back while told to.
pub struct Proxy {
    pub addr: String,
    pub mode: Arc<AtomicU8>,
    /// While set, what the target answers is dropped (its requests still
    /// reach it): a reply lost on the way.
    pub drop_replies: Arc<AtomicBool>,
    /// Every byte carried, both ways.
    pub seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Proxy {
    pub fn start(target: String) -> Proxy {
        let l = TcpListener::bind(format!("127.0.0.1:{}", super::free_port())).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let drop_replies = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, st, sn, dr) = (mode.clone(), stop.clone(), seen.clone(), drop_replies.clone());
        let accept = std::thread::spawn(move || {
            while !st.load(SeqCst) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(&target) else { continue };
                for (mut from, mut to, tamper) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap(), true),
                    (up.try_clone().unwrap(), down.try_clone().unwrap(), false),
                ] {
                    let (m, st, sn, dr) = (m.clone(), st.clone(), sn.clone(), dr.clone());
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                        let mut b = [0u8; 65536];
                        while !st.load(SeqCst) {
                            let n = match from.read(&mut b) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    continue;
                                }
                                Err(_) => break,
                            };
                            let chunk = &mut b[..n];
                            sn.lock().unwrap().extend_from_slice(chunk);
                            let mode = if tamper { m.swap(PASS, SeqCst) } else { PASS };
                            if !tamper && dr.load(SeqCst) {
                                continue;
                            }
                            let ok = match mode {
                                FLIP => {
                                    chunk[n / 2] ^= 0x20;
                                    to.write_all(chunk).is_ok()
                                }
                                REPEAT => to.write_all(chunk).is_ok() && to.write_all(chunk).is_ok(),
                                _ => to.write_all(chunk).is_ok(),
                            };
                            if !ok {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, mode, drop_replies, seen, stop, threads: Mutex::new(vec![accept]) }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}
