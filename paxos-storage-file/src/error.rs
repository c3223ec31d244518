//! [`OpenError`]: why a data directory was refused.

use std::fmt;
use std::path::PathBuf;

use paxos_core::StorageError;
use thiserror::Error;

/// Why [`FileStorage::open`](crate::FileStorage::open) refused a data directory.
///
/// Every refusal leaves the directory as it was (apart from creating the directory and
/// its empty `LOCK` file if they did not exist). It converts into a
/// [`StorageError`] for callers that only deal in those, keeping itself as the
/// cause: [`OpenError::Locked`] as [`StorageError::Io`], [`OpenError::DamagedRecord`]
/// as [`StorageError::Corrupt`], [`OpenError::UnsupportedVersion`] as
/// [`StorageError::Mismatch`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another [`FileStorage`](crate::FileStorage) holds the directory's `LOCK` file:
    /// another process (a second node started on the same directory), or another
    /// handle in this one. Nothing in the directory was read or changed.
    #[error("data directory {} is in use by another process", dir.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// A complete log record is damaged: its bytes are all in the file, so it was
    /// written before the last sync and may have been acknowledged (a promise, an
    /// accepted value, a commit point). Starting without it could break Paxos; the node
    /// must be recovered from its peers instead. Nothing in the directory was changed.
    #[error(
        "{}: offset {offset}: {damage} in a complete log record, which may have been \
         acknowledged; refusing to start without it (recover this node from its peers)",
        file.display()
    )]
    DamagedRecord {
        /// The log segment holding the record.
        file: PathBuf,
        /// The byte offset of the record's header in that file.
        offset: u64,
        /// What is wrong with it.
        damage: RecordDamage,
    },
    /// A file of the directory (`META`, a log segment or the checkpoint) was written in
    /// an on-disk format version this build does not read: an older build's directory
    /// (version 1 bases lack the acceptor status and incarnations) or a newer build's.
    /// Nothing in the directory was changed. See the crate documentation ("Files") for
    /// what to do with an older directory.
    #[error(
        "{}: on-disk format version {found} is not supported (this build reads version \
         {supported} only)",
        file.display()
    )]
    UnsupportedVersion {
        /// The file whose header names the version.
        file: PathBuf,
        /// The version found in it.
        found: u32,
        /// The only version this build reads and writes.
        supported: u32,
    },
    /// Any other refusal: another cluster's or node's data
    /// ([`StorageError::Mismatch`]), other damage ([`StorageError::Corrupt`], naming
    /// the file and offset), or a failing file system ([`StorageError::Io`]).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How a complete log record is damaged (see [`OpenError::DamagedRecord`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordDamage {
    /// A full, not all-zero record header fails its own checksum.
    HeaderChecksum,
    /// The header is intact and the whole payload is in the file, but the payload
    /// fails its checksum.
    PayloadChecksum,
}

impl fmt::Display for RecordDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordDamage::HeaderChecksum => "record header checksum mismatch",
            RecordDamage::PayloadChecksum => "record checksum mismatch",
        })
    }
}

impl From<OpenError> for StorageError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Locked { .. } => {
                StorageError::io_because("cannot lock the data directory", e)
            }
            // Intact data that this build cannot use, like another replica's.
            OpenError::UnsupportedVersion { .. } => {
                StorageError::mismatch_because("unsupported on-disk format", e)
            }
            OpenError::DamagedRecord { .. } => {
                StorageError::corrupt_because("damaged log record", e)
            }
            OpenError::Storage(e) => e,
        }
    }
}
