//! File system calls with error mapping, optional syncing and counters.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use paxos_core::StorageError;

use crate::format::io_err;
use crate::FileStorageStats;

/// The data directory, whether to sync, and the counters of what was done to it.
#[derive(Debug)]
pub(crate) struct Disk {
    pub(crate) dir: PathBuf,
    pub(crate) sync: bool,
    pub(crate) stats: FileStorageStats,
}

impl Disk {
    /// The same directory and syncing, with counters of its own: for a background
    /// writer, whose counters are added to these when it is collected.
    pub(crate) fn with_fresh_counters(&self) -> Disk {
        Disk {
            dir: self.dir.clone(),
            sync: self.sync,
            stats: FileStorageStats::default(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes a file's data (and the size needed to read it) durable.
    pub(crate) fn sync_file(&mut self, f: &File, path: &Path) -> Result<(), StorageError> {
        if self.sync {
            f.sync_data().map_err(|e| io_err("cannot sync", path, e))?;
            self.stats.syncs += 1;
        }
        Ok(())
    }

    /// Makes the directory's entries (created, renamed, removed files) durable.
    pub(crate) fn sync_dir(&mut self) -> Result<(), StorageError> {
        if self.sync {
            sync_dir(&self.dir)?;
            self.stats.syncs += 1;
        }
        Ok(())
    }

    /// Writes `bytes` at the current position of `f`.
    pub(crate) fn write(
        &mut self,
        f: &mut File,
        path: &Path,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        f.write_all(bytes)
            .map_err(|e| io_err("cannot write", path, e))?;
        self.stats.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Creates (or truncates) `path` and writes `bytes` to it, without syncing.
    pub(crate) fn create(&mut self, path: &Path, bytes: &[u8]) -> Result<File, StorageError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io_err("cannot create", path, e))?;
        self.write(&mut f, path, bytes)?;
        Ok(f)
    }

    /// Replaces the file `name` with `bytes` atomically: write a temporary file, sync
    /// it, rename it over `name`, sync the directory.
    pub(crate) fn replace(
        &mut self,
        tmp: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let tmp = self.path(tmp);
        let dst = self.path(name);
        let f = self.create(&tmp, bytes)?;
        self.sync_file(&f, &tmp)?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(|e| io_err("cannot rename into place", &dst, e))?;
        self.sync_dir()
    }

    /// Removes a file; a file that is already gone is fine.
    pub(crate) fn remove(&mut self, path: &Path) -> Result<(), StorageError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", path, e)),
        }
    }
}

#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

/// Directories cannot be opened as files here; renames are durable once the file
/// system's own journal says so.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), StorageError> {
    Ok(())
}
