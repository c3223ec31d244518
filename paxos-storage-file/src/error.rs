//! [`OpenError`]: why a data directory was refused.

use std::fmt;
use std::path::PathBuf;

use paxos_core::StorageError;
use thiserror::Error;

/// Why [`FileStorage::open`](crate::FileStorage::open) refused a data directory.
///
/// Every refusal leaves the directory as it was (apart from creating the directory and
/// its empty `LOCK` file if they did not exist). It converts into a
/// [`StorageError`] for callers that only deal in those.
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
            OpenError::Locked { .. } => StorageError::Io(e.to_string()),
            OpenError::DamagedRecord { .. } => StorageError::Corrupt(e.to_string()),
            OpenError::Storage(e) => e,
        }
    }
}
