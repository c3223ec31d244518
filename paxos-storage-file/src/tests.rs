//! Tests of the write-ahead log: round trips, torn writes, corruption, identity checks,
//! rotation, compaction, checkpoints, crash images and a model-based property test.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::{
    AcceptorStatus, Ballot, Checkpoint, MemStorage, PersistOp, PersistentState, Request, Storage,
    StorageError, Value,
};
use proptest::prelude::*;

use crate::format::*;
use crate::{FileStorage, FileStorageOptions, OpenError, RecordDamage, MIN_RECORD_SIZE};

const CLUSTER: u64 = 0xC1;
const NODE: u64 = 3;

fn opts(segment_size: u64) -> FileStorageOptions {
    FileStorageOptions {
        segment_size,
        ..FileStorageOptions::default()
    }
}

fn nosync(segment_size: u64) -> FileStorageOptions {
    FileStorageOptions {
        segment_size,
        sync: false,
        ..FileStorageOptions::default()
    }
}

fn value(n: u64, len: usize) -> Value {
    Value::Request(Request {
        client: n,
        seq: n + 1,
        payload: Bytes::from(vec![n as u8; len]),
    })
}

fn checkpoint(slot: u64, data: &[u8]) -> Checkpoint {
    Checkpoint {
        slot,
        digest: crc32fast::hash(data),
        data: Bytes::copy_from_slice(data),
    }
}

fn accept(slot: u64, round: u64) -> PersistOp {
    PersistOp::Accept {
        slot,
        ballot: Ballot::new(round, 1),
        value: value(slot, 10),
    }
}

fn learn(slot: u64) -> PersistOp {
    PersistOp::Learn {
        slot,
        value: value(slot + 100, 5),
    }
}

/// A few batches touching every kind of operation except checkpoints and compaction.
fn sample_batches() -> Vec<Vec<PersistOp>> {
    vec![
        vec![
            PersistOp::Promise(Ballot::new(1, 1)),
            accept(0, 1),
            accept(1, 1),
        ],
        vec![learn(0), PersistOp::CommitPoint(1), accept(2, 1)],
        vec![
            PersistOp::Promise(Ballot::new(2, 2)),
            accept(1, 2),
            learn(1),
            PersistOp::CommitPoint(2),
        ],
        vec![
            accept(3, 2),
            accept(4, 2),
            PersistOp::Promise(Ballot::new(1, 9)),
        ],
    ]
}

fn mem_after(batches: &[Vec<PersistOp>]) -> PersistentState {
    let mut mem = MemStorage::new();
    for b in batches {
        mem.persist(b).unwrap();
    }
    mem.state().clone()
}

fn open(dir: &Path, options: &FileStorageOptions) -> FileStorage {
    FileStorage::open_with(dir, CLUSTER, NODE, options.clone()).unwrap()
}

fn load(dir: &Path, options: &FileStorageOptions) -> PersistentState {
    open(dir, options).load().unwrap()
}

fn open_err(dir: &Path) -> OpenError {
    FileStorage::open_with(dir, CLUSTER, NODE, nosync(1 << 20)).unwrap_err()
}

/// The [`StorageError`] of a refused open (neither locked nor a damaged record).
fn open_storage_err(dir: &Path) -> StorageError {
    match open_err(dir) {
        OpenError::Storage(e) => e,
        e => panic!("expected a StorageError, got {e:?}"),
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| parse_segment_name(p.file_name().unwrap().to_str().unwrap()).is_some())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(to).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

/// `(offset, payload length, tag)` of each record of a segment.
fn records(path: &Path) -> Vec<(u64, u32, u8)> {
    let bytes = fs::read(path).unwrap();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let h: [u8; RECORD_HEADER_LEN] = bytes[pos..pos + RECORD_HEADER_LEN].try_into().unwrap();
        let (len, _) = decode_record_header(&h).unwrap();
        out.push((pos as u64, len, bytes[pos + RECORD_HEADER_LEN]));
        pos += RECORD_HEADER_LEN + len as usize;
    }
    out
}

fn assert_corrupt(e: OpenError, file: &Path, offset: u64) {
    let OpenError::Storage(StorageError::Corrupt { what: msg, .. }) = &e else {
        panic!("expected Corrupt, got {e:?}");
    };
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "{msg:?} does not name {name}");
    assert!(
        msg.contains(&format!("offset {offset}")),
        "{msg:?} does not name offset {offset}"
    );
}

/// A refusal of a complete, damaged record at `offset` of `file`, whose message says it
/// may have been acknowledged.
fn assert_damaged(e: OpenError, file: &Path, offset: u64) -> RecordDamage {
    damaged_record(e, file, offset).unwrap_or_else(|m| panic!("{m}"))
}

/// [`assert_damaged`] as a check: `Err` says how `e` differs from the refusal of a
/// damaged record at `offset` of `file`.
/// The [`OpenError`] a [`StorageError`] converted from one keeps as its cause.
fn open_cause(e: &StorageError) -> Option<&OpenError> {
    e.cause()?.downcast_ref::<OpenError>()
}

fn damaged_record(e: OpenError, file: &Path, offset: u64) -> Result<RecordDamage, String> {
    let OpenError::DamagedRecord {
        file: f,
        offset: o,
        damage,
    } = &e
    else {
        return Err(format!("expected DamagedRecord, got {e:?}"));
    };
    if (f.as_path(), *o) != (file, offset) {
        return Err(format!(
            "{e}: expected file {} offset {offset}",
            file.display()
        ));
    }
    let msg = e.to_string();
    if !(msg.contains(&file.display().to_string())
        && msg.contains(&format!("offset {offset}"))
        && msg.contains("acknowledged")
        && msg.contains("peers"))
    {
        return Err(format!("incomplete message: {msg}"));
    }
    let damage = *damage;
    // Callers that only know StorageError see it as corruption, caused by `e`.
    match StorageError::from(e.clone()) {
        se @ StorageError::Corrupt { .. }
            if open_cause(&se) == Some(&e) && se.to_string().contains(&msg) =>
        {
            Ok(damage)
        }
        other => Err(format!("as a StorageError: {other:?}")),
    }
}

/// Every file of a directory with its contents.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_equals_mem_storage() {
    let dir = tempfile::tempdir().unwrap();
    let batches = sample_batches();
    let mut fs_ = open(dir.path(), &opts(1 << 20));
    assert!(fs_.recovery().created);
    for b in &batches {
        fs_.persist(b).unwrap();
    }
    let expected = mem_after(&batches);
    assert_eq!(fs_.load().unwrap(), expected);
    drop(fs_);
    let mut again = open(dir.path(), &opts(1 << 20));
    assert!(!again.recovery().created);
    assert_eq!(again.recovery().records_replayed, 2 + batches.len() as u64);
    assert_eq!(again.load().unwrap(), expected);
    // Empty batches and reopening an untouched store change nothing.
    again.persist(&[]).unwrap();
    drop(again);
    assert_eq!(load(dir.path(), &opts(1 << 20)), expected);
}

#[test]
fn one_persist_is_one_sync_however_many_ops() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    for n in [1u64, 10, 100] {
        let before = s.stats();
        let ops: Vec<PersistOp> = (0..n).map(|i| accept(i, n)).collect();
        s.persist(&ops).unwrap();
        let after = s.stats();
        assert_eq!(after.syncs - before.syncs, 1, "batch of {n}");
        assert_eq!(after.persists - before.persists, 1);
        assert_eq!(after.ops - before.ops, n);
        assert!(after.bytes_written > before.bytes_written);
    }
    // Without syncing, nothing is synced.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &nosync(1 << 20));
    s.persist(&[accept(0, 1)]).unwrap();
    assert_eq!(s.stats().syncs, 0);
}

#[test]
fn torn_tail_at_every_offset_is_discarded_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(1 << 20);
    let batches = sample_batches();
    let (kept, last) = batches.split_at(batches.len() - 1);
    let mut s = open(dir.path(), &o);
    for b in kept {
        s.persist(b).unwrap();
    }
    let seg = s.segment_files().pop().unwrap();
    let before = fs::metadata(&seg).unwrap().len();
    s.persist(&last[0]).unwrap();
    drop(s);
    let after = fs::metadata(&seg).unwrap().len();
    assert!(after > before + RECORD_HEADER_LEN as u64);

    let expected = mem_after(kept);
    let more = vec![accept(7, 5), PersistOp::CommitPoint(3)];
    let mut expected_more = kept.to_vec();
    expected_more.push(more.clone());
    let expected_more = mem_after(&expected_more);

    let work = tempfile::tempdir().unwrap();
    let nosync = nosync(1 << 20);
    for cut in before..after {
        copy_dir(dir.path(), work.path());
        truncate(&work.path().join(seg.file_name().unwrap()), cut);
        let mut s = open(work.path(), &nosync);
        assert_eq!(s.load().unwrap(), expected, "cut at {cut}");
        assert_eq!(s.recovery().torn_bytes_discarded, cut - before);
        s.persist(&more).unwrap();
        drop(s);
        let mut s = open(work.path(), &nosync);
        assert_eq!(s.recovery().torn_bytes_discarded, 0);
        assert_eq!(
            s.load().unwrap(),
            expected_more,
            "cut at {cut}, after appending"
        );
    }
}

#[test]
fn zero_filled_tail_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let batches = sample_batches();
    let mut s = open(dir.path(), &opts(1 << 20));
    for b in &batches {
        s.persist(b).unwrap();
    }
    let seg = s.segment_files().pop().unwrap();
    drop(s);
    let len = fs::metadata(&seg).unwrap().len();
    truncate(&seg, len + 300);
    let mut s = open(dir.path(), &nosync(1 << 20));
    assert_eq!(s.load().unwrap(), mem_after(&batches));
    assert_eq!(s.recovery().torn_bytes_discarded, 300);
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
}

#[test]
fn flipped_bit_before_the_tail_is_corruption_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    for b in sample_batches() {
        s.persist(&b).unwrap();
    }
    let seg = s.segment_files().pop().unwrap();
    drop(s);
    let recs = records(&seg);
    let ops: Vec<_> = recs.iter().filter(|r| r.2 == TAG_OPS).collect();
    assert_eq!(ops.len(), 4);
    let work = tempfile::tempdir().unwrap();
    let work_seg = work.path().join(seg.file_name().unwrap());

    // In a payload, in the length, in a header checksum, in the base.
    let (first, second) = (ops[0].0, ops[1].0);
    for (offset, bit, record) in [
        (first + RECORD_HEADER_LEN as u64 + 3, 2, first),
        (second, 0, second),
        (second + 3, 7, second),
        (second + 9, 4, second),
        (recs[0].0 + RECORD_HEADER_LEN as u64 + 1, 1, recs[0].0),
    ] {
        copy_dir(dir.path(), work.path());
        flip_bit(&work_seg, offset, bit);
        let damage = assert_damaged(open_err(work.path()), &work_seg, record);
        let expected = if offset < record + RECORD_HEADER_LEN as u64 {
            RecordDamage::HeaderChecksum
        } else {
            RecordDamage::PayloadChecksum
        };
        assert_eq!(damage, expected);
    }

    // A damaged segment header is corruption too.
    copy_dir(dir.path(), work.path());
    flip_bit(&work_seg, 20, 0);
    assert_corrupt(open_err(work.path()), &work_seg, 0);

    // Damage to the very last record is refused too: it is complete, so it was synced
    // and may have been acknowledged.
    copy_dir(dir.path(), work.path());
    let last = recs.last().unwrap();
    flip_bit(&work_seg, last.0 + RECORD_HEADER_LEN as u64 + 2, 3);
    let before = snapshot(work.path());
    assert_damaged(open_err(work.path()), &work_seg, last.0);
    assert_eq!(snapshot(work.path()), before);
}

#[test]
fn another_cluster_or_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    s.persist(&[accept(0, 1)]).unwrap();
    drop(s);
    for (cluster, node) in [(CLUSTER + 1, NODE), (CLUSTER, NODE + 1)] {
        let e = FileStorage::open(dir.path(), cluster, node).unwrap_err();
        let OpenError::Storage(StorageError::Mismatch { what: msg, .. }) = &e else {
            panic!("expected Mismatch, got {e:?}");
        };
        assert!(msg.contains("META") && msg.contains("node"), "{msg}");
    }
    // A segment of another node's directory dropped into this one is refused as well.
    let other = tempfile::tempdir().unwrap();
    let mut o = FileStorage::open(other.path(), CLUSTER, NODE + 1).unwrap();
    o.persist(&[accept(0, 1)]).unwrap();
    let foreign = o.segment_files().pop().unwrap();
    drop(o);
    let seg = segments(dir.path()).pop().unwrap();
    fs::copy(&foreign, &seg).unwrap();
    assert!(
        matches!(open_storage_err(dir.path()), StorageError::Mismatch { what: m, .. } if m.contains(".log"))
    );
}

#[test]
fn an_io_failure_keeps_the_io_error_as_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    fs::write(&file, b"").unwrap();
    let e = open_storage_err(&file.join("data"));
    let StorageError::Io { what, .. } = &e else {
        panic!("expected Io, got {e:?}");
    };
    assert!(what.contains("plain"), "{what}");
    let cause = std::error::Error::source(&e).expect("a cause");
    let io = cause
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert!(e.to_string().ends_with(&format!(": {io}")), "{e}");
}

#[test]
fn missing_meta_next_to_data_and_missing_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(300));
    for i in 0..40 {
        s.persist(&[accept(i, 1)]).unwrap();
    }
    drop(s);
    let segs = segments(dir.path());
    assert!(segs.len() > 3);

    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    fs::remove_file(work.path().join(META_FILE)).unwrap();
    assert!(
        matches!(open_storage_err(work.path()), StorageError::Corrupt { what: m, .. } if m.contains("META"))
    );

    copy_dir(dir.path(), work.path());
    fs::remove_file(work.path().join(segs[1].file_name().unwrap())).unwrap();
    assert!(
        matches!(open_storage_err(work.path()), StorageError::Corrupt { what: m, .. } if m.contains("missing"))
    );

    copy_dir(dir.path(), work.path());
    fs::remove_file(work.path().join(segs[0].file_name().unwrap())).unwrap();
    assert!(
        matches!(open_storage_err(work.path()), StorageError::Corrupt { what: m, .. } if m.contains("base"))
    );
}

#[test]
fn segments_rotate_by_size_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(512);
    let mut s = open(dir.path(), &o);
    let mut batches = Vec::new();
    for i in 0..200u64 {
        let b = vec![
            accept(i, 1 + i / 50),
            learn(i / 2),
            PersistOp::CommitPoint(i / 3),
        ];
        s.persist(&b).unwrap();
        batches.push(b);
    }
    let n = segments(dir.path()).len();
    assert!(n > 10, "only {n} segments");
    assert_eq!(s.stats().segments_created as usize, n);
    for seg in segments(dir.path()) {
        // Each segment holds at most one write past the limit.
        assert!(fs::metadata(&seg).unwrap().len() < 512 + 200);
    }
    drop(s);
    let mut s = open(dir.path(), &o);
    assert_eq!(s.recovery().segments_replayed, n);
    assert_eq!(s.load().unwrap(), mem_after(&batches));
}

#[test]
fn a_batch_larger_than_a_record_is_split_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let o = FileStorageOptions {
        max_record_size: 4096,
        ..opts(1 << 20)
    };
    let mut s = open(dir.path(), &o);
    let big: Vec<PersistOp> = (0..100)
        .map(|i| PersistOp::Accept {
            slot: i,
            ballot: Ballot::new(1, 1),
            value: value(i, 200),
        })
        .collect();
    let before = s.stats().syncs;
    s.persist(&big).unwrap();
    assert_eq!(s.stats().syncs - before, 1);
    let seg = s.segment_files().pop().unwrap();
    drop(s);
    let ops = records(&seg).iter().filter(|r| r.2 == TAG_OPS).count();
    assert!(ops > 1);
    assert_eq!(load(dir.path(), &o), mem_after(std::slice::from_ref(&big)));

    // A single operation larger than a record is refused, and the storage stops.
    let mut s = open(dir.path(), &o);
    let huge = PersistOp::Learn {
        slot: 1,
        value: value(1, 5000),
    };
    let failure = s.persist(&[huge]).unwrap_err();
    assert!(matches!(failure, StorageError::Io { .. }), "{failure:?}");
    // Every later call is refused, naming the failure as its cause.
    for later in [
        s.persist(&[accept(1, 1)]).unwrap_err(),
        s.load().unwrap_err(),
    ] {
        let cause = later.cause().and_then(|c| c.downcast_ref::<StorageError>());
        assert_eq!(cause, Some(&failure), "{later:?}");
        assert!(later.to_string().contains("reopen"), "{later}");
    }
    drop(s);
    assert_eq!(load(dir.path(), &o), mem_after(std::slice::from_ref(&big)));

    // Reading a record longer than the configured maximum is refused, not allocated.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    s.persist(&[PersistOp::Learn {
        slot: 1,
        value: value(1, 5000),
    }])
    .unwrap();
    s.persist(&[accept(2, 1)]).unwrap();
    let seg = s.segment_files().pop().unwrap();
    drop(s);
    let big_at = records(&seg).iter().find(|r| r.1 > 4096).unwrap().0;
    let e = FileStorage::open_with(dir.path(), CLUSTER, NODE, o).unwrap_err();
    assert_corrupt(e, &seg, big_at);
}

#[test]
fn compaction_removes_old_segments_and_keeps_the_state() {
    // The synchronous path (the background one: `a_compaction_is_written_in_the_background`).
    let dir = tempfile::tempdir().unwrap();
    let o = FileStorageOptions {
        background_compaction: false,
        ..opts(400)
    };
    let mut s = open(dir.path(), &o);
    let mut batches = Vec::new();
    for i in 0..60u64 {
        let b = vec![accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)];
        s.persist(&b).unwrap();
        batches.push(b);
    }
    let old = segments(dir.path());
    assert!(old.len() > 3);
    let cp = vec![
        PersistOp::Checkpoint(checkpoint(50, b"state at 50")),
        PersistOp::Compact(50),
    ];
    let before = s.stats();
    s.persist(&cp).unwrap();
    batches.push(cp);
    let after = s.stats();
    assert_eq!(after.compactions - before.compactions, 1);
    assert_eq!(after.checkpoints_written - before.checkpoints_written, 1);
    // Checkpoint file + directory, base segment + directory.
    assert_eq!(after.syncs - before.syncs, 4);
    let now = segments(dir.path());
    assert_eq!(now.len(), 1);
    assert!(!old.contains(&now[0]));
    let expected = mem_after(&batches);
    assert_eq!(expected.log.len(), 10);
    assert_eq!(s.load().unwrap(), expected);

    // Appending after the compaction, and compacting again, keeps working.
    let more = vec![accept(60, 2), PersistOp::Compact(55)];
    s.persist(&more).unwrap();
    batches.push(more);
    drop(s);
    let mut s = open(dir.path(), &o);
    assert_eq!(s.recovery().segments_replayed, 1);
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(s.load().unwrap(), mem_after(&batches));

    // A compaction that drops nothing is an ordinary append.
    let before = s.stats();
    s.persist(&[PersistOp::Compact(10)]).unwrap();
    assert_eq!(s.stats().compactions, before.compactions);
    assert_eq!(s.stats().syncs - before.syncs, 1);
}

#[test]
fn checkpoint_file_is_replaced_atomically_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(1 << 20);
    let mut s = open(dir.path(), &o);
    let batches = vec![
        vec![
            accept(0, 1),
            learn(0),
            PersistOp::Checkpoint(checkpoint(1, b"one")),
        ],
        vec![
            PersistOp::Checkpoint(checkpoint(3, b"three")),
            PersistOp::CommitPoint(2),
        ],
        // Older than the stored one: ignored, as by MemStorage.
        vec![PersistOp::Checkpoint(checkpoint(2, b"two"))],
    ];
    for b in &batches {
        s.persist(b).unwrap();
    }
    assert_eq!(s.stats().checkpoints_written, 2);
    drop(s);
    let expected = mem_after(&batches);
    assert_eq!(expected.checkpoint.as_ref().unwrap().slot, 3);

    // A leftover temporary file (a replacement interrupted before its rename) is ignored.
    fs::write(dir.path().join(CHECKPOINT_TMP), b"half a checkpoi").unwrap();
    assert_eq!(load(dir.path(), &o), expected);
    assert!(!dir.path().join(CHECKPOINT_TMP).exists());

    let cp_path = dir.path().join(CHECKPOINT_FILE);
    let good = fs::read(&cp_path).unwrap();
    let work = tempfile::tempdir().unwrap();
    let work_cp = work.path().join(CHECKPOINT_FILE);

    // Any damaged byte is detected.
    for at in [0, 13, CHECKPOINT_HEADER_LEN + 1, good.len() - 1] {
        copy_dir(dir.path(), work.path());
        flip_bit(&work_cp, at as u64, 0);
        assert!(
            matches!(open_storage_err(work.path()), StorageError::Corrupt { what: m, .. } if m.contains("checkpoint"))
        );
    }
    copy_dir(dir.path(), work.path());
    truncate(&work_cp, good.len() as u64 - 1);
    assert!(matches!(
        open_storage_err(work.path()),
        StorageError::Corrupt { .. }
    ));

    // A checkpoint whose data does not match its digest (with intact framing) is caught
    // by `Checkpoint::verify`.
    copy_dir(dir.path(), work.path());
    let mut bad = checkpoint(3, b"three");
    bad.data = Bytes::from_static(b"thrEe");
    let payload = postcard::to_stdvec(&bad).unwrap();
    let mut bytes = Vec::new();
    encode_checkpoint_header(&mut bytes, CLUSTER, NODE, &payload);
    bytes.extend_from_slice(&payload);
    fs::write(&work_cp, bytes).unwrap();
    let e = open_storage_err(work.path());
    assert!(
        matches!(&e, StorageError::Corrupt { what: m, .. } if m.contains("verify")),
        "{e:?}"
    );

    // Such a checkpoint is not stored in the first place.
    let mut s = open(dir.path(), &o);
    assert!(matches!(
        s.persist(&[PersistOp::Checkpoint(bad)]),
        Err(StorageError::Corrupt { .. })
    ));
}

/// Disk images a crash could leave at each step of a checkpoint + compaction, and what
/// each must recover to.
#[test]
fn crash_at_any_point_of_a_compaction_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(300);
    let mut s = open(dir.path(), &o);
    let mut batches = Vec::new();
    for i in 0..12u64 {
        let b = vec![accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)];
        s.persist(&b).unwrap();
        batches.push(b);
    }
    s.persist(&[PersistOp::Checkpoint(checkpoint(2, b"early"))])
        .unwrap();
    batches.push(vec![PersistOp::Checkpoint(checkpoint(2, b"early"))]);
    drop(s);
    let before_dir = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), before_dir.path());
    let before_segments = segments(dir.path());
    assert!(before_segments.len() > 2);

    let cp = checkpoint(8, b"state at 8");
    let batch = vec![
        accept(12, 2),
        PersistOp::Promise(Ballot::new(2, 1)),
        PersistOp::Checkpoint(cp.clone()),
        PersistOp::Compact(8),
    ];
    let mut s = open(dir.path(), &o);
    s.persist(&batch).unwrap();
    drop(s);
    let new_seg = segments(dir.path()).pop().unwrap();
    assert!(!before_segments.contains(&new_seg));

    let expected_before = mem_after(&batches);
    let mut only_cp = batches.clone();
    only_cp.push(vec![PersistOp::Checkpoint(cp)]);
    let expected_only_cp = mem_after(&only_cp);
    let mut all = batches.clone();
    all.push(batch);
    let expected_after = mem_after(&all);

    let work = tempfile::tempdir().unwrap();
    let quick = nosync(300);
    // 1. The new checkpoint was being written.
    copy_dir(before_dir.path(), work.path());
    fs::write(work.path().join(CHECKPOINT_TMP), b"partial").unwrap();
    assert_eq!(load(work.path(), &quick), expected_before);
    // 2. It was renamed into place; the base segment was not created yet, or was being
    //    written: its every prefix is ignored.
    let new_bytes = fs::read(&new_seg).unwrap();
    let new_name = new_seg.file_name().unwrap();
    for cut in (0..new_bytes.len()).map(Some).chain([None]) {
        copy_dir(before_dir.path(), work.path());
        fs::copy(
            dir.path().join(CHECKPOINT_FILE),
            work.path().join(CHECKPOINT_FILE),
        )
        .unwrap();
        if let Some(cut) = cut {
            fs::write(work.path().join(new_name), &new_bytes[..cut]).unwrap();
        }
        let mut s = open(work.path(), &quick);
        assert_eq!(s.load().unwrap(), expected_only_cp, "base cut at {cut:?}");
        if cut.is_some() {
            assert_eq!(s.recovery().segments_discarded, 1);
        }
        // And the storage works on from there.
        s.persist(&[accept(20, 3)]).unwrap();
        drop(s);
        let mut then = only_cp.clone();
        then.push(vec![accept(20, 3)]);
        assert_eq!(load(work.path(), &quick), mem_after(&then));
    }
    // 3. The base is complete; none, some or all of the old segments were removed.
    for keep in 0..=before_segments.len() {
        copy_dir(dir.path(), work.path());
        for old in &before_segments[before_segments.len() - keep..] {
            fs::copy(
                before_dir.path().join(old.file_name().unwrap()),
                work.path().join(old.file_name().unwrap()),
            )
            .unwrap();
        }
        let mut s = open(work.path(), &quick);
        assert_eq!(
            s.load().unwrap(),
            expected_after,
            "{keep} old segments left"
        );
        assert_eq!(s.recovery().segments_removed, keep);
        assert_eq!(segments(work.path()), vec![work.path().join(new_name)]);
    }
}

#[test]
fn an_interrupted_rotation_leaves_a_segment_that_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(300);
    let mut s = open(dir.path(), &o);
    let mut batches = Vec::new();
    for i in 0..10u64 {
        let b = vec![accept(i, 1)];
        s.persist(&b).unwrap();
        batches.push(b);
    }
    drop(s);
    let segs = segments(dir.path());
    let last = segs.last().unwrap();
    let next_seq = parse_segment_name(last.file_name().unwrap().to_str().unwrap()).unwrap() + 1;
    let next = dir.path().join(segment_name(next_seq));
    for len in [0, 10, SEGMENT_HEADER_LEN] {
        let mut bytes = Vec::new();
        encode_segment_header(&mut bytes, CLUSTER, NODE, next_seq, KIND_CONTINUATION);
        // A full header but nothing after it is a valid, empty segment.
        bytes.truncate(len);
        fs::write(&next, &bytes).unwrap();
        let mut s = open(dir.path(), &nosync(300));
        assert_eq!(s.load().unwrap(), mem_after(&batches));
        assert_eq!(
            s.recovery().segments_discarded,
            usize::from(len < SEGMENT_HEADER_LEN)
        );
    }
    // A zero-filled header is never-written space too.
    fs::write(&next, [0u8; SEGMENT_HEADER_LEN + 5]).unwrap();
    let mut s = open(dir.path(), &nosync(300));
    assert_eq!(s.load().unwrap(), mem_after(&batches));
    assert!(!next.exists());
}

// ------------------------------------------------------------- bit rot vs torn writes

/// A directory holding `sample_batches()`, and its (only) segment.
fn sample_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    for b in sample_batches() {
        s.persist(&b).unwrap();
    }
    let seg = s.segment_files().pop().unwrap();
    drop(s);
    (dir, seg)
}

#[test]
fn every_bit_flip_in_the_last_record_is_refused_with_file_and_offset() {
    check_every_bit_flip_in_the_last_record_is_refused(&nosync(1 << 20)).unwrap();
}

/// The check of `every_bit_flip_in_the_last_record_is_refused_with_file_and_offset`,
/// opening with `options`: every single bit flip in the last (complete) record of the
/// newest segment must be refused as [`OpenError::DamagedRecord`] at that record, with
/// the right [`RecordDamage`], changing nothing. `Err` describes the first flip that
/// was not. Also run against a broken variant (`broken_variants`).
fn check_every_bit_flip_in_the_last_record_is_refused(
    options: &FileStorageOptions,
) -> Result<(), String> {
    let (dir, seg) = sample_dir();
    let good = fs::read(&seg).unwrap();
    let (last, len, _) = *records(&seg).last().unwrap();
    let end = last + RECORD_HEADER_LEN as u64 + u64::from(len);
    assert_eq!(end, good.len() as u64, "the last record ends the file");
    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    let work_seg = work.path().join(seg.file_name().unwrap());
    let mut flips = 0;
    for offset in last..end {
        for bit in 0..8 {
            let flip = format!("bit {bit} of byte {offset}");
            let mut bytes = good.clone();
            bytes[offset as usize] ^= 1 << bit;
            fs::write(&work_seg, &bytes).unwrap();
            let before = snapshot(work.path());
            let e = match FileStorage::open_with(work.path(), CLUSTER, NODE, options.clone()) {
                Ok(s) => {
                    return Err(format!(
                        "{flip}: the open succeeded, recovery {:?}",
                        s.recovery()
                    ))
                }
                Err(e) => e,
            };
            let damage = damaged_record(e, &work_seg, last).map_err(|m| format!("{flip}: {m}"))?;
            let expected = if offset < last + RECORD_HEADER_LEN as u64 {
                RecordDamage::HeaderChecksum
            } else {
                RecordDamage::PayloadChecksum
            };
            if damage != expected {
                return Err(format!("{flip}: {damage:?}, expected {expected:?}"));
            }
            // Refused without touching anything.
            if snapshot(work.path()) != before {
                return Err(format!("{flip}: the refused open changed the directory"));
            }
            flips += 1;
        }
    }
    assert!(flips >= 8 * (RECORD_HEADER_LEN + 2));
    // The intact file loads everything.
    fs::write(&work_seg, &good).unwrap();
    assert_eq!(load(work.path(), options), mem_after(&sample_batches()));
    Ok(())
}

#[test]
fn a_batch_split_over_records_cut_at_every_offset_loads_a_prefix_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = FileStorageOptions {
        max_record_size: MIN_RECORD_SIZE,
        ..opts(1 << 20)
    };
    let kept = sample_batches();
    let mut s = open(dir.path(), &o);
    for b in &kept {
        s.persist(b).unwrap();
    }
    let seg = s.segment_files().pop().unwrap();
    let before = fs::metadata(&seg).unwrap().len();
    let batch: Vec<PersistOp> = (10..50)
        .map(|i| PersistOp::Accept {
            slot: i,
            ballot: Ballot::new(3, 1),
            value: value(i, 250),
        })
        .collect();
    s.persist(&batch).unwrap();
    drop(s);
    let full = fs::read(&seg).unwrap();

    // Where each record of the batch ends, and how many operations end with it.
    let mut ends = vec![(before, 0usize)];
    for (at, len, tag) in records(&seg).into_iter().filter(|r| r.0 >= before) {
        assert_eq!(tag, TAG_OPS);
        let body = at as usize + RECORD_HEADER_LEN;
        let mut rest = &full[body + 1..body + len as usize];
        let mut n = ends.last().unwrap().1;
        while !rest.is_empty() {
            let (_, r): (PersistOp, _) = postcard::take_from_bytes(rest).unwrap();
            rest = r;
            n += 1;
        }
        ends.push((at + RECORD_HEADER_LEN as u64 + u64::from(len), n));
    }
    assert!(ends.len() > 3, "the batch is split: {ends:?}");
    assert_eq!(ends.last().unwrap(), &(full.len() as u64, batch.len()));
    let states: Vec<PersistentState> = ends
        .iter()
        .map(|(_, n)| {
            let mut b = kept.clone();
            b.push(batch[..*n].to_vec());
            mem_after(&b)
        })
        .collect();

    let work = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), work.path());
    let work_seg = work.path().join(seg.file_name().unwrap());
    let quick = FileStorageOptions { sync: false, ..o };
    for cut in before..=full.len() as u64 {
        fs::write(&work_seg, &full[..cut as usize]).unwrap();
        let i = ends.iter().rposition(|(end, _)| *end <= cut).unwrap();
        let mut s = open(work.path(), &quick);
        assert_eq!(s.load().unwrap(), states[i], "cut at {cut}");
        assert_eq!(
            s.recovery().torn_bytes_discarded,
            cut - ends[i].0,
            "cut at {cut}"
        );
        drop(s);
        assert_eq!(fs::metadata(&work_seg).unwrap().len(), ends[i].0);
    }
}

#[test]
fn zeros_inside_the_last_record_are_refused_but_zeros_after_it_are_torn() {
    let (dir, seg) = sample_dir();
    let good = fs::read(&seg).unwrap();
    let (last, len, _) = *records(&seg).last().unwrap();
    let payload = last + RECORD_HEADER_LEN as u64;
    let work = tempfile::tempdir().unwrap();
    let work_seg = work.path().join(seg.file_name().unwrap());
    let zeroed = |from: u64, to: u64| {
        let mut bytes = good.clone();
        bytes[from as usize..to as usize].fill(0);
        bytes
    };
    let end = good.len() as u64;
    for (bytes, damage) in [
        // Zeros from inside the payload to the end: the length says it is complete.
        (
            zeroed(payload + u64::from(len) / 2, end),
            RecordDamage::PayloadChecksum,
        ),
        // Zeros from inside the header: not all of it is zero.
        (zeroed(last + 6, end), RecordDamage::HeaderChecksum),
        // A zeroed header with data after it: not space that was never written.
        (zeroed(last, payload), RecordDamage::HeaderChecksum),
    ] {
        copy_dir(dir.path(), work.path());
        fs::write(&work_seg, &bytes).unwrap();
        let before = snapshot(work.path());
        assert_eq!(
            assert_damaged(open_err(work.path()), &work_seg, last),
            damage
        );
        assert_eq!(snapshot(work.path()), before);
    }

    // Zeros from the last record's start to the end are space whose data never
    // arrived: torn, cut off.
    copy_dir(dir.path(), work.path());
    fs::write(&work_seg, zeroed(last, end)).unwrap();
    let mut s = open(work.path(), &nosync(1 << 20));
    assert_eq!(s.load().unwrap(), mem_after(&sample_batches()[..3]));
    assert_eq!(s.recovery().torn_bytes_discarded, end - last);
    drop(s);
    assert_eq!(fs::metadata(&work_seg).unwrap().len(), last);
}

#[test]
fn a_newest_segment_with_a_zero_header_but_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(300));
    for i in 0..10u64 {
        s.persist(&[accept(i, 1)]).unwrap();
    }
    let newest = s.segment_files().pop().unwrap();
    drop(s);
    assert!(segments(dir.path()).len() > 1);
    let mut bytes = fs::read(&newest).unwrap();
    bytes[..SEGMENT_HEADER_LEN].fill(0);
    fs::write(&newest, &bytes).unwrap();
    let before = snapshot(dir.path());
    assert_corrupt(open_err(dir.path()), &newest, 0);
    assert_eq!(snapshot(dir.path()), before);
}

// ------------------------------------------------------------------ directory lock

#[test]
fn a_second_open_is_refused_while_the_first_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    // The directory does not exist yet: it is created, then locked.
    let path = dir.path().join("data");
    let mut first = open(&path, &nosync(1 << 20));
    first.persist(&[accept(0, 1)]).unwrap();
    assert!(path.join(LOCK_FILE).exists());
    for _ in 0..2 {
        check_a_second_open_is_refused(&path, &nosync(1 << 20)).unwrap();
    }
    // The lock is checked before the identity: another node id is refused as locked too.
    assert!(matches!(
        FileStorage::open(&path, CLUSTER, NODE + 1),
        Err(OpenError::Locked { .. })
    ));
    // The first one is unaffected.
    first.persist(&[accept(1, 1)]).unwrap();
    drop(first);
    let mut again = open(&path, &nosync(1 << 20));
    assert_eq!(
        again.load().unwrap(),
        mem_after(&[vec![accept(0, 1)], vec![accept(1, 1)]])
    );
    drop(again);
    assert!(FileStorage::open(&path, CLUSTER, NODE).is_ok());
}

/// The check of `a_second_open_is_refused_while_the_first_is_alive`: while a
/// `FileStorage` holds `path`, opening it again with `options` must fail with
/// [`OpenError::Locked`] and say so. `Err` describes what happened instead. Also run
/// against a broken variant (`broken_variants`).
fn check_a_second_open_is_refused(path: &Path, options: &FileStorageOptions) -> Result<(), String> {
    let e = match FileStorage::open_with(path, CLUSTER, NODE, options.clone()) {
        Ok(_) => return Err(format!("a second open of {} succeeded", path.display())),
        Err(e) => e,
    };
    if e != (OpenError::Locked {
        dir: path.to_path_buf(),
    }) {
        return Err(format!("expected Locked, got {e:?}"));
    }
    let expected = format!(
        "data directory {} is in use by another process",
        path.display()
    );
    if e.to_string() != expected {
        return Err(format!("message {e}, expected {expected}"));
    }
    match StorageError::from(e.clone()) {
        se @ StorageError::Io { .. }
            if open_cause(&se) == Some(&e) && se.to_string().contains(&expected) =>
        {
            Ok(())
        }
        other => Err(format!("as a StorageError: {other:?}")),
    }
}

#[test]
fn a_refused_open_changes_nothing_in_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = open(dir.path(), &opts(1 << 20));
    for b in sample_batches() {
        first.persist(&b).unwrap();
    }
    first
        .persist(&[PersistOp::Checkpoint(checkpoint(2, b"two"))])
        .unwrap();
    // The log covers it, so it is written in the background: let it land before the
    // directory is compared (a write still under way would change it meanwhile).
    first.wait_for_checkpoint().unwrap();
    let seg = first.segment_files().pop().unwrap();
    // Things recovery would repair: leftovers of interrupted replacements, and a torn
    // tail (as if the live node were in the middle of a write).
    fs::write(dir.path().join(META_TMP), b"half a meta").unwrap();
    fs::write(dir.path().join(CHECKPOINT_TMP), b"half a checkpoint").unwrap();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[7, 0, 0])
        .unwrap();
    let before = snapshot(dir.path());
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&META_TMP) && names.contains(&CHECKPOINT_TMP),
        "{names:?}"
    );

    let e = FileStorage::open_with(dir.path(), CLUSTER, NODE, opts(1 << 20)).unwrap_err();
    assert!(matches!(e, OpenError::Locked { .. }), "{e:?}");
    assert_eq!(snapshot(dir.path()), before);

    // Once the first is gone, recovery runs and repairs what was planted.
    drop(first);
    let mut s = open(dir.path(), &nosync(1 << 20));
    assert_eq!(s.recovery().torn_bytes_discarded, 3);
    assert!(!dir.path().join(META_TMP).exists());
    assert!(!dir.path().join(CHECKPOINT_TMP).exists());
    let mut expected = sample_batches();
    expected.push(vec![PersistOp::Checkpoint(checkpoint(2, b"two"))]);
    assert_eq!(s.load().unwrap(), mem_after(&expected));
}

// ------------------------------------------------------------ broken variants
//
// Each test runs the check of a real test against a deliberately broken variant of one
// safety rule (`Broken`, compiled for tests only) and asserts that the check fails, so
// every run proves the real test can still catch that bug.

/// Options whose background checkpoint writer waits `ms` milliseconds first, so that a
/// test can look at the directory before the checkpoint is written.
fn late_writer(ms: u64) -> FileStorageOptions {
    FileStorageOptions {
        background_delay: Duration::from_millis(ms),
        ..nosync(1 << 20)
    }
}

/// Every slot below the commit point is either covered by the checkpoint or in the log:
/// what a replica replays after a restart has no hole.
fn check_no_hole_below_the_commit_point(state: &PersistentState) -> Result<(), String> {
    let from = state.checkpoint.as_ref().map_or(0, |c| c.slot);
    match (from..state.commit_point).find(|s| state.log.get(*s).is_none()) {
        None => Ok(()),
        Some(hole) => Err(format!(
            "slot {hole} is below the commit point {} but neither in the checkpoint (slot {from}) nor in the log",
            state.commit_point
        )),
    }
}

/// A replica installs a checkpoint from a peer (slot 10, its log ends at 4), then
/// learns slot 10; the directory is copied as a crash would leave it right after.
fn check_an_installed_checkpoint_is_durable_before_persist_returns(
    options: &FileStorageOptions,
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), options);
    for i in 0..4u64 {
        s.persist(&[accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)])
            .unwrap();
    }
    // The batch a replica persists when it installs a checkpoint from a peer.
    s.persist(&[
        PersistOp::Checkpoint(checkpoint(10, b"installed at 10")),
        PersistOp::Compact(10),
        PersistOp::CommitPoint(10),
    ])
    .unwrap();
    s.persist(&[accept(10, 2), learn(10), PersistOp::CommitPoint(11)])
        .unwrap();
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let state = load(crashed.path(), &nosync(1 << 20));
    check_no_hole_below_the_commit_point(&state)?;
    if state.checkpoint.as_ref().map(|c| c.slot) != Some(10) {
        return Err(format!(
            "the installed checkpoint is missing: {:?}",
            state.checkpoint
        ));
    }
    Ok(())
}

#[test]
fn an_installed_checkpoint_is_written_before_persist_returns() {
    check_an_installed_checkpoint_is_durable_before_persist_returns(&late_writer(300)).unwrap();
}

#[test]
fn a_checkpoint_the_log_covers_is_written_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &late_writer(300));
    let mut batches = Vec::new();
    for i in 0..12u64 {
        let b = vec![accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)];
        s.persist(&b).unwrap();
        batches.push(b);
    }
    let started = Instant::now();
    s.persist(&[PersistOp::Checkpoint(checkpoint(8, b"state at 8"))])
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "persist waited for the checkpoint"
    );
    assert_eq!(s.stats().checkpoints_written, 0);
    // A crash now: the checkpoint is not there, and nothing is lost (the log covers it).
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let state = load(crashed.path(), &nosync(1 << 20));
    assert_eq!(state, mem_after(&batches));
    check_no_hole_below_the_commit_point(&state).unwrap();
    // The next checkpoint's compaction (below 8) waits for it; then it is durable.
    s.persist(&[accept(12, 1), learn(12), PersistOp::CommitPoint(13)])
        .unwrap();
    s.persist(&[
        PersistOp::Checkpoint(checkpoint(12, b"state at 12")),
        PersistOp::Compact(8),
    ])
    .unwrap();
    s.wait_for_checkpoint().unwrap();
    let stats = s.stats();
    assert_eq!(stats.checkpoints_written, 2);
    assert_eq!(stats.checkpoints_in_background, 2);
    assert!(stats.background_waits >= 1, "{stats:?}");
    drop(s);
    let state = load(dir.path(), &nosync(1 << 20));
    assert_eq!(state.checkpoint.as_ref().map(|c| c.slot), Some(12));
    assert_eq!(state.log.range(..8).count(), 0, "compacted below 8");
    check_no_hole_below_the_commit_point(&state).unwrap();
}

/// Persists `before`, then `batch` (holding a checkpoint at `slot`), and copies the
/// directory as a crash would leave it at once: whether the checkpoint is in the copy,
/// i.e. was written before `persist` returned.
fn written_before_returning(before: &[Vec<PersistOp>], batch: &[PersistOp], slot: u64) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &late_writer(300));
    for b in before {
        s.persist(b).unwrap();
    }
    s.persist(batch).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let state = load(crashed.path(), &nosync(1 << 20));
    check_no_hole_below_the_commit_point(&state).unwrap();
    state.checkpoint.is_some_and(|c| c.slot == slot)
}

fn committed(slots: impl IntoIterator<Item = u64>) -> Vec<Vec<PersistOp>> {
    slots
        .into_iter()
        .map(|i| vec![accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)])
        .collect()
}

#[test]
fn each_condition_for_a_late_checkpoint_is_needed() {
    let cp = || PersistOp::Checkpoint(checkpoint(8, b"state at 8"));
    // All hold: written later.
    assert!(!written_before_returning(&committed(0..12), &[cp()], 8));
    // A hole in the log below its slot.
    assert!(written_before_returning(
        &committed((0..12).filter(|s| *s != 5)),
        &[cp()],
        8
    ));
    // Its slot above the commit point the log records, entries all there (a commit
    // point raised only after the checkpoint in the batch does not count).
    let mut accepted_only: Vec<Vec<PersistOp>> = (0..12).map(|i| vec![accept(i, 1)]).collect();
    accepted_only.push(vec![PersistOp::CommitPoint(4)]);
    assert!(written_before_returning(&accepted_only, &[cp()], 8));
    assert!(written_before_returning(
        &accepted_only,
        &[cp(), PersistOp::CommitPoint(12)],
        8
    ));
    // A compaction past the stored checkpoint in the same batch.
    assert!(written_before_returning(
        &committed(0..12),
        &[cp(), PersistOp::Compact(8)],
        8
    ));
}

#[test]
fn a_crash_after_the_next_compaction_but_before_the_late_checkpoint_loses_nothing() {
    // The usual shape: a checkpoint at 8 written in the background, then the next
    // one at 12 with the compaction below 8 (which waits for 8), and a crash while 12
    // is still being written.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &late_writer(300));
    let mut batches = committed(0..12);
    for b in &batches {
        s.persist(b).unwrap();
    }
    s.persist(&[PersistOp::Checkpoint(checkpoint(8, b"state at 8"))])
        .unwrap();
    let more = committed(12..14);
    for b in &more {
        s.persist(b).unwrap();
    }
    s.persist(&[
        PersistOp::Checkpoint(checkpoint(12, b"state at 12")),
        PersistOp::Compact(8),
    ])
    .unwrap();
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let state = load(crashed.path(), &nosync(1 << 20));
    check_no_hole_below_the_commit_point(&state).unwrap();
    assert_eq!(state.checkpoint.as_ref().map(|c| c.slot), Some(8));
    assert_eq!(state.commit_point, 14);
    batches.push(vec![PersistOp::Checkpoint(checkpoint(8, b"state at 8"))]);
    batches.extend(more);
    batches.push(vec![PersistOp::Compact(8)]);
    assert_eq!(state, mem_after(&batches));
    drop(s);
}

#[test]
fn closing_the_storage_finishes_the_background_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &late_writer(200));
    for i in 0..5u64 {
        s.persist(&[accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)])
            .unwrap();
    }
    s.persist(&[PersistOp::Checkpoint(checkpoint(5, b"state at 5"))])
        .unwrap();
    drop(s);
    let state = load(dir.path(), &nosync(1 << 20));
    assert_eq!(state.checkpoint.as_ref().map(|c| c.slot), Some(5));
}

/// A compaction whose base is written in the background (`late_writer` holds the
/// writer back): `persist` returns without it, writes go on meanwhile, a crash image
/// taken before the base takes over and one taken after both hold every write, and
/// after it one segment holds everything and takes the next writes.
fn check_background_compaction(options: &FileStorageOptions) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), options);
    let mut batches = committed(0..30);
    for b in &batches {
        s.persist(b).unwrap();
    }
    let old = segments(dir.path());
    let compact = vec![
        PersistOp::Checkpoint(checkpoint(20, b"state at 20")),
        PersistOp::Compact(20),
    ];
    let started = Instant::now();
    s.persist(&compact).unwrap();
    let took = started.elapsed();
    batches.push(compact);
    if took >= options.background_delay {
        return Err(format!("persist waited {took:?} for the base"));
    }
    for b in committed(30..40) {
        s.persist(&b).unwrap();
        batches.push(b);
    }
    let expected = mem_after(&batches);
    if s.load().unwrap() != expected {
        return Err("the image differs from the model".into());
    }
    let image = |dir: &Path| {
        let work = tempfile::tempdir().unwrap();
        copy_dir(dir, work.path());
        let state = load(work.path(), &nosync(1 << 20));
        (state, segments(work.path()).len())
    };
    // 1. A crash while the base is still being written: the older segments.
    let (state, _) = image(dir.path());
    if state != expected {
        return Err("a crash before the base took over lost writes".into());
    }
    // 2. The base takes over, with the writes made meanwhile.
    s.wait_for_compaction().unwrap();
    let stats = s.stats();
    if stats.compactions_in_background != 1 || segments(dir.path()).len() != 1 {
        return Err(format!("{stats:?}, segments {:?}", segments(dir.path())));
    }
    if segments(dir.path())[0] == *old.last().unwrap() {
        return Err("no new segment".into());
    }
    let (state, count) = image(dir.path());
    if state != expected || count != 1 {
        return Err("a crash after the base took over lost writes".into());
    }
    // 3. Writes go on in the new segment.
    for b in committed(40..45) {
        s.persist(&b).unwrap();
        batches.push(b);
    }
    drop(s);
    if load(dir.path(), &nosync(1 << 20)) != mem_after(&batches) {
        return Err("writes after the base took over were lost".into());
    }
    Ok(())
}

#[test]
fn a_compaction_is_written_in_the_background() {
    check_background_compaction(&late_writer(300)).unwrap();
}

#[test]
fn no_segment_starts_while_a_base_is_being_written() {
    // Segments of a few hundred bytes: the writes made while the base is being written
    // would start several, one of which would take the base's number.
    let options = FileStorageOptions {
        segment_size: 400,
        ..late_writer(200)
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &options);
    let mut batches = committed(0..20);
    for b in &batches {
        s.persist(b).unwrap();
    }
    let compact = vec![
        PersistOp::Checkpoint(checkpoint(10, b"state at 10")),
        PersistOp::Compact(10),
    ];
    s.persist(&compact).unwrap();
    batches.push(compact);
    let during = segments(dir.path()).len();
    for b in committed(20..40) {
        s.persist(&b).unwrap();
        batches.push(b);
    }
    assert_eq!(
        segments(dir.path()).len(),
        during,
        "a segment started meanwhile"
    );
    s.wait_for_compaction().unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    // Rotation resumes afterwards.
    for b in committed(40..60) {
        s.persist(&b).unwrap();
        batches.push(b);
    }
    assert!(segments(dir.path()).len() > 1);
    drop(s);
    assert_eq!(load(dir.path(), &nosync(400)), mem_after(&batches));
}

#[test]
fn dropping_the_storage_finishes_the_base_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &late_writer(200));
    let mut batches = committed(0..20);
    for b in &batches {
        s.persist(b).unwrap();
    }
    let compact = vec![
        PersistOp::Checkpoint(checkpoint(10, b"state at 10")),
        PersistOp::Compact(10),
    ];
    s.persist(&compact).unwrap();
    batches.push(compact);
    batches.push(vec![accept(20, 1)]);
    s.persist(&batches[batches.len() - 1]).unwrap();
    let before = segments(dir.path());
    drop(s);
    let after = segments(dir.path());
    assert_eq!(after.len(), 1);
    assert!(!before.contains(&after[0]), "the base took over");
    assert!(!dir.path().join(BASE_TMP).exists());
    assert_eq!(load(dir.path(), &nosync(1 << 20)), mem_after(&batches));
}

#[test]
fn a_leftover_base_is_ignored_and_removed() {
    // A crash while a base was being written leaves `base.tmp`: the older segments
    // hold the log, and the leftover goes.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &nosync(1 << 20));
    let batches = committed(0..5);
    for b in &batches {
        s.persist(b).unwrap();
    }
    drop(s);
    fs::write(dir.path().join(BASE_TMP), b"half a base").unwrap();
    assert_eq!(load(dir.path(), &nosync(1 << 20)), mem_after(&batches));
    assert!(!dir.path().join(BASE_TMP).exists());
}

mod broken_variants {
    use super::*;
    use crate::storage::Broken;

    #[test]
    fn writing_an_installed_checkpoint_in_the_background_is_caught() {
        let options = FileStorageOptions {
            broken: Some(Broken::BackgroundAlways),
            ..late_writer(300)
        };
        let e =
            check_an_installed_checkpoint_is_durable_before_persist_returns(&options).unwrap_err();
        assert!(e.contains("neither in the checkpoint"), "{e}");
    }

    #[test]
    fn a_base_taking_over_without_the_writes_made_meanwhile_is_caught() {
        let options = FileStorageOptions {
            broken: Some(Broken::BaseWithoutSince),
            ..late_writer(300)
        };
        let e = check_background_compaction(&options).unwrap_err();
        assert!(e.contains("after the base took over"), "{e}");
    }

    fn broken(variant: Broken) -> FileStorageOptions {
        FileStorageOptions {
            broken: Some(variant),
            ..nosync(1 << 20)
        }
    }

    #[test]
    fn without_the_lock_a_second_open_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let options = broken(Broken::NoLock);
        let mut first = open(&path, &options);
        first.persist(&[accept(0, 1)]).unwrap();
        let e = check_a_second_open_is_refused(&path, &options).unwrap_err();
        assert!(e.contains("a second open"), "{e}");
        // The real code, under the same test, passes.
        drop(first);
        let _first = open(&path, &nosync(1 << 20));
        check_a_second_open_is_refused(&path, &nosync(1 << 20)).unwrap();
    }

    #[test]
    fn cutting_a_damaged_last_record_is_caught() {
        let e = check_every_bit_flip_in_the_last_record_is_refused(&broken(Broken::CutDamagedTail))
            .unwrap_err();
        // Header flips are still refused; the first payload flip is cut, not refused.
        assert!(e.contains("the open succeeded"), "{e}");
        assert!(e.contains("torn_bytes_discarded"), "{e}");
    }
}

fn status(status: AcceptorStatus, incarnation: u64) -> PersistOp {
    PersistOp::Status {
        status,
        incarnation,
    }
}

fn peer(node: u64, incarnation: u64) -> PersistOp {
    PersistOp::PeerIncarnation { node, incarnation }
}

/// The tags of the records of every segment of `dir`, oldest segment first.
fn tags(dir: &Path) -> Vec<u8> {
    segments(dir)
        .iter()
        .flat_map(|p| records(p))
        .map(|(_, _, tag)| tag)
        .collect()
}

#[test]
fn a_new_directory_loads_as_pristine() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    assert!(s.recovery().created);
    assert_eq!(s.load().unwrap(), PersistentState::default());
    assert_eq!(s.load().unwrap().status, AcceptorStatus::Pristine);
    drop(s);
    // Reopened without a single write: still nothing stored, still pristine.
    let mut s = open(dir.path(), &opts(1 << 20));
    assert!(!s.recovery().created);
    assert_eq!(s.load().unwrap(), PersistentState::default());
}

#[test]
fn status_and_peer_incarnations_round_trip_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(1 << 20);
    let mut batches = vec![
        vec![status(AcceptorStatus::Recovering, 1), peer(2, 3)],
        // A lower incarnation of a known peer is ignored; a new peer is added.
        vec![
            peer(2, 1),
            peer(4, 2),
            PersistOp::Promise(Ballot::new(5, 2)),
        ],
    ];
    let mut s = open(dir.path(), &o);
    for b in &batches {
        s.persist(b).unwrap();
    }
    drop(s);
    let state = load(dir.path(), &o);
    assert_eq!(state, mem_after(&batches));
    assert_eq!(state.status, AcceptorStatus::Recovering);
    assert_eq!(state.incarnation, 1);
    assert_eq!(
        state.peer_incarnations.into_iter().collect::<Vec<_>>(),
        [(2, 3), (4, 2)]
    );

    // The recovery completes: the acceptor comes back a voter.
    let done = vec![accept(0, 5), status(AcceptorStatus::Voter, 1), peer(2, 4)];
    let mut s = open(dir.path(), &o);
    s.persist(&done).unwrap();
    batches.push(done);
    drop(s);
    let state = load(dir.path(), &o);
    assert_eq!(state, mem_after(&batches));
    assert_eq!(
        (state.status, state.incarnation),
        (AcceptorStatus::Voter, 1)
    );
    // Only one segment, its base and the three batches: nothing was compacted.
    assert_eq!(
        tags(dir.path()),
        [TAG_BASE_BEGIN, TAG_BASE_END, TAG_OPS, TAG_OPS, TAG_OPS]
    );
}

#[test]
fn a_compaction_base_carries_status_and_incarnations() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(400);
    let mut s = open(dir.path(), &o);
    let mut batches = vec![vec![status(AcceptorStatus::Recovering, 2), peer(1, 1)]];
    for i in 0..20u64 {
        batches.push(vec![accept(i, 1), learn(i), PersistOp::CommitPoint(i + 1)]);
    }
    batches.push(vec![peer(3, 5), peer(1, 0)]);
    for b in &batches {
        s.persist(b).unwrap();
    }
    assert!(segments(dir.path()).len() > 1);
    let compact = vec![
        PersistOp::Checkpoint(checkpoint(15, b"state at 15")),
        PersistOp::Compact(15),
    ];
    s.persist(&compact).unwrap();
    batches.push(compact);
    s.wait_for_compaction().unwrap();
    assert_eq!(s.stats().compactions, 1);
    drop(s);
    // One segment holding only a base: the status came back from the base itself.
    assert_eq!(segments(dir.path()).len(), 1);
    assert_eq!(tags(dir.path()), [TAG_BASE_BEGIN, TAG_BASE_END]);
    let state = load(dir.path(), &o);
    assert_eq!(state, mem_after(&batches));
    assert_eq!(
        (state.status, state.incarnation),
        (AcceptorStatus::Recovering, 2),
        "a recovering replica stays recovering"
    );
    assert_eq!(
        state.peer_incarnations.into_iter().collect::<Vec<_>>(),
        [(1, 1), (3, 5)]
    );

    // A status change in the very batch that compacts is in the new base as well.
    let mut s = open(dir.path(), &o);
    let finish = vec![
        status(AcceptorStatus::Voter, 2),
        peer(3, 6),
        PersistOp::Checkpoint(checkpoint(18, b"state at 18")),
        PersistOp::Compact(18),
    ];
    s.persist(&finish).unwrap();
    batches.push(finish);
    s.wait_for_compaction().unwrap();
    assert_eq!(s.stats().compactions, 1);
    drop(s);
    assert_eq!(tags(dir.path()), [TAG_BASE_BEGIN, TAG_BASE_END]);
    let state = load(dir.path(), &o);
    assert_eq!(state, mem_after(&batches));
    assert_eq!(
        (state.status, state.incarnation),
        (AcceptorStatus::Voter, 2),
        "a voter does not come back pristine"
    );
}

/// Rewrites the version field of the `header_len`-byte header at the start of `path`,
/// with a valid header CRC: what a build of that version would have written.
fn set_version(path: &Path, header_len: usize, version: u32) {
    let mut bytes = fs::read(path).unwrap();
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..header_len - 4]);
    bytes[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, bytes).unwrap();
}

#[test]
fn another_format_version_is_refused_naming_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path(), &opts(1 << 20));
    s.persist(&[
        status(AcceptorStatus::Voter, 0),
        accept(0, 1),
        PersistOp::Checkpoint(checkpoint(1, b"one")),
    ])
    .unwrap();
    drop(s);
    let seg = segments(dir.path()).pop().unwrap();
    let files = [
        (dir.path().join(META_FILE), META_LEN),
        (seg, SEGMENT_HEADER_LEN),
        (dir.path().join(CHECKPOINT_FILE), CHECKPOINT_HEADER_LEN),
    ];
    let work = tempfile::tempdir().unwrap();
    for (file, header_len) in &files {
        for version in [1, FORMAT_VERSION + 1] {
            copy_dir(dir.path(), work.path());
            let file = work.path().join(file.file_name().unwrap());
            set_version(&file, *header_len, version);
            let before = snapshot(work.path());
            let e = open_err(work.path());
            assert_eq!(
                e,
                OpenError::UnsupportedVersion {
                    file: file.clone(),
                    found: version,
                    supported: FORMAT_VERSION,
                }
            );
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("version {version}"))
                    && msg.contains(&file.display().to_string()),
                "{msg}"
            );
            assert!(
                matches!(
                    StorageError::from(e.clone()),
                    se @ StorageError::Mismatch { .. }
                        if open_cause(&se) == Some(&e) && se.to_string().contains(&msg)
                ),
                "callers that only know StorageError see a mismatch"
            );
            assert_eq!(
                snapshot(work.path()),
                before,
                "a refused open changes nothing"
            );
        }
    }
    // A damaged version field is damage, not another version.
    copy_dir(dir.path(), work.path());
    let meta = work.path().join(META_FILE);
    flip_bit(&meta, 8, 0);
    assert!(matches!(
        open_storage_err(work.path()),
        StorageError::Corrupt { what: m, .. } if m.contains("checksum")
    ));
}

fn op_strategy() -> impl Strategy<Value = PersistOp> {
    let ballot = (0u64..6, 0u64..4).prop_map(|(r, n)| Ballot::new(r, n));
    let val = prop_oneof![
        Just(Value::Noop),
        (0u64..5, 0usize..40).prop_map(|(c, len)| value(c, len)),
        (0u64..1 << 40, 0u64..1000)
            .prop_map(|(time, idle_limit)| Value::Clock { time, idle_limit }),
        (0u64..1 << 40, 0u64..1 << 40, 0u64..1000).prop_map(|(from, time, idle_limit)| {
            Value::ClockStep {
                ballot: Ballot::new(from % 7, time % 5),
                from,
                time,
                idle_limit,
            }
        }),
    ];
    prop_oneof![
        3 => ballot.clone().prop_map(PersistOp::Promise),
        6 => (0u64..40, ballot, val.clone()).prop_map(|(slot, ballot, value)| PersistOp::Accept { slot, ballot, value }),
        3 => (0u64..40, val).prop_map(|(slot, value)| PersistOp::Learn { slot, value }),
        2 => (0u64..40).prop_map(PersistOp::CommitPoint),
        1 => (0u64..40, proptest::collection::vec(any::<u8>(), 0..30))
            .prop_map(|(slot, data)| PersistOp::Checkpoint(checkpoint(slot, &data))),
        1 => (0u64..40).prop_map(PersistOp::Compact),
        1 => (status_strategy(), 0u64..4)
            .prop_map(|(status, incarnation)| PersistOp::Status { status, incarnation }),
        1 => (0u64..5, 0u64..6)
            .prop_map(|(node, incarnation)| PersistOp::PeerIncarnation { node, incarnation }),
    ]
}

fn status_strategy() -> impl Strategy<Value = AcceptorStatus> {
    prop_oneof![
        Just(AcceptorStatus::Pristine),
        Just(AcceptorStatus::Recovering),
        Just(AcceptorStatus::Voter),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random batches to both stores (every kind of operation, acceptor status and
    /// incarnations included), reopening at random points: `load` always agrees.
    #[test]
    fn file_storage_matches_mem_storage(
        steps in proptest::collection::vec(
            (proptest::collection::vec(op_strategy(), 0..8), any::<bool>()),
            1..16,
        ),
        segment_size in prop_oneof![Just(200u64), Just(1000), Just(1 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let o = nosync(segment_size);
        let mut mem = MemStorage::new();
        let mut file = open(dir.path(), &o);
        for (batch, reopen) in steps {
            mem.persist(&batch).unwrap();
            file.persist(&batch).unwrap();
            prop_assert_eq!(&file.load().unwrap(), mem.state());
            if reopen {
                drop(file);
                file = open(dir.path(), &o);
                prop_assert_eq!(&file.load().unwrap(), mem.state());
            }
        }
        drop(file);
        prop_assert_eq!(&load(dir.path(), &o), mem.state());
    }
}

/// Measures the fsync rate and group-commit throughput of the disk holding
/// `PAXOS_BENCH_DIR` (default: the system temporary directory).
///
/// `cargo test -p paxos-storage-file --release -- --ignored --nocapture bench_group_commit`
#[test]
#[ignore = "benchmark: prints fsync and group-commit figures"]
fn bench_group_commit() {
    let base = std::env::var_os("PAXOS_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!("directory: {}", dir.path().display());
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>10}",
        "batch", "persists", "fsyncs/s", "ops/s", "MB/s"
    );
    for batch in [1usize, 10, 100, 1000] {
        let path = dir.path().join(format!("b{batch}"));
        let mut s = FileStorage::open(&path, CLUSTER, NODE).unwrap();
        let start = Instant::now();
        let syncs0 = s.stats().syncs;
        let bytes0 = s.stats().bytes_written;
        let mut slot = 0u64;
        let mut persists = 0u64;
        let mut ops = Vec::with_capacity(batch);
        while start.elapsed() < Duration::from_secs(2) {
            ops.clear();
            for _ in 0..batch {
                ops.push(PersistOp::Accept {
                    slot,
                    ballot: Ballot::new(1, 1),
                    value: value(slot, 100),
                });
                slot += 1;
            }
            s.persist(&ops).unwrap();
            persists += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let st = s.stats();
        println!(
            "{batch:>6} {persists:>10} {:>12.0} {:>12.0} {:>10.1}",
            (st.syncs - syncs0) as f64 / secs,
            slot as f64 / secs,
            (st.bytes_written - bytes0) as f64 / secs / 1e6,
        );
    }
}
