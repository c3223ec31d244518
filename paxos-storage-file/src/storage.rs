//! [`FileStorage`]: the durable [`Storage`].

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use paxos_core::{PersistOp, PersistentState, Storage, StorageError};
use tracing::{info, warn};

use crate::disk::{sync_dir, Disk};
use crate::format::*;
use crate::recovery::{list_dir, plan_log, read_checkpoint, read_meta};
use crate::OpenError;

/// The smallest accepted [`FileStorageOptions::max_record_size`].
pub const MIN_RECORD_SIZE: u32 = 4096;

/// Settings of a [`FileStorage`].
///
/// ```
/// use paxos_storage_file::FileStorageOptions;
///
/// let options = FileStorageOptions {
///     segment_size: 16 << 20,
///     ..FileStorageOptions::default()
/// };
/// assert!(options.sync);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStorageOptions {
    /// A segment that has reached this many bytes is closed and the next write starts a
    /// new one. A single write larger than this still goes into one segment.
    /// Default 64 MiB.
    pub segment_size: u64,
    /// The largest record written or accepted when reading, in bytes. A batch is split
    /// over several records when needed; a single operation larger than this is
    /// refused by [`persist`](Storage::persist). Reading a record that claims to be
    /// larger is reported as corruption instead of allocating it. Values below
    /// [`MIN_RECORD_SIZE`] are raised to it. Default 64 MiB.
    pub max_record_size: u32,
    /// The largest checkpoint file accepted, in bytes (read and write). Default 4 GiB.
    pub max_checkpoint_size: u64,
    /// Whether to fsync. Default `true`. **`false` gives up durability**: a crash of the
    /// machine (not only of the process) can lose writes that `persist` acknowledged,
    /// and an acceptor that forgets a promise or an accepted value breaks Paxos. Only
    /// for tests and benchmarks.
    pub sync: bool,
    /// Whether a checkpoint the log already covers is written on a background thread,
    /// so that `persist` returns without waiting for it (default `true`). See
    /// [`FileStorage`]'s "Checkpoints off the replica's path"; `false` writes every
    /// checkpoint before `persist` returns.
    pub background_checkpoints: bool,
    /// Whether a compaction's new base segment (the whole live log, rewritten) is
    /// written on a background thread, so that `persist` returns after one append to
    /// the current segment (default `true`). See [`FileStorage`]'s "Compactions off the
    /// replica's path"; `false` writes and syncs the base before `persist` returns.
    pub background_compaction: bool,
    /// A deliberately broken variant to run instead of the real code, in this crate's
    /// own tests only (see [`Broken`]); `None` (the default) runs the real code.
    #[cfg(test)]
    pub(crate) broken: Option<Broken>,
    /// Tests only: the background writer waits this long before it writes.
    #[cfg(test)]
    pub(crate) background_delay: std::time::Duration,
}

/// Deliberately broken variants of the safety rules of [`FileStorage::open`], compiled
/// only for this crate's own tests. Each undoes one fix, and a test shows that the
/// checks of the real tests fail against it (`broken_variants` in `tests.rs`), so the
/// tests are proved, on every run, to still be able to catch the bug they guard
/// against. Switched on through [`FileStorageOptions`]' test-only `broken` field.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    /// The `LOCK` file is opened but never locked, so a second open of a live directory
    /// succeeds (and runs recovery under the first).
    NoLock,
    /// The behaviour before damaged records were refused: a complete last record of the
    /// newest segment whose payload fails its checksum is cut as if torn, losing a write
    /// that may have been acknowledged.
    CutDamagedTail,
    /// Every new checkpoint is written in the background, including one the log does
    /// not cover (a checkpoint installed from a peer): a crash before it is written
    /// leaves a commit point above a log with holes or unchosen values.
    BackgroundAlways,
    /// A compaction's base written in the background replaces the older segments
    /// without the records appended to them while it was being written: a crash
    /// after the switch loses those writes.
    BaseWithoutSince,
}

impl Default for FileStorageOptions {
    fn default() -> Self {
        FileStorageOptions {
            segment_size: 64 << 20,
            max_record_size: 64 << 20,
            max_checkpoint_size: 4 << 30,
            sync: true,
            background_checkpoints: true,
            background_compaction: true,
            #[cfg(test)]
            broken: None,
            #[cfg(test)]
            background_delay: std::time::Duration::ZERO,
        }
    }
}

/// Counters of what a [`FileStorage`] did since it was opened (recovery included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStorageStats {
    /// fsync/fdatasync calls on files and on the directory (0 when syncing is off).
    /// A `persist` of plain operations costs exactly one; a new segment, a checkpoint
    /// or a compaction costs one or two more each.
    pub syncs: u64,
    /// Bytes written to log segments, checkpoint files and `META`.
    pub bytes_written: u64,
    /// Calls to `persist` with at least one operation.
    pub persists: u64,
    /// Operations persisted.
    pub ops: u64,
    /// Log segments created (by rotation, compaction or initialization).
    pub segments_created: u64,
    /// Compactions: segments started with a base, after which older ones are deleted.
    pub compactions: u64,
    /// Checkpoint files written.
    pub checkpoints_written: u64,
    /// Of which on the background thread (after `persist` returned).
    pub checkpoints_in_background: u64,
    /// Times `persist` waited for a background write to finish: a checkpoint (a newer
    /// checkpoint, or a compaction that needs it, arrived first) or a compaction's base
    /// (the next compaction arrived first).
    pub background_waits: u64,
    /// Compactions whose base was written on the background thread.
    pub compactions_in_background: u64,
}

/// What [`FileStorage::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The data directory was new (or had no `META`) and was initialized.
    pub created: bool,
    /// Log segments replayed.
    pub segments_replayed: usize,
    /// Log records replayed.
    pub records_replayed: u64,
    /// Bytes of a torn last write that were cut off the last segment.
    pub torn_bytes_discarded: u64,
    /// Segments deleted because they held only an interrupted write (a header or a
    /// base that never completely reached the disk).
    pub segments_discarded: usize,
    /// Segments deleted because a newer base supersedes them (a compaction that was
    /// interrupted before its cleanup).
    pub segments_removed: usize,
}

/// A durable [`Storage`] in a data directory: a segmented write-ahead log plus the
/// latest checkpoint. See the [crate documentation](crate) for the format and the
/// recovery rules.
///
/// One `FileStorage` at a time may use a directory: it holds an exclusive lock on the
/// directory's `LOCK` file from [`open`](Self::open) until it is dropped, and a second
/// open, from this process or another, fails with [`OpenError::Locked`].
#[derive(Debug)]
pub struct FileStorage {
    disk: Disk,
    cluster_id: u64,
    node_id: u64,
    options: FileStorageOptions,
    /// The state as of every persisted operation: what `load` returns and what a
    /// compaction writes as the new base.
    state: PersistentState,
    /// The segments on disk that recovery would replay, oldest first; the last one is
    /// open for appending.
    segments: Vec<u64>,
    segment: File,
    segment_len: u64,
    /// Where the current segment's appended records start (after its header and base).
    segment_start_len: u64,
    buf: Vec<u8>,
    recovery: RecoveryReport,
    /// Set when a write failed: the files may no longer match `state`.
    failed: Option<StorageError>,
    /// The slot of the checkpoint in the `checkpoint` file (0 without one): log
    /// entries from here up are never compacted away.
    durable_checkpoint: u64,
    /// The commit point the log itself records (without the raise of a checkpoint that
    /// may not be written yet).
    logged_commit: u64,
    /// The checkpoint being written on the background thread, if any.
    background: Option<BackgroundWrite>,
    /// The compaction base being written on a background thread, if any.
    base: Option<BackgroundBase>,
    /// The directory's `LOCK` file, exclusively locked for as long as this value lives
    /// (released when it is dropped, or by the OS when the process dies). Declared
    /// last: it is released after the background write is joined (see `Drop`).
    _lock: File,
}

/// A compaction's base segment being written by a thread of its own, to `base.tmp`,
/// until it replaces the older segments as segment number `seq`.
#[derive(Debug)]
struct BackgroundBase {
    seq: u64,
    /// The file (positioned at its end) and its length once the base is written and
    /// synced, with the thread's counters.
    thread: std::thread::JoinHandle<Result<(File, u64, FileStorageStats), StorageError>>,
    /// The records appended to the log after the compaction's batch, in order: they
    /// follow the base in the new segment before it replaces the older ones.
    since: Vec<u8>,
}

/// A checkpoint file being written by a thread of its own.
#[derive(Debug)]
struct BackgroundWrite {
    slot: u64,
    thread: std::thread::JoinHandle<Result<FileStorageStats, StorageError>>,
}

impl FileStorage {
    /// Opens the data directory `dir` for replica `node_id` of cluster `cluster_id`
    /// with default options, creating and initializing it if it does not exist.
    ///
    /// The directory is locked first (its `LOCK` file, created if missing) and stays
    /// locked until the `FileStorage` is dropped; nothing else in it is read or changed
    /// before that, and nothing at all when the open is refused.
    ///
    /// Errors: [`OpenError::Locked`] when another `FileStorage` (in this process or
    /// another) uses the directory; [`OpenError::DamagedRecord`] when a complete log
    /// record fails its checksum (it may have been acknowledged, so the node must be
    /// recovered from its peers); [`OpenError::UnsupportedVersion`] when a file was
    /// written in another on-disk format version; [`OpenError::Storage`] with
    /// [`StorageError::Mismatch`] when the directory belongs to another cluster or node,
    /// [`StorageError::Corrupt`] when its contents are otherwise damaged (anything but
    /// a torn last write, which is discarded), [`StorageError::Io`] when the file system
    /// fails.
    pub fn open(dir: impl AsRef<Path>, cluster_id: u64, node_id: u64) -> Result<Self, OpenError> {
        Self::open_with(dir, cluster_id, node_id, FileStorageOptions::default())
    }

    /// [`open`](Self::open) with explicit options.
    pub fn open_with(
        dir: impl AsRef<Path>,
        cluster_id: u64,
        node_id: u64,
        mut options: FileStorageOptions,
    ) -> Result<Self, OpenError> {
        options.max_record_size = options.max_record_size.max(MIN_RECORD_SIZE);
        let dir = dir.as_ref().to_path_buf();
        let created_dir = create_dir(&dir, options.sync)?;
        // Before anything in the directory is read, created, deleted or truncated.
        #[cfg(not(test))]
        let lock = lock_dir(&dir)?;
        #[cfg(test)]
        let lock = match options.broken {
            // Deliberately broken (tests only): the lock file is never locked.
            Some(Broken::NoLock) => open_lock_file(&dir)?.0,
            _ => lock_dir(&dir)?,
        };
        let mut disk = Disk {
            dir: dir.clone(),
            sync: options.sync,
            stats: FileStorageStats::default(),
        };
        let mut recovery = RecoveryReport::default();

        // Look without touching: every refusal below leaves the directory as it was.
        let (segments, has_checkpoint) = list_dir(&dir)?;
        let has_meta = read_meta(&disk.path(META_FILE), cluster_id, node_id)?;
        if !has_meta && (!segments.is_empty() || has_checkpoint) {
            return Err(StorageError::corrupt(format!(
                "{}: the META file is missing but the directory holds log data; \
                 refusing to guess which replica it belongs to",
                dir.display()
            ))
            .into());
        }
        let checkpoint = read_checkpoint(
            &disk.path(CHECKPOINT_FILE),
            cluster_id,
            node_id,
            options.max_checkpoint_size,
        )?;
        let plan = plan_log(segments, cluster_id, node_id, &options)?;
        if plan.is_none() && checkpoint.is_some() {
            return Err(StorageError::corrupt(format!(
                "{}: a checkpoint exists but every log segment is missing",
                dir.display()
            ))
            .into());
        }

        // Repair. Leftovers of an interrupted replacement: the real file is intact.
        disk.remove(&disk.path(META_TMP))?;
        disk.remove(&disk.path(CHECKPOINT_TMP))?;
        disk.remove(&disk.path(BASE_TMP))?;
        if !has_meta {
            disk.replace(META_TMP, META_FILE, &encode_meta(cluster_id, node_id))?;
            recovery.created = true;
        }
        let mut buf = Vec::new();
        let (mut state, segments, segment, segment_len, segment_start_len) = match plan {
            Some(plan) => {
                let (r, f) = plan.apply(&mut disk, &mut recovery)?;
                (r.state, r.segments, f, r.last_len, r.last_start_len)
            }
            None => {
                let state = PersistentState::default();
                encode_segment_header(&mut buf, cluster_id, node_id, 1, KIND_BASE);
                encode_base(&mut buf, &state, options.max_record_size)?;
                let path = disk.path(&segment_name(1));
                let f = disk.create(&path, &buf)?;
                disk.sync_file(&f, &path)?;
                disk.sync_dir()?;
                disk.stats.segments_created += 1;
                let len = buf.len() as u64;
                (state, vec![1], f, len, len)
            }
        };
        let logged_commit = state.commit_point;
        let durable_checkpoint = checkpoint.as_ref().map_or(0, |c| c.slot);
        if let Some(cp) = checkpoint {
            state.commit_point = state.commit_point.max(cp.slot);
            state.checkpoint = Some(cp);
        }
        if created_dir {
            recovery.created = true;
        }
        info!(
            dir = %dir.display(),
            cluster = cluster_id,
            node = node_id,
            status = ?state.status,
            incarnation = state.incarnation,
            promised = %state.promised,
            commit_point = state.commit_point,
            entries = state.log.len(),
            checkpoint = ?state.checkpoint.as_ref().map(|c| c.slot),
            segments = segments.len(),
            torn_bytes = recovery.torn_bytes_discarded,
            "file storage opened"
        );
        Ok(FileStorage {
            disk,
            cluster_id,
            node_id,
            options,
            state,
            segments,
            segment,
            segment_len,
            segment_start_len,
            buf,
            recovery,
            failed: None,
            durable_checkpoint,
            logged_commit,
            background: None,
            base: None,
            _lock: lock,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.disk.dir
    }

    /// The options in force.
    pub fn options(&self) -> &FileStorageOptions {
        &self.options
    }

    /// Counters since the storage was opened.
    pub fn stats(&self) -> FileStorageStats {
        self.disk.stats
    }

    /// What recovery found when the storage was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The stored state, for inspection (what [`load`](Storage::load) returns).
    pub fn state(&self) -> &PersistentState {
        &self.state
    }

    /// The log segment files currently in use, oldest first.
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|seq| self.disk.path(&segment_name(*seq)))
            .collect()
    }

    /// Waits for the checkpoint being written in the background, if any (it is
    /// durable when this returns `Ok`). Like `persist`, refused after a failed write,
    /// and a failure here fails the storage.
    pub fn wait_for_checkpoint(&mut self) -> Result<(), StorageError> {
        self.latched(|s| s.reap_background(true))
    }

    /// Waits for the compaction base being written in the background, if any, and
    /// puts it in place of the older segments. Like `persist`, refused after a failed
    /// write, and a failure here fails the storage.
    pub fn wait_for_compaction(&mut self) -> Result<(), StorageError> {
        self.latched(|s| s.finish_base(true))
    }

    /// Runs `f` as `persist` runs its writes: refused after an earlier failure, and
    /// a failure of its own fails the storage (the files may no longer match).
    fn latched(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if let Some(e) = &self.failed {
            return Err(refused_after(e));
        }
        let result = f(self);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Collects the background write if it has finished (or, with `wait`, once it
    /// has): its counters, and its error, which fails the storage like any write.
    fn reap_background(&mut self, wait: bool) -> Result<(), StorageError> {
        let Some(bg) = self
            .background
            .take_if(|bg| wait || bg.thread.is_finished())
        else {
            return Ok(());
        };
        if !bg.thread.is_finished() {
            self.disk.stats.background_waits += 1;
        }
        let stats = bg.thread.join().unwrap_or_else(|_| {
            Err(StorageError::io(
                "the thread writing a checkpoint in the background panicked",
            ))
        })?;
        let total = &mut self.disk.stats;
        total.syncs += stats.syncs;
        total.bytes_written += stats.bytes_written;
        total.checkpoints_written += stats.checkpoints_written;
        total.checkpoints_in_background += stats.checkpoints_written;
        self.durable_checkpoint = self.durable_checkpoint.max(bg.slot);
        self.logged_commit = self.logged_commit.max(bg.slot);
        Ok(())
    }

    /// Whether the new checkpoint (already applied to `state`) may be written after
    /// `persist` returns: only when losing it in a crash loses nothing, because the
    /// log holds what it covers. That is, every slot from the durable checkpoint up to
    /// its slot has an entry, below the commit point the log records, and no
    /// compaction of this batch goes past the durable checkpoint. A checkpoint taken by
    /// the replica itself qualifies; one installed from a peer (which covers slots
    /// this replica never had, or raises its commit point) does not.
    fn may_write_later(&self, slot: u64, max_compact: u64, logged_commit: u64) -> bool {
        #[cfg(test)]
        if self.options.broken == Some(Broken::BackgroundAlways) {
            return true;
        }
        let from = self.durable_checkpoint;
        self.options.background_checkpoints
            && max_compact <= from
            && slot <= logged_commit
            && from <= slot
            && self.state.log.range(from..slot).count() as u64 == slot - from
    }

    /// Starts writing the stored checkpoint on a thread of its own.
    fn write_checkpoint_later(&mut self) -> Result<(), StorageError> {
        let Some(cp) = self.state.checkpoint.clone() else {
            return Ok(());
        };
        self.check_checkpoint_size(&cp)?;
        let mut disk = self.disk.with_fresh_counters();
        let (cluster_id, node_id) = (self.cluster_id, self.node_id);
        #[cfg(test)]
        let delay = self.options.background_delay;
        let slot = cp.slot;
        let thread = std::thread::Builder::new()
            .name(format!("checkpoint-{node_id}"))
            .spawn(move || {
                #[cfg(test)]
                std::thread::sleep(delay);
                write_checkpoint_file(&mut disk, cluster_id, node_id, &cp)?;
                Ok(disk.stats)
            })
            .map_err(|e| StorageError::io_because("cannot start the checkpoint writer", e))?;
        self.background = Some(BackgroundWrite { slot, thread });
        Ok(())
    }

    fn check_checkpoint_size(&self, cp: &paxos_core::Checkpoint) -> Result<(), StorageError> {
        // The encoded checkpoint is its data plus a few bytes of slot, digest and length.
        if cp.data.len() as u64 + 32 > self.options.max_checkpoint_size {
            return Err(StorageError::io(format!(
                "the checkpoint at slot {} holds {} bytes, more than the maximum checkpoint size of {} bytes",
                cp.slot,
                cp.data.len(),
                self.options.max_checkpoint_size
            )));
        }
        Ok(())
    }

    fn persist_ops(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.reap_background(false)?;
        // A finished compaction base takes over before this batch is appended.
        self.finish_base(false)?;
        let max_compact = ops
            .iter()
            .filter_map(|op| match op {
                PersistOp::Compact(below) => Some(*below),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // A compaction past the durable checkpoint needs the one being written.
        if max_compact > self.durable_checkpoint && self.background.is_some() {
            self.reap_background(true)?;
        }
        // Update the in-memory image first, noting what needs more than an append.
        let mut new_checkpoint = false;
        let mut compacted = false;
        let mut logged = 0;
        // The commit point the log records where the checkpoint comes in the batch:
        // one raised after it (as an install raises it) does not vouch for its slots.
        let mut commit_at_checkpoint = self.logged_commit;
        for op in ops {
            match op {
                PersistOp::Checkpoint(cp) => {
                    if !cp.verify() {
                        return Err(StorageError::corrupt(format!(
                            "refusing to store the checkpoint at slot {}: its data does not match its digest",
                            cp.slot
                        )));
                    }
                    if self
                        .state
                        .checkpoint
                        .as_ref()
                        .is_none_or(|old| old.slot < cp.slot)
                    {
                        new_checkpoint = true;
                        commit_at_checkpoint = self.logged_commit;
                    }
                }
                PersistOp::Compact(below) => {
                    if self.state.log.range(..*below).next().is_some() {
                        compacted = true;
                    }
                    logged += 1;
                }
                PersistOp::CommitPoint(c) => {
                    self.logged_commit = self.logged_commit.max(*c);
                    logged += 1;
                }
                _ => logged += 1,
            }
            paxos_core::apply_op(&mut self.state, op);
        }
        let stats = &mut self.disk.stats;
        stats.persists += 1;
        stats.ops += ops.len() as u64;

        // 1. The checkpoint, before anything that may drop the entries it covers: after
        //    the one in progress (never two at once, never an older one last), then
        //    now, or in the background when the log covers it (`may_write_later`).
        if new_checkpoint {
            self.reap_background(true)?;
            let slot = self.state.checkpoint.as_ref().map_or(0, |c| c.slot);
            if self.may_write_later(slot, max_compact, commit_at_checkpoint) {
                self.write_checkpoint_later()?;
            } else {
                self.write_checkpoint()?;
                self.durable_checkpoint = slot;
                self.logged_commit = self.logged_commit.max(slot);
            }
        }
        // 2a. A compaction rewrites the whole state as the base of a new segment, which
        //     covers every operation of the batch: now, or on a thread of its own while
        //     this batch is appended to the current segment as any other (2b).
        let mut base_started = false;
        if compacted {
            if !self.options.background_compaction {
                return self.compact();
            }
            // One at a time: the previous one takes over first.
            self.finish_base(true)?;
            self.start_base()?;
            base_started = true;
        }
        // 2b. Otherwise the operations (checkpoints excepted: they live in their own
        //     file) are appended to the log with one write and one sync.
        if logged == 0 {
            return Ok(());
        }
        self.buf.clear();
        {
            let mut w = RecordWriter::new(&mut self.buf, self.options.max_record_size);
            w.begin(TAG_OPS);
            for op in ops {
                if !matches!(op, PersistOp::Checkpoint(_)) {
                    w.item(op, TAG_OPS)?;
                }
            }
        }
        // No rotation while a base is being written: it takes the next number.
        let new_segment = self.base.is_none()
            && self.segment_len > self.segment_start_len
            && self.segment_len + self.buf.len() as u64 > self.options.segment_size;
        if new_segment {
            self.start_segment(KIND_CONTINUATION)?;
        }
        let seq = self.current_seq();
        let disk = &mut self.disk;
        let path = disk.path(&segment_name(seq));
        disk.write(&mut self.segment, &path, &self.buf)?;
        self.segment_len += self.buf.len() as u64;
        disk.sync_file(&self.segment, &path)?;
        if new_segment {
            disk.sync_dir()?;
        }
        if let Some(base) = &mut self.base {
            if !base_started {
                base.since.extend_from_slice(&self.buf);
            }
        }
        self.trim_buffer();
        Ok(())
    }

    /// Starts writing the current state as the base of the next segment, on a thread
    /// of its own, to `base.tmp` (which recovery ignores and removes): see
    /// [`finish_base`](Self::finish_base) for how it takes over.
    fn start_base(&mut self) -> Result<(), StorageError> {
        let seq = self
            .current_seq()
            .checked_add(1)
            .ok_or_else(|| StorageError::io("log segment sequence numbers are exhausted"))?;
        let state = self.state.clone();
        let mut disk = self.disk.with_fresh_counters();
        let (cluster_id, node_id) = (self.cluster_id, self.node_id);
        let max_record_size = self.options.max_record_size;
        #[cfg(test)]
        let delay = self.options.background_delay;
        let thread = std::thread::Builder::new()
            .name(format!("compaction-{node_id}"))
            .spawn(move || {
                #[cfg(test)]
                std::thread::sleep(delay);
                let mut head = Vec::new();
                encode_segment_header(&mut head, cluster_id, node_id, seq, KIND_BASE);
                encode_base(&mut head, &state, max_record_size)?;
                drop(state);
                let path = disk.path(BASE_TMP);
                let f = disk.create(&path, &head)?;
                disk.sync_file(&f, &path)?;
                disk.stats.segments_created += 1;
                Ok((f, head.len() as u64, disk.stats))
            })
            .map_err(|e| StorageError::io_because("cannot start the compaction writer", e))?;
        self.base = Some(BackgroundBase {
            seq,
            thread,
            since: Vec::new(),
        });
        Ok(())
    }

    /// Once the base being written in the background is on disk (or, with `wait`,
    /// after waiting for it): appends the records written to the log since its batch,
    /// syncs it, renames it into place as the newest segment, syncs the directory and
    /// deletes the older segments, as a synchronous compaction does. Until the rename
    /// the older segments hold every write, so a crash at any point recovers them; once
    /// it is in place the new segment holds every write too.
    fn finish_base(&mut self, wait: bool) -> Result<(), StorageError> {
        let Some(base) = self.base.take_if(|b| wait || b.thread.is_finished()) else {
            return Ok(());
        };
        if !base.thread.is_finished() {
            self.disk.stats.background_waits += 1;
        }
        let (mut file, base_len, stats) = base.thread.join().unwrap_or_else(|_| {
            Err(StorageError::io(
                "the thread writing a compaction base in the background panicked",
            ))
        })?;
        let total = &mut self.disk.stats;
        total.syncs += stats.syncs;
        total.bytes_written += stats.bytes_written;
        total.segments_created += stats.segments_created;
        let tmp = self.disk.path(BASE_TMP);
        #[allow(unused_mut)]
        let mut since: &[u8] = &base.since;
        #[cfg(test)]
        if self.options.broken == Some(Broken::BaseWithoutSince) {
            since = &[];
        }
        if !since.is_empty() {
            self.disk.write(&mut file, &tmp, since)?;
            self.disk.sync_file(&file, &tmp)?;
        }
        if Some(base.seq) != self.current_seq().checked_add(1) {
            // Another segment took the base's number (nothing should start one while a
            // base is being written): renaming over it would lose its writes.
            return Err(StorageError::io(format!(
                "the compaction base was numbered {} but the newest segment is {}",
                base.seq,
                self.current_seq()
            )));
        }
        let path = self.disk.path(&segment_name(base.seq));
        fs::rename(&tmp, &path).map_err(|e| io_err("cannot rename into place", &path, e))?;
        // From here on the new segment is the one recovery replays (once the rename is
        // durable): write there, even if syncing the directory fails below.
        let mut old = std::mem::replace(&mut self.segments, vec![base.seq]);
        old.retain(|seq| *seq != base.seq);
        self.segment = file;
        self.segment_start_len = base_len;
        self.segment_len = base_len + since.len() as u64;
        self.disk.sync_dir()?;
        self.disk.stats.compactions += 1;
        self.disk.stats.compactions_in_background += 1;
        self.remove_segments(old);
        Ok(())
    }

    /// Deletes compacted segments; one that cannot be removed is left for recovery.
    fn remove_segments(&mut self, seqs: Vec<u64>) {
        for seq in seqs {
            let path = self.disk.path(&segment_name(seq));
            if let Err(e) = self.disk.remove(&path) {
                warn!(error = %e, "cannot remove a compacted log segment; it is retried at the next start");
            }
        }
    }

    fn current_seq(&self) -> u64 {
        self.segments.last().copied().unwrap_or(1)
    }

    /// Creates the next segment and writes its header (and, for a base segment, the
    /// current state as its base), without syncing.
    fn start_segment(&mut self, kind: u32) -> Result<(), StorageError> {
        let seq = self
            .current_seq()
            .checked_add(1)
            .ok_or_else(|| StorageError::io("log segment sequence numbers are exhausted"))?;
        let mut head = Vec::new();
        encode_segment_header(&mut head, self.cluster_id, self.node_id, seq, kind);
        if kind == KIND_BASE {
            encode_base(&mut head, &self.state, self.options.max_record_size)?;
        }
        let disk = &mut self.disk;
        let path = disk.path(&segment_name(seq));
        self.segment = disk.create(&path, &head)?;
        disk.stats.segments_created += 1;
        self.segments.push(seq);
        self.segment_len = head.len() as u64;
        self.segment_start_len = self.segment_len;
        Ok(())
    }

    fn write_checkpoint(&mut self) -> Result<(), StorageError> {
        let Some(cp) = &self.state.checkpoint else {
            return Ok(());
        };
        self.check_checkpoint_size(cp)?;
        write_checkpoint_file(&mut self.disk, self.cluster_id, self.node_id, cp)
    }

    /// Starts a segment whose base is the whole current state, makes it durable, then
    /// deletes every older segment.
    fn compact(&mut self) -> Result<(), StorageError> {
        let old: Vec<u64> = self.segments.clone();
        self.start_segment(KIND_BASE)?;
        let seq = self.current_seq();
        let disk = &mut self.disk;
        let path = disk.path(&segment_name(seq));
        disk.sync_file(&self.segment, &path)?;
        disk.sync_dir()?;
        disk.stats.compactions += 1;
        // The new base is durable: older segments are dead. A crash before their
        // removal is harmless, recovery starts at the newest base and removes them.
        self.segments.drain(..self.segments.len() - 1);
        self.remove_segments(old);
        Ok(())
    }

    /// Keeps the write buffer from holding on to the memory of an unusually big batch.
    fn trim_buffer(&mut self) {
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::new();
        }
    }
}

impl Storage for FileStorage {
    fn load(&mut self) -> Result<PersistentState, StorageError> {
        if let Some(e) = &self.failed {
            return Err(refused_after(e));
        }
        Ok(self.state.clone())
    }

    /// Applies `ops` in order and returns once they are durable: normally one write
    /// and one fdatasync for the whole slice, however many operations it holds.
    ///
    /// After an error the storage refuses every further call: what is on disk may be
    /// behind what was applied in memory. Reopen it to recover.
    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        if let Some(e) = &self.failed {
            return Err(refused_after(e));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let result = self.persist_ops(ops);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }
}

impl Drop for FileStorage {
    /// Finishes the checkpoint and the compaction base being written in the
    /// background, if any, before the directory is unlocked: a clean shutdown leaves
    /// them on disk.
    fn drop(&mut self) {
        if let Err(e) = self.reap_background(true) {
            warn!(error = %e, "the checkpoint being written when the storage closed was not stored");
        }
        if self.failed.is_some() {
            // The files may not match the image: leave them as they are for recovery,
            // but never leave a thread writing in an unlocked directory.
            if let Some(base) = self.base.take() {
                let _ = base.thread.join();
            }
        } else if let Err(e) = self.finish_base(true) {
            warn!(error = %e, "the compaction being written when the storage closed did not finish; the older segments still hold the log");
        }
    }
}

/// Writes `cp` to the checkpoint file, atomically (see [`Disk::replace`]).
fn write_checkpoint_file(
    disk: &mut Disk,
    cluster_id: u64,
    node_id: u64,
    cp: &paxos_core::Checkpoint,
) -> Result<(), StorageError> {
    let payload = postcard::to_stdvec(cp)
        .map_err(|e| StorageError::io_because("cannot encode the checkpoint", e))?;
    let mut bytes = Vec::with_capacity(CHECKPOINT_HEADER_LEN + payload.len());
    encode_checkpoint_header(&mut bytes, cluster_id, node_id, &payload);
    bytes.extend_from_slice(&payload);
    drop(payload);
    disk.replace(CHECKPOINT_TMP, CHECKPOINT_FILE, &bytes)?;
    disk.stats.checkpoints_written += 1;
    Ok(())
}

/// The error of every call after a failed write, keeping that failure as its cause.
fn refused_after(failure: &StorageError) -> StorageError {
    StorageError::io_because(
        "an earlier write failed (reopen the storage to recover)",
        failure.clone(),
    )
}

/// Appends the records of a base holding `state` (checkpoint excepted) to `buf`.
pub(crate) fn encode_base(
    buf: &mut Vec<u8>,
    state: &PersistentState,
    max_record_size: u32,
) -> Result<(), StorageError> {
    let mut w = RecordWriter::new(buf, max_record_size);
    w.begin(TAG_BASE_BEGIN);
    let header = BaseHeader {
        status: state.status,
        incarnation: state.incarnation,
        peer_incarnations: state.peer_incarnations.clone(),
        promised: state.promised,
        commit_point: state.commit_point,
    };
    w.item(&header, TAG_BASE_MORE)?;
    for (slot, entry) in &state.log {
        w.item(&(slot, entry), TAG_BASE_MORE)?;
    }
    w.begin(TAG_BASE_END);
    w.finish();
    Ok(())
}

/// Creates `dir` if needed; true when it was created (and its parent synced).
fn create_dir(dir: &Path, sync: bool) -> Result<bool, StorageError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(StorageError::io(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| io_err("cannot create directory", dir, e))?;
            if sync {
                let parent = dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                sync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) => Err(io_err("cannot stat", dir, e)),
    }
}

/// Opens (creating it if missing) and exclusively locks the directory's `LOCK` file.
/// The lock is advisory: it keeps out other `FileStorage`s, in this process or another.
fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let (f, path) = open_lock_file(dir)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(TryLockError::WouldBlock) => Err(OpenError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(io_err("cannot lock", &path, e).into()),
    }
}

/// Opens (creating it if missing) the directory's `LOCK` file, without locking it.
fn open_lock_file(dir: &Path) -> Result<(File, PathBuf), StorageError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err("cannot open the lock file", &path, e))?;
    Ok((f, path))
}
