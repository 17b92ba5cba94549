//! Keeping a read-only view current while another process writes: the files are watched
//! (inotify through `notify`); each change triggers a refresh that picks up new topics, new
//! segments, new complete frames and segments deleted by retention.

use std::{
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
    wake: mpsc::Sender<()>,
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
            if event.is_ok() {
                let _ = wake.send(());
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
                if let Err(mpsc::RecvTimeoutError::Disconnected) = woken_up {
                    break;
                }
                // One refresh covers every change signalled so far.
                while woken.try_recv().is_ok() {}
                match refresh(&shared) {
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

/// Brings the view up to date with the files; true if anything changed.
pub(crate) fn refresh(shared: &Shared) -> Result<bool, LogError> {
    let mut changed = false;
    for name in list_topic_names(&shared.topics_dir())? {
        if shared.topic(&name).is_none() {
            let topic = load_topic(&shared.config, &name, OpenMode::Reader)?;
            shared.topics.write().insert(name, Arc::new(topic));
            changed = true;
        }
    }
    let topics: Vec<_> = shared.topics.read().values().cloned().collect();
    for topic in topics {
        for partition in &topic.partitions {
            changed |= refresh_partition(partition, shared.config.index_interval_bytes)?;
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
