//! Segment files: the on-disk frame format, scanning (recovery and tailing), reading, and the
//! sparse offset/time index.
//!
//! A segment is named by the offset of its first record (`00000000000000000042.log`) and holds
//! frames back to back:
//!
//! ```text
//! u32 LE body length | u32 LE CRC-32 of body | body:
//!   u8 format version (1) | u64 offset | i64 timestamp ms | i32 key length (-1: none) | key |
//!   u32 header count | (u32 key length | key | u32 value length | value)* | payload (the rest)
//! ```
//!
//! The index is sparse (one entry per `index_interval_bytes`) and doubles as the time index:
//! each entry carries the newest timestamp of the records up to the next entry. It is kept in
//! memory; closed segments also persist it in `<base>.index` so that opening a large log reads
//! only the index files and the tail of each active segment.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{Header, LogError, NewRecord, Record};

pub(crate) const FORMAT_VERSION: u8 = 1;
pub(crate) const FRAME_HEADER_LEN: usize = 8;
const MIN_BODY_LEN: usize = 1 + 8 + 8 + 4 + 4;
/// Frames larger than this are never written, so a length above it is a torn or corrupt frame.
pub(crate) const MAX_FRAME_LEN: usize = 256 * 1024 * 1024;
const INDEX_MAGIC: &[u8; 4] = b"FLIX";

pub(crate) fn io_error(path: &Path, source: io::Error) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

fn index_path(segment_path: &Path) -> PathBuf {
    segment_path.with_extension("index")
}

/// The size a record will take on disk.
pub(crate) fn frame_len(record: &NewRecord) -> usize {
    FRAME_HEADER_LEN
        + MIN_BODY_LEN
        + record.key.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|h| 8 + h.key.len() + h.value.len())
            .sum::<usize>()
        + record.payload.len()
}

/// Appends the frame of `record` at `offset` to `out`.
pub(crate) fn encode_frame(out: &mut Vec<u8>, offset: u64, timestamp_ms: i64, record: &NewRecord) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    match &record.key {
        Some(key) => {
            out.extend_from_slice(&(key.len() as i32).to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for header in &record.headers {
        out.extend_from_slice(&(header.key.len() as u32).to_le_bytes());
        out.extend_from_slice(header.key.as_bytes());
        out.extend_from_slice(&(header.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&header.value);
    }
    out.extend_from_slice(&record.payload);
    let body_start = start + FRAME_HEADER_LEN;
    let body_len = (out.len() - body_start) as u32;
    let crc = crc32fast::hash(&out[body_start..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..body_start].copy_from_slice(&crc.to_le_bytes());
}

/// What the fixed part of a frame body says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameMeta {
    pub offset: u64,
    pub timestamp_ms: i64,
}

fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if body.len() < n {
        return Err("frame body ends early".into());
    }
    let (head, rest) = body.split_at(n);
    *body = rest;
    Ok(head)
}

fn take_u32(body: &mut &[u8]) -> Result<u32, String> {
    let bytes = take(body, 4)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn take_u64(body: &mut &[u8]) -> Result<u64, String> {
    let bytes = take(body, 8)?;
    let mut array = [0; 8];
    array.copy_from_slice(bytes);
    Ok(u64::from_le_bytes(array))
}

fn decode_meta(body: &[u8]) -> Result<FrameMeta, String> {
    let mut rest = body;
    let version = take(&mut rest, 1)?[0];
    if version != FORMAT_VERSION {
        return Err(format!("unknown frame format version {version}"));
    }
    let offset = take_u64(&mut rest)?;
    let timestamp_ms = take_u64(&mut rest)? as i64;
    Ok(FrameMeta {
        offset,
        timestamp_ms,
    })
}

/// Decodes a CRC-checked frame body into a record.
pub(crate) fn decode_record(body: &[u8], topic: &str, partition: u32) -> Result<Record, String> {
    let meta = decode_meta(body)?;
    let mut rest = &body[1 + 8 + 8..];
    let key_len = take_u32(&mut rest)? as i32;
    let key = if key_len < 0 {
        None
    } else {
        Some(take(&mut rest, key_len as usize)?.to_vec())
    };
    let header_count = take_u32(&mut rest)?;
    let mut headers = Vec::with_capacity(header_count.min(64) as usize);
    for _ in 0..header_count {
        let key_len = take_u32(&mut rest)? as usize;
        let key = String::from_utf8(take(&mut rest, key_len)?.to_vec())
            .map_err(|_| "header key is not UTF-8".to_string())?;
        let value_len = take_u32(&mut rest)? as usize;
        headers.push(Header {
            key,
            value: take(&mut rest, value_len)?.to_vec(),
        });
    }
    Ok(Record {
        topic: topic.to_owned(),
        partition,
        offset: meta.offset,
        timestamp_ms: meta.timestamp_ms,
        key,
        headers,
        payload: rest.to_vec(),
    })
}

/// Checks a frame header and body. `Err` carries the reason the frame is invalid.
fn check_frame(header: [u8; FRAME_HEADER_LEN], body: &[u8]) -> Result<FrameMeta, String> {
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if crc32fast::hash(body) != crc {
        return Err("CRC mismatch".into());
    }
    decode_meta(body)
}

fn frame_body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, String> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(MIN_BODY_LEN..=MAX_FRAME_LEN).contains(&len) {
        return Err(format!("impossible frame length {len}"));
    }
    Ok(len)
}

/// One entry of the sparse index: the first record at or after a file position, and the newest
/// timestamp among the records from it up to the next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub position: u64,
    pub max_timestamp_ms: i64,
}

/// A segment as far as it is published to readers.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Bytes of complete, valid frames.
    pub size: u64,
    /// The offset after the last record.
    pub next_offset: u64,
    pub max_timestamp_ms: Option<i64>,
    pub index: Vec<IndexEntry>,
}

/// Records one appended frame in an index (shared by the writer, recovery and tailing).
pub(crate) fn note_in_index(
    index: &mut Vec<IndexEntry>,
    last_index_position: &mut Option<u64>,
    interval: u64,
    position: u64,
    meta: FrameMeta,
) -> bool {
    let due = last_index_position.is_none_or(|last| position - last >= interval);
    if due {
        index.push(IndexEntry {
            offset: meta.offset,
            position,
            max_timestamp_ms: meta.timestamp_ms,
        });
        *last_index_position = Some(position);
    } else if let Some(last) = index.last_mut() {
        last.max_timestamp_ms = last.max_timestamp_ms.max(meta.timestamp_ms);
    }
    due
}

impl Segment {
    pub fn new_empty(base_offset: u64, path: PathBuf, file: File) -> Self {
        Self {
            base_offset,
            path,
            file: Arc::new(file),
            size: 0,
            next_offset: base_offset,
            max_timestamp_ms: None,
            index: Vec::new(),
        }
    }

    fn note(&mut self, position: u64, frame_len: u64, meta: FrameMeta, interval: u64) {
        let mut last = self.index.last().map(|e| e.position);
        note_in_index(&mut self.index, &mut last, interval, position, meta);
        self.size = position + frame_len;
        self.next_offset = meta.offset + 1;
        self.max_timestamp_ms = Some(
            self.max_timestamp_ms
                .map_or(meta.timestamp_ms, |t| t.max(meta.timestamp_ms)),
        );
    }

    /// Reads frames from `self.size` to the end of the file, adding every valid one. Returns
    /// `Some((position, reason))` if it stopped at an invalid or incomplete frame.
    pub fn scan_forward(&mut self, interval: u64) -> Result<Option<(u64, String)>, LogError> {
        let file_len = self
            .file
            .metadata()
            .map_err(|e| io_error(&self.path, e))?
            .len();
        if file_len <= self.size {
            return Ok(None);
        }
        let file = self.file.clone();
        let mut reader = io::BufReader::with_capacity(
            256 * 1024,
            PositionedReader {
                file: &file,
                position: self.size,
            },
        );
        let mut body = Vec::new();
        loop {
            let position = self.size;
            if position >= file_len {
                return Ok(None);
            }
            let mut header = [0u8; FRAME_HEADER_LEN];
            if file_len - position < FRAME_HEADER_LEN as u64 {
                return Ok(Some((position, "partial frame header".into())));
            }
            reader
                .read_exact(&mut header)
                .map_err(|e| io_error(&self.path, e))?;
            let body_len = match frame_body_len(header) {
                Ok(len) => len,
                Err(reason) => return Ok(Some((position, reason))),
            };
            let frame_len = (FRAME_HEADER_LEN + body_len) as u64;
            if file_len - position < frame_len {
                return Ok(Some((position, "partial frame".into())));
            }
            body.resize(body_len, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| io_error(&self.path, e))?;
            let meta = match check_frame(header, &body) {
                Ok(meta) => meta,
                Err(reason) => return Ok(Some((position, reason))),
            };
            if meta.offset != self.next_offset {
                let reason = format!(
                    "offset {} where {} was expected",
                    meta.offset, self.next_offset
                );
                return Ok(Some((position, reason)));
            }
            self.note(position, frame_len, meta, interval);
        }
    }

    /// The part of the file holding `offset` and everything after it, for reading without
    /// holding the partition lock.
    pub fn slice_from(&self, offset: u64) -> SegmentSlice {
        let at = self.index.partition_point(|e| e.offset <= offset);
        let start = if at == 0 {
            0
        } else {
            self.index[at - 1].position
        };
        SegmentSlice {
            path: self.path.clone(),
            file: self.file.clone(),
            start,
            end: self.size,
        }
    }

    /// Where to scan for the first record with a timestamp `>= timestamp_ms`, if this segment
    /// can hold one: the first index block whose newest timestamp reaches it (blocks before it
    /// cannot contain a match).
    pub fn slice_for_time(&self, timestamp_ms: i64) -> Option<(SegmentSlice, u64)> {
        if self.max_timestamp_ms.is_none_or(|max| max < timestamp_ms) {
            return None;
        }
        let entry = self
            .index
            .iter()
            .find(|e| e.max_timestamp_ms >= timestamp_ms)?;
        let slice = SegmentSlice {
            path: self.path.clone(),
            file: self.file.clone(),
            start: entry.position,
            end: self.size,
        };
        Some((slice, entry.offset))
    }

    /// Writes `<base>.index` so that the next open need not scan this (closed) segment.
    pub fn write_index_file(&self) -> Result<(), LogError> {
        let path = index_path(&self.path);
        let mut bytes = Vec::with_capacity(48 + self.index.len() * 24);
        bytes.extend_from_slice(INDEX_MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(&self.size.to_le_bytes());
        bytes.extend_from_slice(&self.next_offset.to_le_bytes());
        bytes.extend_from_slice(&self.max_timestamp_ms.unwrap_or(i64::MIN).to_le_bytes());
        bytes.extend_from_slice(&(self.index.len() as u64).to_le_bytes());
        for entry in &self.index {
            bytes.extend_from_slice(&entry.offset.to_le_bytes());
            bytes.extend_from_slice(&entry.position.to_le_bytes());
            bytes.extend_from_slice(&entry.max_timestamp_ms.to_le_bytes());
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let temporary = path.with_extension("index.tmp");
        std::fs::write(&temporary, &bytes).map_err(|e| io_error(&temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| io_error(&path, e))
    }

    /// Loads `<base>.index` if it exists and matches the segment file; `None` means "scan".
    pub fn load_index_file(&mut self) -> Option<()> {
        let bytes = std::fs::read(index_path(&self.path)).ok()?;
        let (content, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32fast::hash(content) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut rest = content;
        if take(&mut rest, 4).ok()? != INDEX_MAGIC || take(&mut rest, 1).ok()?[0] != FORMAT_VERSION
        {
            return None;
        }
        let size = take_u64(&mut rest).ok()?;
        let next_offset = take_u64(&mut rest).ok()?;
        let max_timestamp = take_u64(&mut rest).ok()? as i64;
        let count = take_u64(&mut rest).ok()?;
        if self.file.metadata().ok()?.len() != size
            || Some(rest.len() as u64) != count.checked_mul(24)
        {
            return None;
        }
        let mut index = Vec::with_capacity(count as usize);
        for _ in 0..count {
            index.push(IndexEntry {
                offset: take_u64(&mut rest).ok()?,
                position: take_u64(&mut rest).ok()?,
                max_timestamp_ms: take_u64(&mut rest).ok()? as i64,
            });
        }
        self.size = size;
        self.next_offset = next_offset;
        self.max_timestamp_ms = (next_offset > self.base_offset).then_some(max_timestamp);
        self.index = index;
        Some(())
    }

    /// Deletes the segment file and its index file.
    pub fn delete_files(&self) -> Result<(), LogError> {
        for path in [self.path.clone(), index_path(&self.path)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(())
    }
}

/// A byte range of complete, published frames in a segment file.
pub(crate) struct SegmentSlice {
    pub path: PathBuf,
    pub file: Arc<File>,
    pub start: u64,
    pub end: u64,
}

impl SegmentSlice {
    /// Reads the records with offsets `>= from_offset` (at most `max`). `stop` ends the read
    /// at the first record it accepts, returning that record's offset.
    pub fn read(
        &self,
        from_offset: u64,
        max: usize,
        topic: &str,
        partition: u32,
        mut stop: impl FnMut(&FrameMeta) -> bool,
        out: &mut Vec<Record>,
    ) -> Result<ReadEnd, LogError> {
        let mut reader = io::BufReader::with_capacity(
            256 * 1024,
            PositionedReader {
                file: &self.file,
                position: self.start,
            },
        );
        let mut position = self.start;
        let mut body = Vec::new();
        let corrupt = |reason: String, position: u64| LogError::Corrupt {
            path: self.path.display().to_string(),
            reason: format!("{reason} in the frame at byte {position}"),
        };
        while position < self.end && out.len() < max {
            let mut header = [0u8; FRAME_HEADER_LEN];
            reader
                .read_exact(&mut header)
                .map_err(|e| io_error(&self.path, e))?;
            let body_len = frame_body_len(header).map_err(|r| corrupt(r, position))?;
            body.resize(body_len, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| io_error(&self.path, e))?;
            let meta = check_frame(header, &body).map_err(|r| corrupt(r, position))?;
            position += (FRAME_HEADER_LEN + body_len) as u64;
            if meta.offset < from_offset {
                continue;
            }
            if stop(&meta) {
                return Ok(ReadEnd::Stopped(meta.offset));
            }
            out.push(decode_record(&body, topic, partition).map_err(|r| corrupt(r, position))?);
        }
        Ok(ReadEnd::Exhausted)
    }
}

pub(crate) enum ReadEnd {
    Exhausted,
    Stopped(u64),
}

/// A `Read` over a shared file that uses `pread`, so readers never move a shared cursor.
struct PositionedReader<'a> {
    file: &'a File,
    position: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

/// The segment base offsets present in a partition directory, sorted.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(bases),
        Err(e) => return Err(io_error(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name
            .strip_suffix(".log")
            .and_then(|b| b.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_and_detects_damage() {
        let record = NewRecord {
            key: Some(b"Patient/1".to_vec()),
            headers: vec![Header::new("content-type", "application/fhir+json")],
            payload: b"{\"a\":1}".to_vec(),
            timestamp_ms: None,
        };
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, 42, 1_700_000_000_000, &record);
        assert_eq!(bytes.len(), frame_len(&record));
        let header: [u8; 8] = bytes[..8].try_into().unwrap();
        let body = &bytes[8..];
        assert_eq!(frame_body_len(header).unwrap(), body.len());
        let meta = check_frame(header, body).unwrap();
        assert_eq!((meta.offset, meta.timestamp_ms), (42, 1_700_000_000_000));
        let decoded = decode_record(body, "t", 3).unwrap();
        assert_eq!(decoded.key, record.key);
        assert_eq!(decoded.headers, record.headers);
        assert_eq!(decoded.payload, record.payload);
        assert_eq!(decoded.partition, 3);

        let mut damaged = body.to_vec();
        damaged[20] ^= 1;
        assert!(check_frame(header, &damaged).is_err());
    }
}
