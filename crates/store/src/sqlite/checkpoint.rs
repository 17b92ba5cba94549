//! WAL checkpoints on their own thread, so the writer does not copy the WAL back into the
//! database file (and fsync it) while commits wait.
//!
//! The writer wakes this thread after each batch; it waits [`CHECKPOINT_PAUSE`] for more
//! batches (a page changed by many of them is then copied once) and runs a PASSIVE checkpoint,
//! which never blocks the writer or the readers. The writer's own automatic checkpoint stays
//! on, at `wal_autocheckpoint_pages`: under continuous writes a background checkpoint never
//! catches up with the last frame before the next commit, and the WAL file restarts from its
//! beginning only after a checkpoint that did; the writer's then copies just the frames
//! written since the last background one.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::{SqliteConfig, configure};
use crate::StoreError;

/// How long writes accumulate in the WAL before a checkpoint copies them.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(250);

pub(crate) struct Checkpointer {
    conn: Connection,
    wakeups: Receiver<()>,
}

impl Checkpointer {
    pub(crate) fn open(
        path: &Path,
        config: &SqliteConfig,
        wakeups: Receiver<()>,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, config, true)?;
        // The checkpoint's fsyncs follow the configured durability.
        conn.pragma_update(None, "synchronous", config.durability.pragma_value())?;
        Ok(Self { conn, wakeups })
    }

    /// Runs until the writer drops its end of the wakeup channel.
    pub(crate) fn run(self) {
        while self.wakeups.recv().is_ok() {
            let deadline = Instant::now() + CHECKPOINT_PAUSE;
            let writer_gone = loop {
                match self
                    .wakeups
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => break false,
                    Err(RecvTimeoutError::Disconnected) => break true,
                }
            };
            // The pragma answers (busy, WAL frames, frames copied); only failure matters here.
            let checkpoint = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            if let Err(err) = checkpoint {
                tracing::warn!(error = %err, "WAL checkpoint failed; the writer's automatic checkpoint takes over");
            }
            if writer_gone {
                return;
            }
        }
    }
}
