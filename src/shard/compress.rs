//! permessage-deflate on a shard: one compressor and one inflater for every
//! connection of the shard (messages are compressed without context, see
//! [`crate::ws::deflate`]), and a frame's compressed copy made at most once,
//! the first time a recipient that negotiated the extension needs it.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crate::metrics::ShardStats;
use crate::session::outbound::SharedFrame;
use crate::ws::WsError;
use crate::ws::deflate::{Deflater, Inflater};

/// A frame on its way to some of the shard's connections: the plain bytes,
/// and the compressed copy once one recipient wanted it. Every recipient
/// shares one or the other.
#[derive(Debug)]
pub(crate) struct Outgoing {
    plain: SharedFrame,
    deflated: OnceCell<SharedFrame>,
}

impl Outgoing {
    /// A frame to send.
    pub(crate) fn new(frame: Bytes) -> Self {
        Outgoing { plain: Rc::new(frame), deflated: OnceCell::new() }
    }
}

/// The shard's compression: the setting, the compressor, the inflater.
#[derive(Debug)]
pub(crate) struct Compression {
    /// Smallest frame compressed; None: compression is off.
    min: Option<usize>,
    deflater: RefCell<Deflater>,
    inflater: RefCell<Inflater>,
}

impl Compression {
    /// The shard's compression under `--compression` (None: off) and its threshold.
    pub(crate) fn new(min: Option<usize>) -> Self {
        Compression { min, deflater: RefCell::default(), inflater: RefCell::default() }
    }

    /// The copy of `f` to queue on a connection: the compressed one for a
    /// connection that negotiated permessage-deflate when the frame is a
    /// text frame of at least the threshold that compression shortens;
    /// the plain one otherwise.
    pub(crate) fn pick<'a>(&self, deflate: bool, f: &'a Outgoing, stats: &ShardStats) -> &'a SharedFrame {
        match self.min {
            Some(min) if deflate && f.plain.len() >= min => {
                f.deflated.get_or_init(|| match self.deflater.borrow_mut().frame(&f.plain) {
                    Some(z) => {
                        stats.deflated_frames.fetch_add(1, Relaxed);
                        stats.deflated_plain_bytes.fetch_add(f.plain.len() as u64, Relaxed);
                        stats.deflated_bytes.fetch_add(z.len() as u64, Relaxed);
                        Rc::new(z)
                    }
                    None => Rc::clone(&f.plain),
                })
            }
            _ => &f.plain,
        }
    }

    /// Inflates a client's compressed message (at most `max` bytes, UTF-8)
    /// and hands its text to `then`.
    pub(crate) fn inflate(
        &self,
        data: &[u8],
        max: usize,
        stats: &ShardStats,
        then: impl FnOnce(&mut [u8]),
    ) -> Result<(), WsError> {
        let mut z = self.inflater.borrow_mut();
        let text = z.text(data, max)?;
        stats.inflated_messages.fetch_add(1, Relaxed);
        then(text);
        Ok(())
    }
}
