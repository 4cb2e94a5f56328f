//! A TLS connection's state in the shard's table: handed over after the
//! handshake, used by the connection's task to decrypt what it reads (the
//! flusher seals what it writes, see `flush`).

use super::Shard;

impl Shard {
    /// Hands a registered connection its TLS state (see [`crate::tls`]).
    pub(crate) fn set_tls(&self, key: u32, tls: Box<rustls::ServerConnection>) {
        if let Some(e) = self.conns.borrow_mut().get_mut(key) {
            e.tls = Some(tls);
        }
    }

    /// On a TLS connection: decrypts `ciphertext` into `plain`, and has the
    /// flusher send any record it produced (handshake, alert). None on a
    /// plain connection; Some(Ok(false)) once the peer closed its TLS side.
    pub(crate) fn tls_decrypt(
        &self,
        key: u32,
        ciphertext: &[u8],
        plain: &mut Vec<u8>,
    ) -> Option<std::io::Result<bool>> {
        let mut conns = self.conns.borrow_mut();
        let e = conns.get_mut(key)?;
        let tls = e.tls.as_deref_mut()?;
        let r = crate::tls::decrypt(tls, ciphertext, plain);
        if tls.wants_write() && e.out.mark_dirty() {
            self.flush.mark(key);
            self.flush.wake();
        }
        Some(r)
    }

    /// On a TLS connection: queues close_notify (after the close frame)
    /// and says so; false on a plain connection.
    pub(crate) fn tls_close_notify(&self, key: u32) -> bool {
        let mut conns = self.conns.borrow_mut();
        let Some(tls) = conns.get_mut(key).and_then(|e| e.tls.as_deref_mut()) else { return false };
        tls.send_close_notify();
        true
    }
}
