//! TLS on the client port (`--tls-cert`, `--tls-key`): the server's rustls
//! configuration, loaded at start and again on SIGHUP (a renewed
//! certificate takes effect for new connections without a restart), and
//! the small pieces of I/O glue the connection code uses.
//!
//! A connection's `rustls::ServerConnection` lives beside its output queue
//! in the shard's table (see `shard::flush`): the write loop seals all of a
//! socket's queued frames into records and sends them in one call, as the
//! plain path writes them, and the connection's task decrypts what it reads
//! before the WebSocket decoder sees it.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::Poll;

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest ciphertext a connection's TLS state holds for the socket; past
/// it, frames wait in the connection's own (capped) queue.
pub const SEND_BUFFER: usize = 64 << 10;

/// The certificate and key files and the configuration built from them.
#[derive(Debug)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let config = build(cert, key)?;
        Ok(Tls { cert: cert.to_owned(), key: key.to_owned(), current: RwLock::new(config) })
    }

    /// Reads the files again; on an error the configuration in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = build(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// A server-side TLS state for a new connection.
    pub fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut conn = rustls::ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(SEND_BUFFER));
        Ok(conn)
    }
}

fn build(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--tls-cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("--tls-cert {}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "--tls-cert {}: no certificate in the file", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: not a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("--tls-cert and --tls-key do not make a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether the first bytes of a connection look like a TLS ClientHello
/// (a handshake record); a plain HTTP request on the TLS port does not.
pub fn looks_like_tls(first: &[u8]) -> bool {
    first.first().is_none_or(|b| *b == 0x16)
}

/// Feeds `ciphertext` to `tls` and appends the plaintext it yields to
/// `plain`. Returns false once the peer sent close_notify. An error is a
/// TLS protocol error (the connection is to be dropped).
pub fn decrypt(tls: &mut rustls::ServerConnection, mut ciphertext: &[u8], plain: &mut Vec<u8>) -> io::Result<bool> {
    let mut open = true;
    while !ciphertext.is_empty() {
        if tls.read_tls(&mut ciphertext)? == 0 {
            break;
        }
        let state = tls.process_new_packets().map_err(io::Error::other)?;
        let avail = state.plaintext_bytes_to_read();
        if avail > 0 {
            let at = plain.len();
            plain.resize(at + avail, 0);
            let n = tls.reader().read(&mut plain[at..])?;
            plain.truncate(at + n);
        }
        if state.peer_has_closed() {
            open = false;
        }
    }
    Ok(open)
}

/// An `io::Write` over a non-blocking send: `Pending` becomes `WouldBlock`
/// (and is remembered), and a vectored write (the records rustls has
/// sealed) goes out in one send.
pub struct PollWriter<'a, F: FnMut(&[u8]) -> Poll<io::Result<usize>>> {
    send: &'a mut F,
    scratch: &'a mut Vec<u8>,
    /// The socket was full.
    pub blocked: bool,
}

impl<F: FnMut(&[u8]) -> Poll<io::Result<usize>>> std::fmt::Debug for PollWriter<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollWriter").field("blocked", &self.blocked).finish_non_exhaustive()
    }
}

impl<'a, F: FnMut(&[u8]) -> Poll<io::Result<usize>>> PollWriter<'a, F> {
    /// A writer over `send`, gathering into `scratch`.
    pub fn new(send: &'a mut F, scratch: &'a mut Vec<u8>) -> Self {
        PollWriter { send, scratch, blocked: false }
    }
}

impl<F: FnMut(&[u8]) -> Poll<io::Result<usize>>> Write for PollWriter<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match (self.send)(buf) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                self.blocked = true;
                Err(io::ErrorKind::WouldBlock.into())
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if bufs.len() <= 1 {
            return self.write(bufs.first().map_or(&[][..], |b| &b[..]));
        }
        self.scratch.clear();
        for b in bufs {
            if self.scratch.len() + b.len() > SEND_BUFFER && !self.scratch.is_empty() {
                break;
            }
            self.scratch.extend_from_slice(b);
        }
        let scratch = std::mem::take(self.scratch);
        let r = self.write(&scratch);
        *self.scratch = scratch;
        r
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_told_apart_from_a_client_hello() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01]));
        assert!(!looks_like_tls(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn a_vectored_write_is_one_send() {
        let mut sends = Vec::new();
        let mut send = |b: &[u8]| {
            sends.push(b.len());
            Poll::Ready(Ok(b.len()))
        };
        let mut scratch = Vec::new();
        {
            let mut w = PollWriter::new(&mut send, &mut scratch);
            let n = w.write_vectored(&[io::IoSlice::new(&[1; 100]), io::IoSlice::new(&[2; 50])]).unwrap();
            assert_eq!(n, 150);
        }
        assert_eq!(sends, vec![150]);
        let mut full = |_: &[u8]| Poll::Pending;
        let mut w = PollWriter::new(&mut full, &mut scratch);
        assert_eq!(w.write(&[1]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(w.blocked);
    }
}
