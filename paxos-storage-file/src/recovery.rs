//! Startup recovery: reading `META`, the checkpoint and the log segments back.
//!
//! Recovery first works out what to do without changing anything ([`plan_log`]), so a
//! directory it refuses is left exactly as it was; only then does it delete and
//! truncate ([`LogPlan::apply`]).
//!
//! # Torn writes and damaged records
//!
//! An append is one `write` of one or more records followed by one `fdatasync`, and
//! `persist` returns (so the driver may send what vouches for it) only after the sync.
//! A crash can therefore interrupt only the **last write of the newest segment**, and
//! nothing in that write was acknowledged; every byte before it was synced and may have
//! been.
//!
//! **Assumption about the file system.** After a crash, synced data is as it was
//! written, and an interrupted append leaves a *prefix* of the bytes it wrote: the file
//! size never covers data that did not reach the disk. Ext4 in its default
//! `data=ordered` mode, XFS and btrfs order size updates after the data they cover. A
//! file system that lets the size run ahead shows the missing blocks as zeros (none
//! exposes stale bytes of other files), so a torn tail may also end in zero-filled
//! space. A device that acknowledges a flush and then loses the data is outside the
//! model (no log can tell that from a torn write).
//!
//! Under that assumption, the first record of the newest segment that does not check
//! out is classified as follows.
//!
//! | what is found at the record's offset                          | verdict |
//! |----------------------------------------------------------------|---------|
//! | fewer than 12 bytes (the header is incomplete)                 | torn    |
//! | header CRC valid, length running past the end of the file      | torn    |
//! | a zero header and nothing but zeros up to the end of the file  | torn    |
//! | a full header, not all zeros, failing its CRC                  | damaged |
//! | header valid, whole payload in the file, payload CRC failing   | damaged |
//!
//! - *Incomplete header, record running past the end*: a synced record is entirely in
//!   the file, so only an interrupted write leaves less of it. Bit rot cannot make a
//!   record look short: the length is covered by the header CRC, so a flipped length
//!   bit fails that CRC instead (one of the damaged rows).
//! - *Zeros to the end*: no record starts with zeros (the CRC of eight zero bytes is
//!   not zero, and every payload holds at least a tag byte), so these bytes were never
//!   written by the log: space allocated for a write whose data never arrived. Bit rot
//!   flips bits or makes a sector unreadable (an IO error here); it does not turn a
//!   record boundary and everything after it into zeros.
//! - *Damaged*: a prefix of a written record that contains the full header contains
//!   the header as written, whose CRC matches; a prefix that contains the whole payload
//!   contains the payload as written. So a complete record that fails a checksum was
//!   not torn by a crash: it was damaged after it was written, and it may have been
//!   acknowledged. It is refused with [`OpenError::DamagedRecord`] (file and offset),
//!   as damage anywhere else in the log is, and nothing is changed: the node must be
//!   recovered from its peers rather than forget a promise or an accepted value.
//!
//! Refusing costs availability, accepting costs safety, so whatever is not provably
//! torn is refused. On a file system whose size runs ahead of its data, a crash that
//! leaves zeros *inside* the last record is refused too: a false alarm, never a lost
//! acknowledged write.
//!
//! Segment headers follow the same rules: a newest segment whose header is incomplete,
//! or which holds nothing but zeros, was being created when the crash came (a rotation
//! or compaction before its first sync) and is deleted; so is a newest segment whose
//! base is incomplete (older segments are deleted only after a base is synced). A full
//! header that is not all zeros and fails its checks is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use paxos_core::{
    apply_op, Checkpoint, PersistOp, PersistentState, Slot, StorageError, StoredEntry,
};
use tracing::{debug, warn};

use crate::disk::Disk;
use crate::format::*;
#[cfg(test)]
use crate::storage::Broken;
use crate::{FileStorageOptions, OpenError, RecordDamage, RecoveryReport};

/// What recovery found in the log.
pub(crate) struct Recovered {
    /// The state replayed from the segments (without the checkpoint).
    pub(crate) state: PersistentState,
    /// The segments in use, oldest first; the last one is appended to.
    pub(crate) segments: Vec<u64>,
    /// The valid length of the last segment (after discarding a torn tail).
    pub(crate) last_len: u64,
    /// Where the last segment's records after its header and base start.
    pub(crate) last_start_len: u64,
}

/// The segment files in `dir`, oldest first, and whether a checkpoint file exists.
pub(crate) fn list_dir(dir: &Path) -> Result<(Vec<(u64, PathBuf)>, bool), StorageError> {
    let mut segments = Vec::new();
    let mut checkpoint = false;
    let entries = fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("cannot list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            debug!(dir = %dir.display(), "ignoring a file with a non-UTF-8 name");
            continue;
        };
        if let Some(seq) = parse_segment_name(name) {
            segments.push((seq, entry.path()));
        } else if name == CHECKPOINT_FILE {
            checkpoint = true;
        } else if name != META_FILE && name != LOCK_FILE {
            debug!(dir = %dir.display(), file = name, "ignoring an unknown file in the data directory");
        }
    }
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok((segments, checkpoint))
}

/// Reads and checks `META`; `Ok(false)` when it does not exist.
pub(crate) fn read_meta(path: &Path, cluster: u64, node: u64) -> Result<bool, OpenError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("cannot open", path, e).into()),
    };
    let mut bytes = Vec::with_capacity(META_LEN);
    // Read one byte more than expected to notice a file that is too long.
    (&mut f)
        .take(META_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("cannot read", path, e))?;
    if bytes.len() != META_LEN {
        return Err(corrupt(
            path,
            0,
            format_args!("META must be {META_LEN} bytes, found {}", bytes.len()),
        )
        .into());
    }
    check_header(path, &bytes, &META_MAGIC, "META file", cluster, node)?;
    Ok(true)
}

/// Reads and checks the checkpoint file, if there is one.
pub(crate) fn read_checkpoint(
    path: &Path,
    cluster: u64,
    node: u64,
    max_size: u64,
) -> Result<Option<Checkpoint>, OpenError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open", path, e).into()),
    };
    let len = f
        .metadata()
        .map_err(|e| io_err("cannot stat", path, e))?
        .len();
    if len < CHECKPOINT_HEADER_LEN as u64 {
        return Err(corrupt(
            path,
            0,
            format_args!("checkpoint file is truncated ({len} bytes)"),
        )
        .into());
    }
    let mut header = [0u8; CHECKPOINT_HEADER_LEN];
    f.read_exact(&mut header)
        .map_err(|e| io_err("cannot read", path, e))?;
    check_header(
        path,
        &header,
        &CHECKPOINT_MAGIC,
        "checkpoint file",
        cluster,
        node,
    )?;
    let (payload_len, payload_crc) = checkpoint_header_fields(&header);
    if payload_len > max_size {
        return Err(corrupt(
            path,
            0,
            format_args!(
                "checkpoint of {payload_len} bytes exceeds the maximum checkpoint size of {max_size} bytes"
            ),
        )
        .into());
    }
    let at = CHECKPOINT_HEADER_LEN as u64;
    if payload_len != len - at {
        return Err(corrupt(
            path,
            at,
            format_args!(
                "header announces {payload_len} bytes of checkpoint but the file holds {}",
                len - at
            ),
        )
        .into());
    }
    let Ok(payload_len) = usize::try_from(payload_len) else {
        return Err(corrupt(path, at, "checkpoint does not fit in memory").into());
    };
    let mut payload = vec![0u8; payload_len];
    f.read_exact(&mut payload)
        .map_err(|e| io_err("cannot read", path, e))?;
    if crc32fast::hash(&payload) != payload_crc {
        return Err(corrupt(path, at, "checkpoint data does not match its checksum").into());
    }
    let checkpoint: Checkpoint = postcard::from_bytes(&payload)
        .map_err(|e| corrupt_because(path, at, "cannot decode the checkpoint", e))?;
    if !checkpoint.verify() {
        return Err(corrupt(
            path,
            at,
            format_args!(
                "checkpoint at slot {} does not match its digest (Checkpoint::verify failed)",
                checkpoint.slot
            ),
        )
        .into());
    }
    Ok(Some(checkpoint))
}

enum Header {
    /// Valid: the segment's kind.
    Kind(u32),
    /// Incomplete or never written: the tail of an interrupted write.
    Torn,
}

fn read_segment_header(
    path: &Path,
    seq: u64,
    may_be_torn: bool,
    cluster: u64,
    node: u64,
) -> Result<Header, OpenError> {
    let mut f = File::open(path).map_err(|e| io_err("cannot open", path, e))?;
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_LEN);
    (&mut f)
        .take(SEGMENT_HEADER_LEN as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err("cannot read", path, e))?;
    if may_be_torn
        && (bytes.len() < SEGMENT_HEADER_LEN
            || (bytes.iter().all(|b| *b == 0) && rest_is_zero(&mut f, path)?))
    {
        return Ok(Header::Torn);
    }
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(corrupt(
            path,
            0,
            format_args!("segment header is truncated ({} bytes)", bytes.len()),
        )
        .into());
    }
    check_header(path, &bytes, &SEGMENT_MAGIC, "log segment", cluster, node)?;
    let (header_seq, kind) = segment_header_fields(&bytes);
    if header_seq != seq {
        return Err(corrupt(
            path,
            0,
            format_args!(
                "segment header says sequence number {header_seq}, the file name says {seq}"
            ),
        )
        .into());
    }
    if kind != KIND_BASE && kind != KIND_CONTINUATION {
        return Err(corrupt(path, 0, format_args!("unknown segment kind {kind}")).into());
    }
    Ok(Header::Kind(kind))
}

/// Where a segment's replay is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A base segment before its first record.
    ExpectBase,
    /// Inside the base.
    InBase,
    /// Operations.
    Ops,
}

/// What scanning one segment found.
struct Scan {
    /// The end of the last valid record.
    valid_len: u64,
    /// Bytes after `valid_len`: the torn tail of an interrupted write.
    torn: u64,
    /// Where the records after the base start; `None` when the base is incomplete.
    base_end: Option<u64>,
    /// Records replayed.
    records: u64,
}

/// What is wrong inside a record whose checksum matched.
struct BadRecord {
    what: String,
    cause: Option<postcard::Error>,
}

impl BadRecord {
    fn undecodable(what: &str) -> impl FnOnce(postcard::Error) -> BadRecord + '_ {
        move |e| BadRecord {
            what: what.to_owned(),
            cause: Some(e),
        }
    }

    /// The corruption error for the record at `offset` in `path`.
    fn at(self, path: &Path, offset: u64) -> StorageError {
        match self.cause {
            Some(cause) => corrupt_because(path, offset, self.what, cause),
            None => corrupt(path, offset, self.what),
        }
    }
}

fn decode_entries(mut rest: &[u8], state: &mut PersistentState) -> Result<(), BadRecord> {
    while !rest.is_empty() {
        let ((slot, entry), r): ((Slot, StoredEntry), _) = postcard::take_from_bytes(rest)
            .map_err(BadRecord::undecodable("cannot decode a base entry"))?;
        state.log.insert(slot, entry);
        rest = r;
    }
    Ok(())
}

fn apply_record(
    payload: &[u8],
    phase: &mut Phase,
    state: &mut PersistentState,
) -> Result<(), BadRecord> {
    let Some((&tag, mut rest)) = payload.split_first() else {
        return Err(BadRecord {
            what: "empty record".into(),
            cause: None,
        });
    };
    match (*phase, tag) {
        (Phase::ExpectBase, TAG_BASE_BEGIN) => {
            let (header, r): (BaseHeader, _) = postcard::take_from_bytes(rest)
                .map_err(BadRecord::undecodable("cannot decode the base header"))?;
            let BaseHeader {
                status,
                incarnation,
                peer_incarnations,
                promised,
                commit_point,
            } = header;
            *state = PersistentState {
                status,
                incarnation,
                peer_incarnations,
                promised,
                commit_point,
                log: Default::default(),
                checkpoint: None,
            };
            decode_entries(r, state)?;
            *phase = Phase::InBase;
        }
        (Phase::InBase, TAG_BASE_MORE) => decode_entries(rest, state)?,
        (Phase::InBase, TAG_BASE_END) if rest.is_empty() => *phase = Phase::Ops,
        (Phase::Ops, TAG_OPS) => {
            while !rest.is_empty() {
                let (op, r): (PersistOp, _) = postcard::take_from_bytes(rest)
                    .map_err(BadRecord::undecodable("cannot decode an operation"))?;
                apply_op(state, &op);
                rest = r;
            }
        }
        (_, tag) => {
            let place = match phase {
                Phase::ExpectBase => "at the start of a base segment",
                Phase::InBase => "inside a base",
                Phase::Ops => "among operations",
            };
            return Err(BadRecord {
                what: format!("unexpected record (tag {tag}) {place}"),
                cause: None,
            });
        }
    }
    Ok(())
}

/// True when every remaining byte of `r` is zero: space a file system allocated for a
/// write that never reached the disk.
fn rest_is_zero(r: &mut impl Read, path: &Path) -> Result<bool, StorageError> {
    let mut chunk = [0u8; 8192];
    loop {
        let n = r
            .read(&mut chunk)
            .map_err(|e| io_err("cannot read", path, e))?;
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// The result of a scan that stopped at a torn write at `pos`.
fn torn(
    path: &Path,
    file_len: u64,
    pos: u64,
    why: &str,
    base_end: Option<u64>,
    records: u64,
) -> Scan {
    warn!(
        file = %path.display(),
        offset = pos,
        discarded = file_len - pos,
        "discarding the torn tail of an interrupted write: {why}"
    );
    Scan {
        valid_len: pos,
        torn: file_len - pos,
        base_end,
        records,
    }
}

/// A complete record that fails a checksum: it may have been acknowledged.
fn damaged(path: &Path, offset: u64, damage: RecordDamage) -> OpenError {
    OpenError::DamagedRecord {
        file: path.to_path_buf(),
        offset,
        damage,
    }
}

/// Replays the records of one segment into `state`. Only the last segment may end in a
/// torn write (`may_be_torn`); anywhere else, an incomplete record is corruption. A
/// complete record that fails a checksum is refused everywhere (see the module
/// documentation).
fn scan_segment(
    path: &Path,
    kind: u32,
    may_be_torn: bool,
    options: &FileStorageOptions,
    state: &mut PersistentState,
) -> Result<Scan, OpenError> {
    let max_record = options.max_record_size;
    let mut f = File::open(path).map_err(|e| io_err("cannot open", path, e))?;
    let file_len = f
        .metadata()
        .map_err(|e| io_err("cannot stat", path, e))?
        .len();
    f.seek(SeekFrom::Start(SEGMENT_HEADER_LEN as u64))
        .map_err(|e| io_err("cannot seek in", path, e))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut phase = if kind == KIND_BASE {
        Phase::ExpectBase
    } else {
        Phase::Ops
    };
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut base_end = (kind != KIND_BASE).then_some(pos);
    let mut records = 0;
    let mut payload = Vec::new();
    loop {
        if pos >= file_len {
            return Ok(Scan {
                valid_len: pos,
                torn: 0,
                base_end,
                records,
            });
        }
        let remaining = file_len - pos;
        // Torn: the header itself is incomplete.
        if remaining < RECORD_HEADER_LEN as u64 {
            if may_be_torn {
                return Ok(torn(
                    path,
                    file_len,
                    pos,
                    "incomplete record header",
                    base_end,
                    records,
                ));
            }
            return Err(corrupt(path, pos, "truncated record header").into());
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        r.read_exact(&mut header)
            .map_err(|e| io_err("cannot read", path, e))?;
        let Some((len, crc)) = decode_record_header(&header) else {
            // Torn: zeros from a record boundary to the end of the file. No record
            // starts with zeros (a zero header fails its own checksum).
            if may_be_torn && header.iter().all(|b| *b == 0) && rest_is_zero(&mut r, path)? {
                return Ok(torn(
                    path,
                    file_len,
                    pos,
                    "zero-filled space after the last record",
                    base_end,
                    records,
                ));
            }
            // A full header that is neither ours nor zeros: damage, wherever it is.
            return Err(damaged(path, pos, RecordDamage::HeaderChecksum));
        };
        if len > max_record {
            return Err(corrupt(
                path,
                pos,
                format_args!(
                    "record of {len} bytes exceeds the maximum record size of {max_record} bytes"
                ),
            )
            .into());
        }
        let end = pos + RECORD_HEADER_LEN as u64 + u64::from(len);
        // Torn: the header is intact and says the record runs past the end of the file.
        if end > file_len {
            if may_be_torn {
                return Ok(torn(
                    path,
                    file_len,
                    pos,
                    "incomplete record",
                    base_end,
                    records,
                ));
            }
            return Err(corrupt(path, pos, "record runs past the end of the file").into());
        }
        // `len` is at most `max_record` and within the file: a bounded allocation.
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)
            .map_err(|e| io_err("cannot read", path, e))?;
        if crc32fast::hash(&payload) != crc {
            // Deliberately broken (tests only): the old rule, which cut it as torn.
            #[cfg(test)]
            if options.broken == Some(Broken::CutDamagedTail) && may_be_torn && end == file_len {
                return Ok(torn(
                    path,
                    file_len,
                    pos,
                    "the last record's checksum does not match (broken variant)",
                    base_end,
                    records,
                ));
            }
            // Complete, so possibly acknowledged: damage, even as the very last record.
            return Err(damaged(path, pos, RecordDamage::PayloadChecksum));
        }
        apply_record(&payload, &mut phase, state).map_err(|e| e.at(path, pos))?;
        records += 1;
        pos = end;
        if phase == Phase::Ops && base_end.is_none() {
            base_end = Some(pos);
        }
    }
}

/// What recovery will do to the log, worked out without changing anything: a refused
/// directory is left as it was.
pub(crate) struct LogPlan {
    /// The state and segments after the plan is carried out.
    pub(crate) recovered: Recovered,
    /// The newest segment, which holds only an interrupted write (a header or base that
    /// never completely reached the disk): to be deleted.
    discard: Option<PathBuf>,
    /// The last segment's torn tail: `(valid length, bytes cut)`.
    truncate: Option<(u64, u64)>,
    /// Segments superseded by a newer base (a compaction interrupted before its
    /// cleanup): to be deleted once the newest segment is durable.
    superseded: Vec<PathBuf>,
    segments_replayed: usize,
    records_replayed: u64,
}

/// Works out how to recover the log in `dir` without changing anything: `Ok(None)`
/// when there are no segments.
///
/// The replay starts at the newest segment that begins with a complete base; older
/// segments were superseded by it. The last segment may end in (or consist entirely
/// of) an interrupted write, which is to be discarded; every other defect is refused.
pub(crate) fn plan_log(
    mut segments: Vec<(u64, PathBuf)>,
    cluster: u64,
    node: u64,
    options: &FileStorageOptions,
) -> Result<Option<LogPlan>, OpenError> {
    // Only the newest segment can hold an interrupted write, and only once: after it is
    // discarded, the one before it was complete and synced before it was created.
    let mut may_be_torn = true;
    let mut discard = None;
    'search: loop {
        let Some(last) = segments.len().checked_sub(1) else {
            return Ok(None);
        };
        let mut start = None;
        for i in (0..segments.len()).rev() {
            let (seq, path) = &segments[i];
            let torn_ok = may_be_torn && i == last;
            match read_segment_header(path, *seq, torn_ok, cluster, node)? {
                Header::Torn => {
                    warn!(file = %path.display(), "discarding a segment whose header was never completely written");
                    discard = segments.pop().map(|(_, p)| p);
                    may_be_torn = false;
                    continue 'search;
                }
                Header::Kind(KIND_BASE) => {
                    start = Some(i);
                    break;
                }
                Header::Kind(_) => {}
            }
        }
        let Some(start) = start else {
            return Err(corrupt(
                &segments[0].1,
                0,
                "no log segment begins with a base: the beginning of the log is missing",
            )
            .into());
        };
        for pair in segments[start..].windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                return Err(StorageError::corrupt(format!(
                    "{}: log segment {} is missing before it",
                    pair[1].1.display(),
                    segment_name(pair[0].0 + 1)
                ))
                .into());
            }
        }
        let mut state = PersistentState::default();
        let mut truncate = None;
        let mut last_len = 0;
        let mut last_start_len = 0;
        let mut records = 0;
        for i in start..=last {
            let (_, path) = &segments[i];
            let kind = if i == start {
                KIND_BASE
            } else {
                KIND_CONTINUATION
            };
            let torn_ok = may_be_torn && i == last;
            let scan = scan_segment(path, kind, torn_ok, options, &mut state)?;
            records += scan.records;
            let Some(base_end) = scan.base_end else {
                if torn_ok {
                    warn!(file = %path.display(), "discarding a segment whose base was never completely written");
                    discard = segments.pop().map(|(_, p)| p);
                    may_be_torn = false;
                    continue 'search;
                }
                return Err(corrupt(
                    path,
                    scan.valid_len,
                    "the segment ends before its base is complete",
                )
                .into());
            };
            if i == last {
                if scan.torn > 0 {
                    truncate = Some((scan.valid_len, scan.torn));
                }
                last_len = scan.valid_len;
                last_start_len = if i == start {
                    base_end
                } else {
                    SEGMENT_HEADER_LEN as u64
                };
            }
        }
        let superseded = segments[..start].iter().map(|(_, p)| p.clone()).collect();
        return Ok(Some(LogPlan {
            recovered: Recovered {
                state,
                segments: segments[start..].iter().map(|(seq, _)| *seq).collect(),
                last_len,
                last_start_len,
            },
            discard,
            truncate,
            superseded,
            segments_replayed: last + 1 - start,
            records_replayed: records,
        }));
    }
}

impl LogPlan {
    /// Carries the plan out: deletes a discarded segment, cuts the torn tail, makes the
    /// last segment and the directory durable (what was read may have been only in the
    /// page cache, left by a process that crashed before its sync), then deletes the
    /// superseded segments. Returns the recovered log and the last segment, open for
    /// appending at its end.
    pub(crate) fn apply(
        self,
        disk: &mut Disk,
        report: &mut RecoveryReport,
    ) -> Result<(Recovered, File), StorageError> {
        if let Some(path) = &self.discard {
            disk.remove(path)?;
            report.segments_discarded += 1;
        }
        let seq = self.recovered.segments.last().copied().unwrap_or(1);
        let path = disk.path(&segment_name(seq));
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        if let Some((valid_len, torn)) = self.truncate {
            f.set_len(valid_len)
                .map_err(|e| io_err("cannot truncate", &path, e))?;
            report.torn_bytes_discarded += torn;
        }
        disk.sync_file(&f, &path)?;
        f.seek(SeekFrom::Start(self.recovered.last_len))
            .map_err(|e| io_err("cannot seek in", &path, e))?;
        for path in &self.superseded {
            debug!(file = %path.display(), "removing a segment superseded by a newer base");
            disk.remove(path)?;
            report.segments_removed += 1;
        }
        disk.sync_dir()?;
        report.segments_replayed = self.segments_replayed;
        report.records_replayed = self.records_replayed;
        Ok((self.recovered, f))
    }
}
