//! A shard's log on disk. Appends are plain `pwrite`s into the page cache
//! (see [`Log::append`] for why); what waits for the disk — fdatasync,
//! index files, renames — goes through glommio's io_uring files, so the
//! shard's executor awaits the disk instead of waiting on it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, OpenOptions};
use tracing::info;

use super::record;
use super::recovery::{NEWEST, Segment, index_name, segment_name, shard_dir};
use super::segindex::Builder;
use crate::node::unix_ms;
use crate::store::Mark;

/// Where a shard's log lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The data directory.
    pub data: PathBuf,
    /// Which shard.
    pub shard: usize,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Sealed segments are deleted, oldest first, while the log is larger.
    pub retention_bytes: u64,
    /// Sealed segments whose newest record is older are deleted (0: no age limit).
    pub retention_ms: u64,
}

/// One shard's log: the segment being written and the sealed ones. Only
/// the shard's log writer task uses it, one call at a time.
pub struct Log {
    cfg: LogConfig,
    dir: PathBuf,
    file: RefCell<Rc<BufferedFile>>,
    index: Cell<u64>,
    /// Length of the segment being written.
    pos: Cell<u64>,
    /// Written and not yet fsynced.
    unsynced: Cell<bool>,
    sealed: RefCell<VecDeque<Segment>>,
    /// The index file of the segment being written, as it grows.
    building: RefCell<Builder>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("shard", &self.cfg.shard)
            .field("segment", &self.index.get())
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens the shard's log: appends to its newest segment (as recovery
    /// left it), or starts the first.
    pub async fn open(cfg: LogConfig, mut segments: Vec<Segment>) -> std::io::Result<Log> {
        let dir = shard_dir(&cfg.data, cfg.shard);
        std::fs::create_dir_all(&dir)?;
        // A segment resumed after a restart gets no index file (the builder
        // did not see its first records): recovery reads it instead.
        let (file, index, pos, complete) = match segments.pop() {
            Some(s) => (OpenOptions::new().write(true).buffered_open(&s.path).await?, s.index, s.len, false),
            None => (create_segment(&dir, 1).await?, 1, record::HEADER_LEN as u64, true),
        };
        name_newest(&dir, index).await?;
        Ok(Log {
            cfg,
            dir,
            file: RefCell::new(Rc::new(file)),
            index: Cell::new(index),
            pos: Cell::new(pos),
            unsynced: Cell::new(false),
            sealed: RefCell::new(segments.into()),
            building: RefCell::new(Builder::new(complete)),
        })
    }

    /// Appends framed records (all of `buf`) to the segment being written;
    /// returns the segment and the offset they start at. A short write (a
    /// full disk) is cut back off, so the segment stays a run of whole
    /// records, and reported as an error.
    ///
    /// The write is a plain `pwrite` on the shard's thread, not an io_uring
    /// request: it only copies into the page cache (microseconds; the
    /// fdatasync that waits for the disk stays on io_uring), while io_uring
    /// handed every buffered ext4 write to a kernel worker thread — a wake-up
    /// and two context switches per group commit, ~10 % of the server's
    /// CPU with many quiet connections (bench/results/2026-12-07-log-pwrite).
    /// Redis writes its append-only file the same way.
    pub async fn append(&self, buf: Vec<u8>) -> std::io::Result<(u64, u64)> {
        let len = buf.len();
        let pos = self.pos.get();
        let file = self.file.borrow().clone();
        let n = pwrite(file.as_raw_fd(), &buf, pos)?;
        if n < len {
            let _ = file.truncate(pos).await;
            // A short write is the disk (or a file-size limit) running out.
            let why = format!("short write to the log ({n} of {len} bytes): is the disk full?");
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, why));
        }
        self.pos.set(pos + len as u64);
        self.unsynced.set(true);
        Ok((self.index.get(), pos))
    }

    /// Takes back a batch written at `base` of the segment being written
    /// (its fsync failed, so it is refused): the segment ends before it
    /// again, and nothing of it is read back at the next start.
    pub async fn undo(&self, base: u64) -> std::io::Result<()> {
        let file = self.file.borrow().clone();
        file.truncate(base).await?;
        self.pos.set(base);
        Ok(())
    }

    /// Lists the records of a batch of `len` bytes written at `base` in the
    /// segment's index.
    pub fn note_written(&self, marks: &[Mark], base: u64, len: u64) {
        let mut b = self.building.borrow_mut();
        b.batch(base, len);
        for m in marks {
            b.add(&m.rid, m.epoch, m.seq, base + m.off);
        }
    }

    /// The shard directory this log writes.
    pub fn dir(&self) -> usize {
        self.cfg.shard
    }

    /// Whether anything was written since the last fsync.
    pub fn unsynced(&self) -> bool {
        self.unsynced.get()
    }

    /// fdatasync of the segment being written.
    pub async fn sync(&self) -> std::io::Result<()> {
        let file = self.file.borrow().clone();
        // Cleared before the sync (a write meanwhile sets it again), and set
        // back if the sync failed, so that the next interval tries again.
        self.unsynced.set(false);
        let r = file.fdatasync().await;
        if r.is_err() {
            self.unsynced.set(true);
        }
        Ok(r?)
    }

    /// Bytes on disk: sealed segments and the one being written.
    pub fn size(&self) -> u64 {
        self.pos.get() + self.sealed.borrow().iter().map(|s| s.len).sum::<u64>()
    }

    /// Seals the segment being written once it passed `--segment-bytes`
    /// (synced first, so a sealed segment is whole on disk), starts the
    /// next, and deletes sealed segments past the retention limits. Returns
    /// the newest segment deleted, if any was.
    pub async fn roll_if_full(&self) -> std::io::Result<Option<u64>> {
        if self.pos.get() < self.cfg.segment_bytes {
            return Ok(None);
        }
        self.sync().await?;
        let sealed_at = unix_ms();
        let idx = self.building.replace(Builder::new(true)).finish(self.pos.get(), sealed_at);
        if let Some(idx) = idx {
            let path = self.dir.join(index_name(self.index.get()));
            if let Err(e) = write_index(&self.dir, self.index.get(), idx).await {
                // Only a shortcut: recovery reads the segment instead.
                tracing::warn!(path = %path.display(), error = %e, "cannot write a segment's index file");
            }
        }
        let next = self.index.get() + 1;
        let new = Rc::new(create_segment(&self.dir, next).await?);
        name_newest(&self.dir, next).await?;
        let old = std::mem::replace(&mut *self.file.borrow_mut(), new);
        let sealed = Segment {
            path: self.dir.join(segment_name(self.index.get())),
            index: self.index.get(),
            len: self.pos.get(),
            last_ts: sealed_at,
        };
        self.sealed.borrow_mut().push_back(sealed);
        self.index.set(next);
        self.pos.set(record::HEADER_LEN as u64);
        if let Ok(old) = Rc::try_unwrap(old) {
            let _ = old.close().await;
        }
        Ok(self.apply_retention())
    }

    /// Deletes the oldest sealed segments while the log is over its byte
    /// limit or they are older than the age limit. Returns the newest
    /// segment deleted.
    fn apply_retention(&self) -> Option<u64> {
        let now = unix_ms();
        let mut dropped = None;
        loop {
            let over_size = self.size() > self.cfg.retention_bytes;
            let mut sealed = self.sealed.borrow_mut();
            let Some(oldest) = sealed.front() else { break };
            let too_old = self.cfg.retention_ms > 0 && now.saturating_sub(oldest.last_ts) > self.cfg.retention_ms;
            if !over_size && !too_old {
                break;
            }
            let oldest = sealed.pop_front().expect("checked");
            drop(sealed);
            // Readers of history forget the segment whether or not its file
            // could be removed: retention promised it gone.
            dropped = Some(oldest.index);
            // Unlinking a large file can take milliseconds: not on the
            // shard's thread.
            let (idx, seg, shard) = (self.dir.join(index_name(oldest.index)), oldest.path, self.cfg.shard);
            let unlink = move || {
                let _ = std::fs::remove_file(&idx);
                match std::fs::remove_file(&seg) {
                    Ok(()) => info!(shard, path = %seg.display(), "log segment past retention deleted"),
                    Err(e) => {
                        tracing::warn!(path = %seg.display(), error = %e, "cannot delete a log segment past retention")
                    }
                }
            };
            if let Err(e) = std::thread::Builder::new().name("log-retention".into()).spawn(unlink) {
                tracing::warn!(error = %e, "cannot start a thread to delete a log segment");
            }
        }
        dropped
    }
}

/// Puts a whole small file in place so that no crash leaves it half
/// written: `bytes` are written and synced under a temporary name, renamed
/// to `name` in `dir`, and the directory synced. All through the shard's
/// executor (io_uring): a roll never blocks the shard on the disk.
pub(crate) async fn put_synced(dir: &Path, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = OpenOptions::new().write(true).create(true).truncate(true).buffered_open(&tmp).await?;
    let len = bytes.len();
    let n = f.write_at(bytes, 0).await?;
    if n < len {
        let why = format!("short write of {name} ({n} of {len} bytes): is the disk full?");
        return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, why));
    }
    f.fdatasync().await?;
    f.close().await?;
    glommio::io::rename(&tmp, dir.join(name)).await?;
    glommio::io::Directory::open(dir).await?.sync().await?;
    Ok(())
}

/// One `pwrite` of `buf` at `pos` (retried when a signal interrupts it):
/// the bytes written, which may be fewer than asked when the disk fills.
fn pwrite(fd: std::os::fd::RawFd, buf: &[u8], pos: u64) -> std::io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is the open
        // segment, kept open by the `Rc<BufferedFile>` the caller holds.
        let n = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), pos as libc::off_t) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes a sealed segment's index file, synced.
async fn write_index(dir: &Path, index: u64, idx: Vec<u8>) -> std::io::Result<()> {
    put_synced(dir, &index_name(index), idx).await
}

/// Creates segment `index` with its header (see [`put_synced`]: a crash
/// cannot leave it looking damaged); returns it open for appending.
async fn create_segment(dir: &Path, index: u64) -> std::io::Result<BufferedFile> {
    put_synced(dir, &segment_name(index), record::header().to_vec()).await?;
    Ok(OpenOptions::new().write(true).buffered_open(dir.join(segment_name(index))).await?)
}

/// Writes the directory's `NEWEST` file: a start that finds no segment
/// this new knows the newest was lost.
async fn name_newest(dir: &Path, index: u64) -> std::io::Result<()> {
    put_synced(dir, NEWEST, format!("{index}\n").into_bytes()).await
}

/// fsync of a directory: its entries (a rename, a new file) are on disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
