//! Exclusive locks on files (`flock`), released when the file is closed, including when the
//! process dies.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
};

use rustix::fs::{FlockOperation, flock};

use super::segment::io_error;
use crate::LogError;

/// Holds the writer lock of a data directory while alive.
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the single-writer lock of `data_dir`, recording this process id in the lock file so
/// that a refused writer can say who holds it.
pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<DirLock, LogError> {
    let path = data_dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            // The holder wrote its pid; an unreadable file still yields a clear message.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "a process that has not written its id yet".to_owned(),
                pid => format!("process {pid}"),
            };
            return Err(LogError::Locked {
                path: data_dir.display().to_string(),
                holder,
            });
        }
        Err(errno) => return Err(io_error(&path, errno.into())),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(|e| io_error(&path, e))?;
    Ok(DirLock { _file: file })
}

/// Blocks until this process holds the exclusive lock on `path` (created if missing).
pub(crate) fn lock_file_blocking(path: &Path) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    flock(&file, FlockOperation::LockExclusive).map_err(|e| io_error(path, e.into()))?;
    Ok(file)
}
