//! Keeping a read-only view current while another process writes: the files are watched
//! (inotify through `notify`); each change triggers a refresh that picks up new topics, new
//! segments, new complete frames and segments deleted by retention.

use std::{
    collections::HashSet,
    path::{Component, Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};

use super::{
    OpenMode, Partition, Shared, list_topic_names, load_topic, open_segment, segment::list_segments,
};
use crate::LogError;

/// Poll period used only when the files cannot be watched.
const FALLBACK_POLL: Duration = Duration::from_millis(100);

pub(crate) struct RefresherHandle {
    watcher: Option<notify::RecommendedWatcher>,
    wake: mpsc::Sender<Vec<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl RefresherHandle {
    pub fn stop(mut self) {
        // Dropping every sender disconnects the channel, which ends the thread.
        self.watcher = None;
        drop(self.wake);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn start(shared: Arc<Shared>) -> Result<RefresherHandle, LogError> {
    let (wake, woken) = mpsc::channel();
    let watcher = {
        let wake = wake.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                let _ = wake.send(event.paths);
            }
        })
        .and_then(|mut watcher| {
            watcher.watch(&shared.topics_dir(), RecursiveMode::Recursive)?;
            Ok(watcher)
        })
    };
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                %error,
                "cannot watch the log files; polling every {} ms instead",
                FALLBACK_POLL.as_millis()
            );
            None
        }
    };
    let poll = watcher.is_none();
    let thread = std::thread::Builder::new()
        .name("flare-log-refresh".into())
        .spawn(move || {
            loop {
                let woken_up = if poll {
                    woken.recv_timeout(FALLBACK_POLL)
                } else {
                    woken
                        .recv()
                        .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                };
                let mut scope = Scope::default();
                match woken_up {
                    Ok(paths) => scope.add(&shared.topics_dir(), paths),
                    Err(mpsc::RecvTimeoutError::Timeout) => scope.everything = true,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                // One refresh covers every change signalled so far.
                while let Ok(paths) = woken.try_recv() {
                    scope.add(&shared.topics_dir(), paths);
                }
                match refresh(&shared, &scope) {
                    Ok(true) => shared.generation.send_modify(|g| *g = g.wrapping_add(1)),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "refreshing the log view failed"),
                }
            }
        })
        .map_err(|e| LogError::Backend(format!("cannot start the log refresh thread: {e}")))?;
    Ok(RefresherHandle {
        watcher,
        wake,
        thread: Some(thread),
    })
}

/// What changed on disk, from the paths of file events.
#[derive(Default)]
pub(crate) struct Scope {
    /// Look at every topic and partition (polling, or a path that could not be placed).
    pub everything: bool,
    /// Look for new topics.
    pub topics: bool,
    /// Partitions whose files changed.
    pub partitions: HashSet<(String, u32)>,
}

impl Scope {
    fn add(&mut self, topics_dir: &Path, paths: Vec<PathBuf>) {
        for path in paths {
            let parts: Vec<String> = match path.strip_prefix(topics_dir) {
                Ok(relative) => relative
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(part) => part.to_str().map(str::to_owned),
                        _ => None,
                    })
                    .collect(),
                Err(_) => {
                    self.everything = true;
                    continue;
                }
            };
            match parts.as_slice() {
                [topic, partition, ..] if partition.parse::<u32>().is_ok() => {
                    let partition = partition.parse().unwrap_or_default();
                    self.partitions.insert((topic.clone(), partition));
                }
                _ => self.topics = true,
            }
        }
    }
}

/// Brings the view up to date with the files in `scope`; true if anything changed.
pub(crate) fn refresh(shared: &Shared, scope: &Scope) -> Result<bool, LogError> {
    let mut changed = false;
    if scope.everything || scope.topics {
        for name in list_topic_names(&shared.topics_dir())? {
            if shared.topic(&name).is_none() {
                let topic = load_topic(&shared.config, &name, OpenMode::Reader)?;
                shared.topics.write().insert(name, Arc::new(topic));
                changed = true;
            }
        }
    }
    let topics: Vec<_> = shared.topics.read().values().cloned().collect();
    for topic in topics {
        for partition in &topic.partitions {
            let in_scope = scope.everything
                || scope
                    .partitions
                    .contains(&(topic.name.clone(), partition.id));
            if in_scope {
                changed |= refresh_partition(partition, shared.config.index_interval_bytes)?;
            }
        }
    }
    Ok(changed)
}

fn refresh_partition(partition: &Partition, interval: u64) -> Result<bool, LogError> {
    let bases = list_segments(&partition.dir)?;
    let mut state = partition.state.write();
    let before = (state.start_offset(), state.end_offset());
    // Segments deleted by retention disappear from the front.
    let first_on_disk = bases.first().copied();
    state
        .segments
        .retain(|s| first_on_disk.is_some_and(|first| s.base_offset >= first));
    if let Some(last) = state.segments.last_mut() {
        last.scan_forward(interval)?;
    }
    let known_last = state.segments.last().map(|s| s.base_offset);
    for &base in bases
        .iter()
        .filter(|&&b| known_last.is_none_or(|known| b > known))
    {
        // The segment before a new one is closed: it may have grown since the last look.
        if let Some(previous) = state.segments.last_mut() {
            previous.scan_forward(interval)?;
        }
        let mut segment = match open_segment(&partition.dir, base, false) {
            Ok(segment) => segment,
            // Deleted by retention between listing and opening.
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue;
            }
            Err(error) => return Err(error),
        };
        let is_last = Some(base) == bases.last().copied();
        if is_last || segment.load_index_file().is_none() {
            segment.scan_forward(interval)?;
        }
        state.segments.push(segment);
    }
    Ok(before != (state.start_offset(), state.end_offset()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_events_map_to_the_partitions_and_topics_they_touch() {
        let root = Path::new("/data/topics");
        let mut scope = Scope::default();
        scope.add(
            root,
            vec![
                root.join("fhir.Patient/2/00000000000000000000.log"),
                root.join("fhir.Patient/2"),
                root.join("fhir.Observation/0/00000000000000000100.index"),
            ],
        );
        assert!(!scope.everything && !scope.topics);
        let expected: HashSet<(String, u32)> = [
            ("fhir.Patient".to_string(), 2),
            ("fhir.Observation".to_string(), 0),
        ]
        .into();
        assert_eq!(scope.partitions, expected);

        scope.add(root, vec![root.join("fhir.Encounter/topic.json")]);
        assert!(scope.topics && !scope.everything);
        scope.add(root, vec![PathBuf::from("/elsewhere/x")]);
        assert!(scope.everything);
    }
}
