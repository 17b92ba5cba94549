//! Committed offsets of consumer groups: one small JSON file per group, replaced atomically
//! (write, sync, rename) under the group's own lock file, so that any process, the writer or a
//! read-only one, can commit.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{lock::lock_file_blocking, segment::io_error};
use crate::LogError;

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupOffsets {
    /// topic → partition → next offset to read.
    topics: BTreeMap<String, BTreeMap<u32, u64>>,
}

pub(crate) struct GroupStore {
    dir: PathBuf,
    sync: bool,
}

impl GroupStore {
    pub fn new(dir: PathBuf, sync: bool) -> Self {
        Self { dir, sync }
    }

    /// A file name for any group name: safe characters kept, others percent-encoded (so `.`
    /// and `/` can never form a path).
    fn stem(group: &str) -> Result<String, LogError> {
        if group.is_empty() {
            return Err(LogError::Backend(
                "a consumer group name must not be empty".into(),
            ));
        }
        let mut stem = String::with_capacity(group.len());
        for byte in group.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                stem.push(byte as char);
            } else {
                let _ = write!(stem, "%{byte:02X}");
            }
        }
        Ok(stem)
    }

    fn read_offsets(path: &Path) -> Result<GroupOffsets, LogError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GroupOffsets::default()),
            Err(e) => Err(io_error(path, e)),
        }
    }

    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        let path = self.dir.join(format!("{}.json", Self::stem(group)?));
        let offsets = Self::read_offsets(&path)?;
        Ok(offsets
            .topics
            .get(topic)
            .and_then(|p| p.get(&partition))
            .copied())
    }

    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), LogError> {
        let stem = Self::stem(group)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let _lock = lock_file_blocking(&self.dir.join(format!("{stem}.lock")))?;
        let path = self.dir.join(format!("{stem}.json"));
        let mut offsets = Self::read_offsets(&path)?;
        offsets
            .topics
            .entry(topic.to_owned())
            .or_default()
            .insert(partition, next_offset);
        let bytes = serde_json::to_vec_pretty(&offsets)
            .map_err(|e| LogError::Backend(format!("encoding group offsets: {e}")))?;
        let temporary = self.dir.join(format!("{stem}.json.tmp"));
        std::fs::write(&temporary, bytes).map_err(|e| io_error(&temporary, e))?;
        if self.sync {
            std::fs::File::open(&temporary)
                .and_then(|f| f.sync_data())
                .map_err(|e| io_error(&temporary, e))?;
        }
        std::fs::rename(&temporary, &path).map_err(|e| io_error(&path, e))?;
        if self.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_become_safe_file_names() {
        assert_eq!(GroupStore::stem("billing").unwrap(), "billing");
        assert_eq!(GroupStore::stem("../x").unwrap(), "%2E%2E%2Fx");
        assert!(GroupStore::stem("").is_err());
    }

    #[test]
    fn commits_survive_a_new_store_and_stay_per_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = GroupStore::new(dir.path().to_path_buf(), true);
        store.commit("a", "t", 0, 5).unwrap();
        store.commit("a", "t", 1, 7).unwrap();
        store.commit("b", "t", 0, 9).unwrap();
        let reopened = GroupStore::new(dir.path().to_path_buf(), false);
        assert_eq!(reopened.committed("a", "t", 0).unwrap(), Some(5));
        assert_eq!(reopened.committed("a", "t", 1).unwrap(), Some(7));
        assert_eq!(reopened.committed("b", "t", 0).unwrap(), Some(9));
        assert_eq!(reopened.committed("c", "t", 0).unwrap(), None);
    }
}
