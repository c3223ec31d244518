//! A durable, file-backed [`Storage`](paxos_core::Storage) for `paxos-core`.
//!
//! [`FileStorage`] keeps an acceptor's state (its status and incarnation, its peers'
//! incarnations, promised ballot, accepted and chosen entries, commit point, latest
//! checkpoint) in a data directory: an append-only, segmented write-ahead log whose
//! records carry a length and CRC-32 checksums, plus the checkpoint in a file of its own. [`persist`](paxos_core::Storage::persist) returns
//! only once its operations are on disk, so the node driver, which persists before it
//! sends, never lets a PROMISE or ACCEPTED leave before the state it vouches for.
//!
//! A brand-new directory loads as [`PersistentState::default`](paxos_core::PersistentState::default):
//! status [`Pristine`](paxos_core::AcceptorStatus::Pristine), nothing promised or
//! accepted, so the replica finds out from its peers whether it joins a new cluster or
//! must recover lost state. An existing directory loads exactly what was persisted, a
//! [`Voter`](paxos_core::AcceptorStatus::Voter) as a voter and a
//! [`Recovering`](paxos_core::AcceptorStatus::Recovering) replica as recovering.
//!
//! # Example
//!
//! ```
//! use paxos_core::{Ballot, PersistOp, Storage, StorageError, Value};
//! use paxos_storage_file::{FileStorage, OpenError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! const CLUSTER: u64 = 0xC0FFEE;
//!
//! let mut storage = FileStorage::open(dir.path(), CLUSTER, 1)?;
//! // One call, one write, one fsync: group commit.
//! storage.persist(&[
//!     PersistOp::Promise(Ballot::new(3, 2)),
//!     PersistOp::Accept { slot: 0, ballot: Ballot::new(3, 2), value: Value::Noop },
//!     PersistOp::CommitPoint(1),
//! ])?;
//! assert_eq!(storage.stats().persists, 1);
//! drop(storage);
//!
//! // After a restart (or a crash), the same state comes back.
//! let mut storage = FileStorage::open(dir.path(), CLUSTER, 1)?;
//! let state = storage.load()?;
//! assert_eq!(state.promised, Ballot::new(3, 2));
//! assert_eq!(state.commit_point, 1);
//! assert_eq!(state.log[&0].value, Value::Noop);
//! assert_eq!(state.status, paxos_core::AcceptorStatus::Pristine); // no Status op yet
//!
//! // While it is open, no other FileStorage (in this process or another) may use it.
//! assert!(matches!(
//!     FileStorage::open(dir.path(), CLUSTER, 1),
//!     Err(OpenError::Locked { .. })
//! ));
//! drop(storage);
//!
//! // Another node's directory is refused.
//! assert!(matches!(
//!     FileStorage::open(dir.path(), CLUSTER, 2),
//!     Err(OpenError::Storage(StorageError::Mismatch { .. }))
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! # Files
//!
//! ```text
//! LOCK                              locked while a FileStorage uses the directory
//! META                              identity of the directory
//! wal-00000000000000000001.log      log segments, numbered from 1 with no gaps
//! wal-00000000000000000002.log
//! checkpoint                        the latest checkpoint
//! META.tmp, checkpoint.tmp          leftovers of an interrupted replacement; deleted at start
//! ```
//!
//! All integers are little-endian; CRCs are CRC-32 (IEEE) as computed by `crc32fast`.
//!
//! - **`LOCK`** is empty. [`FileStorage::open`] creates it if needed and takes an
//!   exclusive advisory lock on it (`File::try_lock`) before it reads or changes
//!   anything else, and holds it until the `FileStorage` is dropped (the OS releases it
//!   when the process dies). A second open, from this process or another, fails at once
//!   with [`OpenError::Locked`] and leaves the directory untouched, so a second node
//!   started on a live directory cannot run recovery under the first.
//! - **`META`** (32 bytes): magic `PXSMETA1`, format version (`u32`, currently 2),
//!   cluster id (`u64`), node id (`u64`), CRC of the preceding 28 bytes.
//! - **Segment header** (44 bytes): magic `PXSWALSG`, version, cluster id, node id,
//!   sequence number (`u64`, equal to the one in the file name), kind (`u32`: 1 = base,
//!   2 = continuation), CRC of the preceding 40 bytes.
//! - **Records** follow the header back to back:
//!
//!   ```text
//!   | len: u32 | payload CRC: u32 | CRC of the first 8 bytes: u32 | payload: len bytes |
//!   ```
//!
//!   The payload is a tag byte followed by postcard-encoded items:
//!   `1` = operations ([`PersistOp`](paxos_core::PersistOp)s as they are, every
//!   variant but `Checkpoint`, which has a file of its own),
//!   `2` = base begin (the base header
//!   `(status, incarnation, peer_incarnations, promised, commit_point)`, where
//!   `peer_incarnations` is a map from node id to incarnation, then
//!   `(slot, StoredEntry)` pairs),
//!   `3` = more base entries, `4` = base end (no items). A base segment holds
//!   `2 3* 4 1*`, a continuation segment `1*`. The length is checked by its own CRC, so
//!   a damaged length is never trusted, and no record longer than
//!   [`FileStorageOptions::max_record_size`] is read or written.
//! - **`checkpoint`**: a 44-byte header (magic `PXSCKPT1`, version, cluster id, node id,
//!   payload length `u64`, payload CRC, CRC of the preceding 40 bytes), then the
//!   postcard-encoded [`Checkpoint`](paxos_core::Checkpoint).
//!
//! **Versions.** `META`, every segment header and the checkpoint header carry the same
//! format version, and this build reads and writes version 2 only. Version 1 bases held
//! `(promised, commit_point)` without the acceptor status and incarnations, so they
//! cannot say whether the replica was a voter. A file of any other version (checked
//! after its header CRC, so a damaged version field is reported as damage) is refused
//! with [`OpenError::UnsupportedVersion`], naming the file and the version, and the
//! directory is left as it was; no version is converted. To bring up a node whose
//! directory an older build wrote, move that directory away and start the node on an
//! empty one: it starts [`Pristine`](paxos_core::AcceptorStatus::Pristine) and recovers
//! its state from a majority of its peers, as a node that lost its disk does.
//!
//! # Writing
//!
//! [`persist`](paxos_core::Storage::persist) applies the operations to an in-memory
//! image of the state, then:
//!
//! 1. If the batch holds a checkpoint newer than the stored one, writes it to
//!    `checkpoint.tmp`, fsyncs it, renames it over `checkpoint` and fsyncs the directory:
//!    at once, or on a thread of its own when the log already covers it (below).
//!
//!    **Checkpoints off the replica's path.** A checkpoint the replica took itself
//!    covers slots the log still holds: every slot from the stored checkpoint up to its
//!    slot has an entry below a commit point the log records. Losing it in a crash
//!    loses nothing (recovery loads the previous checkpoint and those entries, the state
//!    the replica had before taking it, and the replica replays them), so it is written
//!    by a background thread and `persist` returns without waiting for it. Until it is
//!    on disk no compaction drops an entry it covers: a `Compact` past the stored
//!    checkpoint (the next checkpoint's, normally long after) first waits for it, as
//!    does a newer checkpoint (one write at a time, never an older one last) and
//!    dropping the storage. A checkpoint installed from a peer covers slots this
//!    replica never had, so it is written before `persist` returns, as are all of them
//!    with [`FileStorageOptions::background_checkpoints`] off. A failure of the
//!    background write fails the next `persist`, like any write error.
//!    [`FileStorageStats::checkpoints_in_background`] and
//!    [`FileStorageStats::background_waits`] count them.
//! 2. If the batch holds a `Compact` that drops entries, starts a new *base* segment
//!    holding the whole image after the batch (status, incarnation, peers'
//!    incarnations, promised ballot, commit point, live entries), fdatasyncs it,
//!    fsyncs the directory and only then deletes every older segment.
//!
//!    **Compactions off the replica's path.** The base holds every live entry (tens of
//!    MiB under a large state), so by default it is written by a thread of its own, to
//!    `base.tmp`, while the batch is appended to the current segment as in 3 below and
//!    `persist` returns. Later batches are appended there too, and kept in memory as
//!    written. Once the base is on disk, the next `persist` appends those records to
//!    it, fdatasyncs it, renames it into place as the newest segment, fsyncs the
//!    directory and deletes the older segments; then it appends its own batch there.
//!    Until the rename the older segments hold every write (recovery ignores and
//!    removes `base.tmp`); after it the new segment does. No new segment is started by
//!    size meanwhile (the base takes the next number), and a compaction that arrives
//!    while a base is being written waits for it, as does dropping the storage.
//!    [`FileStorageOptions::background_compaction`] off writes the base before
//!    `persist` returns, covering every operation of the batch, so nothing else is
//!    written; [`FileStorageStats::compactions_in_background`] counts the others.
//! 3. Otherwise encodes the operations (except checkpoints) as one record — several if
//!    the batch exceeds the maximum record size — and appends them with **one write and
//!    one fdatasync**, however many operations the batch holds (group commit: the driver
//!    folds every input that arrived during the previous fsync into one batch). When the
//!    current segment has reached [`FileStorageOptions::segment_size`], the write goes
//!    into a new continuation segment and the directory is fsynced too.
//!
//! The log therefore never grows much beyond the live entries: each compaction leaves
//! one segment, and segments only accumulate between compactions.
//!
//! # Recovery
//!
//! [`FileStorage::open`] locks the directory, then checks `META` (another format version
//! is refused with [`OpenError::UnsupportedVersion`], another cluster or
//! node id with [`StorageError::Mismatch`](paxos_core::StorageError::Mismatch);
//! a missing `META` next to log data is refused as corrupt), reads and verifies the
//! checkpoint (header, length, CRC and
//! [`Checkpoint::verify`](paxos_core::Checkpoint::verify)), then replays the log from
//! the newest segment that begins with a base; older ones are left over from a
//! compaction interrupted before its cleanup. The segments from there on must be
//! numbered without gaps. All of this only reads: a refused directory is left exactly
//! as it was. Only then does recovery repair: it deletes the `*.tmp` leftovers, cuts a
//! torn tail, deletes superseded segments, and syncs the last segment and the directory
//! (what it read may have been in the page cache only, after a process crash).
//!
//! Only the **last write of the newest segment** can be torn, because every `persist`
//! ends with a sync, and only a torn write cannot have been acknowledged. It is cut off,
//! appending resumes there, and [`FileStorage::recovery`] reports what was cut. A torn
//! write is recognized by what a crash can leave:
//!
//! - an incomplete record header;
//! - a record whose header checks out but whose length runs past the end of the file;
//! - a zero header followed by nothing but zeros (space allocated for a write whose
//!   data never arrived; no record starts with zeros);
//! - a newest segment whose header or base is incomplete (a rotation or compaction
//!   interrupted before its first sync): the whole segment is deleted, and the segment
//!   before it must then be intact.
//!
//! A **complete** record that fails a checksum — its full header is present and not all
//! zeros but fails its CRC, or its header is valid and its whole payload is in the file
//! but fails its CRC — is not a torn write, even as the very last record: a prefix of a
//! written record that reaches that far holds those bytes as written. It was synced,
//! may have been acknowledged (a promise, an accepted value, a commit point), and has
//! been damaged since. `open` refuses it with [`OpenError::DamagedRecord`] naming the
//! file and byte offset, and changes nothing: the node must be recovered from its peers
//! rather than started without it. This assumes the file system never makes a file's
//! size cover data that did not reach the disk except as zero-filled space (ext4 in its
//! default `data=ordered` mode, XFS, btrfs); where zeros can appear *inside* an
//! interrupted record, a crash there is refused as well, a false alarm rather than a
//! lost write. **Anything else** — a record longer than the maximum, an undecodable
//! record, a damaged segment header, a missing segment, a truncated older segment — is reported
//! as [`StorageError::Corrupt`](paxos_core::StorageError::Corrupt) naming the file and
//! byte offset, and the node refuses to start rather than serve wrong data.
//!
//! # Crash safety
//!
//! After a crash at any point, [`load`](paxos_core::Storage::load) returns the state
//! after every `persist` call that returned, plus, for an interrupted call, either
//! nothing of it, a prefix of its records (a batch is one record unless it exceeds the
//! maximum record size), or just its checkpoint; except that a checkpoint still being
//! written in the background may be missing, with the previous one and every log entry
//! it covers in its place (and a compaction whose base was being written in the
//! background may not have happened, the older segments holding the same state). A checkpoint is written first because
//! it is self-contained: it covers slots that were already chosen. A compaction's base
//! supersedes the older segments only once it is complete and synced, so an interrupted
//! compaction recovers the state before it (with the new checkpoint) and a finished one
//! never resurrects compacted entries.
//!
//! Limits: damage that cuts the newest segment short, or zeroes it from a record
//! boundary to its end, looks exactly like a torn write and is cut; so does a
//! device that acknowledges a flush and then loses the data. The directory lock is
//! advisory and local: it keeps out other `FileStorage`s, not other programs, and may
//! not hold across machines on a network file system. With
//! [`FileStorageOptions::sync`] off nothing is fsynced and a machine crash can lose
//! acknowledged writes.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod disk;
mod error;
mod format;
mod recovery;
mod storage;

pub use error::{OpenError, RecordDamage};
pub use storage::{
    FileStorage, FileStorageOptions, FileStorageStats, RecoveryReport, MIN_RECORD_SIZE,
};

#[cfg(test)]
mod tests;
