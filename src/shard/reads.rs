//! Read markers on disk: the owner's markers (see `owner/reads`) written to
//! `shard-N/read-markers` beside the shard's log, at most once a second
//! and only when one moved, and read back at start from every shard's
//! directory (a change of `--shards` moves rooms between shards).
//!
//! The file is put in place whole (written, synced, renamed), so a crash
//! leaves the last one written: at most a second of reads is lost, never
//! a message. A damaged file is logged and ignored (its users' unread
//! counts start from the room's present); it never stops the server.

use std::rc::Rc;
use std::time::Duration;

use glommio::timer::Timer;
use tracing::warn;

use super::Shard;
use crate::owner::reads::Reads;
use crate::placement::shard_for;
use crate::store::log::recovery::shard_dir;
use crate::store::log::writer::put_synced;

/// The markers file's name in a shard's directory.
pub(crate) const FILE: &str = "read-markers";

/// How often moved markers are written.
const EVERY: Duration = Duration::from_secs(1);

/// Reads the markers of every shard directory and keeps those of the
/// rooms this shard owns (start-up, before the shard serves).
pub(super) fn load(sh: &Shard) {
    let data = &sh.node.cfg.storage.data_dir;
    let Ok(dirs) = std::fs::read_dir(data) else { return };
    let mut all = Vec::new();
    // Shard directories only: the data directory also holds files (its
    // lock, the node's state), which have no markers to read.
    for entry in dirs.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
        let path = entry.path().join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match Reads::decode(&bytes) {
                Ok(markers) => all.extend(markers),
                Err(e) => warn!(
                    file = %path.display(),
                    error = %e,
                    "read markers not loaded: their users' unread counts start from the rooms' present"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %path.display(), error = %e, "read markers not loaded"),
        }
    }
    let (id, n) = (sh.id, sh.nshards);
    sh.owner.borrow_mut().reads.load(all, |rid| shard_for(rid, n) == id);
}

/// Writes the markers once a second when one moved (a task).
pub(super) async fn run_writer(sh: Rc<Shard>) {
    loop {
        Timer::new(EVERY).await;
        write(&sh).await;
    }
}

/// Writes the markers if one moved since the last write; on failure (a
/// full disk) they are written again at the next chance.
pub(super) async fn write(sh: &Shard) {
    let Some(bytes) = sh.owner.borrow_mut().reads.take_changed() else { return };
    let dir = shard_dir(&sh.node.cfg.storage.data_dir, sh.id);
    if let Err(e) = put_synced(&dir, FILE, bytes).await {
        sh.owner.borrow_mut().reads.changed();
        warn!(shard = sh.id, error = %e, "read markers not written; trying again");
    }
}
