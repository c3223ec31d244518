//! The on-disk format: file names, fixed headers and record framing.
//!
//! Everything is little-endian. See the crate documentation for the layout.

use std::collections::BTreeMap;
use std::path::Path;

use paxos_core::{AcceptorStatus, Ballot, NodeId, Slot, StorageError};
use serde::{Deserialize, Serialize};

use crate::OpenError;

/// The directory's identity file.
pub(crate) const META_FILE: &str = "META";
/// Where a new `META` is written before it is renamed into place.
pub(crate) const META_TMP: &str = "META.tmp";
/// Locked for as long as a `FileStorage` uses the directory; always empty.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// The latest checkpoint.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
/// Where a new checkpoint is written before it is renamed into place.
pub(crate) const CHECKPOINT_TMP: &str = "checkpoint.tmp";
/// A compaction's base being written in the background, before it is renamed into
/// place as the newest segment.
pub(crate) const BASE_TMP: &str = "base.tmp";

/// The on-disk format version written into every file header, and the only one read.
///
/// 1: the first format. 2: a base also holds the acceptor's status, its incarnation and
/// its peers' incarnations ([`BaseHeader`]).
pub(crate) const FORMAT_VERSION: u32 = 2;

pub(crate) const META_MAGIC: [u8; 8] = *b"PXSMETA1";
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"PXSWALSG";
pub(crate) const CHECKPOINT_MAGIC: [u8; 8] = *b"PXSCKPT1";

/// magic + version + cluster id + node id.
const IDENT_LEN: usize = 8 + 4 + 8 + 8;
/// `META`: ident + CRC.
pub(crate) const META_LEN: usize = IDENT_LEN + 4;
/// Segment header: ident + sequence number + kind + CRC.
pub(crate) const SEGMENT_HEADER_LEN: usize = IDENT_LEN + 8 + 4 + 4;
/// Checkpoint header: ident + payload length + payload CRC + header CRC.
pub(crate) const CHECKPOINT_HEADER_LEN: usize = IDENT_LEN + 8 + 4 + 4;
/// Record header: payload length + payload CRC + header CRC.
pub(crate) const RECORD_HEADER_LEN: usize = 12;

/// A segment that starts with a base (a full image of the acceptor state).
pub(crate) const KIND_BASE: u32 = 1;
/// A segment that continues the previous one.
pub(crate) const KIND_CONTINUATION: u32 = 2;

/// Record tags: the first payload byte.
pub(crate) const TAG_OPS: u8 = 1;
pub(crate) const TAG_BASE_BEGIN: u8 = 2;
pub(crate) const TAG_BASE_MORE: u8 = 3;
pub(crate) const TAG_BASE_END: u8 = 4;

/// The first item of a base (the record tagged [`TAG_BASE_BEGIN`]): every part of the
/// acceptor state but the log entries (which follow it) and the checkpoint (which has
/// a file of its own). Postcard-encoded in field order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BaseHeader {
    pub(crate) status: AcceptorStatus,
    pub(crate) incarnation: u64,
    pub(crate) peer_incarnations: BTreeMap<NodeId, u64>,
    pub(crate) promised: Ballot,
    pub(crate) commit_point: Slot,
}

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("wal-{seq:020}.log")
}

/// The sequence number of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn put_ident(buf: &mut Vec<u8>, magic: &[u8; 8], cluster: u64, node: u64) {
    buf.extend_from_slice(magic);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&cluster.to_le_bytes());
    buf.extend_from_slice(&node.to_le_bytes());
}

fn put_crc(buf: &mut Vec<u8>, from: usize) {
    let crc = crc32fast::hash(&buf[from..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(raw)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// A corruption error naming the file and the offset.
pub(crate) fn corrupt(path: &Path, offset: u64, what: impl std::fmt::Display) -> StorageError {
    StorageError::corrupt(format!("{}: offset {offset}: {what}", path.display()))
}

/// A corruption error naming the file and the offset, shown by `cause` (a decoder's
/// error).
pub(crate) fn corrupt_because(
    path: &Path,
    offset: u64,
    what: impl std::fmt::Display,
    cause: impl std::error::Error + Send + Sync + 'static,
) -> StorageError {
    StorageError::corrupt_because(
        format!("{}: offset {offset}: {what}", path.display()),
        cause,
    )
}

/// An IO error with what was being done and to which file, keeping the `io::Error`.
pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::io_because(format!("{what} {}", path.display()), e)
}

/// Checks the identity part of a header whose last four bytes are a CRC of the rest.
/// `bytes` is exactly the header.
///
/// The checksum is checked before the version, so a damaged version field is reported
/// as damage; the header layout is the same in every version so far.
pub(crate) fn check_header(
    path: &Path,
    bytes: &[u8],
    magic: &[u8; 8],
    what: &str,
    cluster: u64,
    node: u64,
) -> Result<(), OpenError> {
    if bytes[..8] != magic[..] {
        return Err(corrupt(path, 0, format_args!("not a {what} (bad magic)")).into());
    }
    let crc_at = bytes.len() - 4;
    if crc32fast::hash(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
        return Err(corrupt(path, 0, format_args!("{what} header checksum mismatch")).into());
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(OpenError::UnsupportedVersion {
            file: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (c, n) = (u64_at(bytes, 12), u64_at(bytes, 20));
    if (c, n) != (cluster, node) {
        return Err(StorageError::mismatch(format!(
            "{}: written by cluster {c:#x} node {n}, but this is cluster {cluster:#x} node {node}; \
             refusing to use another replica's data",
            path.display()
        ))
        .into());
    }
    Ok(())
}

/// The bytes of a `META` file.
pub(crate) fn encode_meta(cluster: u64, node: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(META_LEN);
    put_ident(&mut buf, &META_MAGIC, cluster, node);
    put_crc(&mut buf, 0);
    buf
}

/// Appends a segment header to `buf`.
pub(crate) fn encode_segment_header(
    buf: &mut Vec<u8>,
    cluster: u64,
    node: u64,
    seq: u64,
    kind: u32,
) {
    let start = buf.len();
    put_ident(buf, &SEGMENT_MAGIC, cluster, node);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&kind.to_le_bytes());
    put_crc(buf, start);
}

/// A validated segment header: (sequence number, kind).
pub(crate) fn segment_header_fields(bytes: &[u8]) -> (u64, u32) {
    (u64_at(bytes, IDENT_LEN), u32_at(bytes, IDENT_LEN + 8))
}

/// Appends a checkpoint file header for `payload` to `buf`.
pub(crate) fn encode_checkpoint_header(buf: &mut Vec<u8>, cluster: u64, node: u64, payload: &[u8]) {
    let start = buf.len();
    put_ident(buf, &CHECKPOINT_MAGIC, cluster, node);
    buf.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    put_crc(buf, start);
}

/// A validated checkpoint header: (payload length, payload CRC).
pub(crate) fn checkpoint_header_fields(bytes: &[u8]) -> (u64, u32) {
    (u64_at(bytes, IDENT_LEN), u32_at(bytes, IDENT_LEN + 8))
}

/// Decodes a record header: `Some((payload length, payload CRC))`, or `None` when its
/// checksum does not match.
pub(crate) fn decode_record_header(h: &[u8; RECORD_HEADER_LEN]) -> Option<(u32, u32)> {
    (crc32fast::hash(&h[..8]) == u32_at(h, 8)).then(|| (u32_at(h, 0), u32_at(h, 4)))
}

/// Builds framed records in a buffer, starting a new record (with the continuation tag)
/// whenever the next item would push the current one past the maximum size.
pub(crate) struct RecordWriter<'a> {
    buf: &'a mut Vec<u8>,
    max: usize,
    /// Where the current record's header starts, if a record is open.
    open: Option<usize>,
}

impl<'a> RecordWriter<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>, max_record_size: u32) -> Self {
        RecordWriter {
            buf,
            max: max_record_size as usize,
            open: None,
        }
    }

    /// Opens a record with `tag`, closing any open one.
    pub(crate) fn begin(&mut self, tag: u8) {
        self.finish();
        self.open = Some(self.buf.len());
        self.buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        self.buf.push(tag);
    }

    /// Appends one postcard-encoded item to the open record; when that makes the record
    /// too large, moves the item into a new record tagged `continuation`.
    pub(crate) fn item<T: Serialize + ?Sized>(
        &mut self,
        item: &T,
        continuation: u8,
    ) -> Result<(), StorageError> {
        let Some(start) = self.open else {
            return Err(StorageError::io("internal error: no open record"));
        };
        let before = self.buf.len();
        postcard::to_io(item, &mut *self.buf)
            .map_err(|e| StorageError::io_because("cannot encode a log record", e))?;
        let payload = self.buf.len() - start - RECORD_HEADER_LEN;
        if payload <= self.max {
            return Ok(());
        }
        let size = self.buf.len() - before;
        // Only the tag and this item: it cannot fit in any record.
        if before == start + RECORD_HEADER_LEN + 1 || size + 1 > self.max {
            return Err(StorageError::io(format!(
                "a log item of {size} bytes exceeds the maximum record size of {} bytes",
                self.max
            )));
        }
        let moved = self.buf.split_off(before);
        self.begin(continuation);
        self.buf.extend_from_slice(&moved);
        Ok(())
    }

    /// Closes the open record, if any, by filling in its header.
    pub(crate) fn finish(&mut self) {
        if let Some(start) = self.open.take() {
            let body = start + RECORD_HEADER_LEN;
            let len = (self.buf.len() - body) as u32;
            let crc = crc32fast::hash(&self.buf[body..]);
            let mut h = [0u8; RECORD_HEADER_LEN];
            h[..4].copy_from_slice(&len.to_le_bytes());
            h[4..8].copy_from_slice(&crc.to_le_bytes());
            let hcrc = crc32fast::hash(&h[..8]);
            h[8..].copy_from_slice(&hcrc.to_le_bytes());
            self.buf[start..body].copy_from_slice(&h);
        }
    }
}

impl Drop for RecordWriter<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("wal-1.log"), None);
        assert_eq!(parse_segment_name("wal-0000000000000000000x.log"), None);
        assert_eq!(parse_segment_name("checkpoint"), None);
    }

    #[test]
    fn zeroed_record_header_is_not_valid() {
        assert_eq!(decode_record_header(&[0; RECORD_HEADER_LEN]), None);
    }

    #[test]
    fn records_split_at_the_maximum_size() {
        let mut buf = Vec::new();
        {
            let mut w = RecordWriter::new(&mut buf, 1024);
            w.begin(TAG_OPS);
            for i in 0..1000u32 {
                w.item(&[i; 8], TAG_OPS).unwrap();
            }
        }
        let mut pos = 0;
        let mut records = 0;
        while pos < buf.len() {
            let h: [u8; RECORD_HEADER_LEN] = buf[pos..pos + RECORD_HEADER_LEN].try_into().unwrap();
            let (len, crc) = decode_record_header(&h).unwrap();
            assert!(len <= 1024);
            let body = &buf[pos + RECORD_HEADER_LEN..pos + RECORD_HEADER_LEN + len as usize];
            assert_eq!(crc32fast::hash(body), crc);
            assert_eq!(body[0], TAG_OPS);
            pos += RECORD_HEADER_LEN + len as usize;
            records += 1;
        }
        assert!(records > 1);
    }

    #[test]
    fn an_item_larger_than_a_record_is_refused() {
        let mut buf = Vec::new();
        let mut w = RecordWriter::new(&mut buf, 16);
        w.begin(TAG_OPS);
        assert!(w.item(&[7u8; 64][..], TAG_OPS).is_err());
    }
}
