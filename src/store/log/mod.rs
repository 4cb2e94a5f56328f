//! The embedded log (`--data-dir`): its byte layout ([`record`]), reading it
//! back at start ([`recovery`]), each room's index of where its messages are
//! ([`index`]), a sealed segment's index file ([`segindex`]) and the writer
//! ([`writer`], the only part that does I/O on the shard's executor).

pub mod index;
pub mod record;
pub mod recovery;
pub mod segindex;
pub mod writer;
