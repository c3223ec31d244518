//! Recognising and removing a replica's data directory (`bank reset`).
//!
//! A directory is removed only if it is recognisably one that `bank node` wrote (through
//! `paxos-storage-file`): a `META` file with the storage's magic, a valid checksum and
//! the expected cluster and node ids, and no file the storage does not write. Files are
//! removed one by one, then the empty directory: nothing is ever removed recursively,
//! and a directory in use by a node (its `LOCK` held) is left alone.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use paxos_core::NodeId;
use thiserror::Error;

/// The identity file of a data directory.
const META_FILE: &str = "META";
/// The lock file a running node holds.
const LOCK_FILE: &str = "LOCK";
/// The other files the storage writes (besides `wal-<number>.log` segments).
const OTHER_FILES: [&str; 3] = ["META.tmp", "checkpoint", "checkpoint.tmp"];
/// `META`: magic, format version (u32), cluster id (u64), node id (u64), CRC-32 (u32).
const META_LEN: usize = 32;
const META_MAGIC: &[u8; 8] = b"PXSMETA1";

/// A bank data directory, as [`inspect_data_dir`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// Nothing at that path.
    Missing,
    /// An empty directory (or one holding only an empty `LOCK` file).
    Empty,
    /// A data directory written by a node.
    Node {
        /// The cluster id in its `META`.
        cluster_id: u64,
        /// The node id in its `META`.
        node: NodeId,
        /// The storage format version in its `META`.
        version: u32,
        /// Its files, by name, sorted.
        files: Vec<String>,
    },
}

/// A path that [`inspect_data_dir`] or [`remove_data_dir`] will not touch (or could
/// not remove).
#[derive(Debug, Error)]
pub enum DataDirError {
    /// The path is not a directory (or is a symbolic link).
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// The directory holds files but no `META`.
    #[error("{0}: not a bank data directory (no META file)")]
    NoMeta(PathBuf),
    /// `META` is not one the storage writes.
    #[error("{path}: not a bank data directory ({reason})")]
    BadMeta {
        /// The directory.
        path: PathBuf,
        /// What is wrong with its `META`.
        reason: &'static str,
    },
    /// The directory holds something the storage does not write.
    #[error("{path}: holds {name:?}, which a bank node does not write")]
    ForeignFile {
        /// The directory.
        path: PathBuf,
        /// The unexpected entry.
        name: String,
    },
    /// `META` names another cluster.
    #[error("{path}: belongs to cluster {found}, not to this cluster ({expected})")]
    WrongCluster {
        /// The directory.
        path: PathBuf,
        /// The cluster id in `META`.
        found: u64,
        /// The cluster id of the config.
        expected: u64,
    },
    /// `META` names another node.
    #[error("{path}: is node {found}'s directory, expected {expected}")]
    WrongNode {
        /// The directory.
        path: PathBuf,
        /// The node id in `META`.
        found: NodeId,
        /// What was expected (a node id, or the config's ids).
        expected: String,
    },
    /// A running node holds the directory's lock.
    #[error("{0}: in use by a running node")]
    Locked(PathBuf),
    /// A file system operation failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Which directory [`inspect_data_dir`] and [`remove_data_dir`] accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDirOwner {
    /// The cluster id `META` must name.
    pub cluster_id: u64,
    /// The node ids `META` may name (one, for a node's default directory).
    pub nodes: Vec<NodeId>,
}

impl DataDirOwner {
    fn check(&self, path: &Path, cluster_id: u64, node: NodeId) -> Result<(), DataDirError> {
        if cluster_id != self.cluster_id {
            return Err(DataDirError::WrongCluster {
                path: path.to_owned(),
                found: cluster_id,
                expected: self.cluster_id,
            });
        }
        if !self.nodes.contains(&node) {
            let ids: Vec<String> = self.nodes.iter().map(|n| format!("n{n}")).collect();
            return Err(DataDirError::WrongNode {
                path: path.to_owned(),
                found: node,
                expected: ids.join(" or "),
            });
        }
        Ok(())
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_owned();
    move |source| DataDirError::Io {
        path,
        action,
        source,
    }
}

/// True for the names of the log segments, `wal-<digits>.log`.
fn is_segment(name: &str) -> bool {
    name.strip_prefix("wal-")
        .and_then(|rest| rest.strip_suffix(".log"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// The CRC-32 (IEEE) the storage puts in its headers.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Reads `META`: `(version, cluster id, node id)`.
fn read_meta(dir: &Path) -> Result<(u32, u64, NodeId), DataDirError> {
    let path = dir.join(META_FILE);
    let bad = |reason| DataDirError::BadMeta {
        path: dir.to_owned(),
        reason,
    };
    if !fs::symlink_metadata(&path)
        .map_err(io(&path, "cannot read"))?
        .is_file()
    {
        return Err(bad("META is not a file"));
    }
    let mut bytes = Vec::with_capacity(META_LEN + 1);
    File::open(&path)
        .map_err(io(&path, "cannot open"))?
        .take(META_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(&path, "cannot read"))?;
    if bytes.len() != META_LEN {
        return Err(bad("META has the wrong size"));
    }
    if &bytes[..8] != META_MAGIC {
        return Err(bad("META has the wrong magic number"));
    }
    if crc32(&bytes[..28]) != u32_at(&bytes, 28) {
        return Err(bad("META fails its checksum"));
    }
    Ok((u32_at(&bytes, 8), u64_at(&bytes, 12), u64_at(&bytes, 20)))
}

/// What is at `path`: nothing, an empty directory, or a data directory of the
/// cluster and one of the nodes `owner` names. Anything else is an error saying why it
/// is not (or not this cluster's) data directory. Reads only.
pub fn inspect_data_dir(path: &Path, owner: &DataDirOwner) -> Result<DataDir, DataDirError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(DataDir::Missing),
        Err(e) => return Err(io(path, "cannot read")(e)),
    };
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory(path.to_owned()));
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(io(path, "cannot list"))? {
        let entry = entry.map_err(io(path, "cannot list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let foreign = || DataDirError::ForeignFile {
            path: path.to_owned(),
            name: name.clone(),
        };
        let known = name == META_FILE
            || name == LOCK_FILE
            || OTHER_FILES.contains(&name.as_str())
            || is_segment(&name);
        let is_file = entry
            .file_type()
            .map_err(io(path, "cannot list"))?
            .is_file();
        if !known || !is_file {
            return Err(foreign());
        }
        files.push(name);
    }
    files.sort();
    if !files.iter().any(|f| f == META_FILE) {
        // A node creates LOCK, then META: an empty LOCK alone is a node that stopped
        // before writing anything.
        let lock_only =
            files == [LOCK_FILE] && fs::metadata(path.join(LOCK_FILE)).is_ok_and(|m| m.len() == 0);
        return if files.is_empty() || lock_only {
            Ok(DataDir::Empty)
        } else {
            Err(DataDirError::NoMeta(path.to_owned()))
        };
    }
    let (version, cluster_id, node) = read_meta(path)?;
    owner.check(path, cluster_id, node)?;
    Ok(DataDir::Node {
        cluster_id,
        node,
        version,
        files,
    })
}

/// Removes the data directory at `path` if [`inspect_data_dir`] accepts it and no
/// node holds its lock: its files one by one, then the directory. Returns what was
/// there ([`DataDir::Missing`]: nothing to do).
pub fn remove_data_dir(path: &Path, owner: &DataDirOwner) -> Result<DataDir, DataDirError> {
    let found = inspect_data_dir(path, owner)?;
    if found == DataDir::Missing {
        return Ok(found);
    }
    let lock_path = path.join(LOCK_FILE);
    // Held until the directory is gone, so no node starts on it meanwhile.
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(&lock_path, "cannot open"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(DataDirError::Locked(path.to_owned())),
        Err(TryLockError::Error(e)) => return Err(io(&lock_path, "cannot lock")(e)),
    }
    // Look again under the lock: only what is there now, and still acceptable, goes.
    let found = inspect_data_dir(path, owner)?;
    let files = match &found {
        DataDir::Node { files, .. } => files.clone(),
        DataDir::Empty | DataDir::Missing => vec![LOCK_FILE.to_owned()],
    };
    for name in files.iter().filter(|f| *f != LOCK_FILE) {
        let file = path.join(name);
        fs::remove_file(&file).map_err(io(&file, "cannot remove"))?;
    }
    fs::remove_file(&lock_path).map_err(io(&lock_path, "cannot remove"))?;
    drop(lock);
    fs::remove_dir(path).map_err(io(path, "cannot remove"))?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_storage() {
        // The CRC-32 check value.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    use paxos_storage_file::FileStorage;

    fn owner(cluster_id: u64, nodes: &[NodeId]) -> DataDirOwner {
        DataDirOwner {
            cluster_id,
            nodes: nodes.to_vec(),
        }
    }

    /// A data directory as a node leaves it: META, LOCK, a log segment.
    fn node_dir(path: &Path, cluster_id: u64, node: NodeId) {
        drop(FileStorage::open(path, cluster_id, node).expect("storage opens"));
    }

    #[test]
    fn removes_a_nodes_data_directory_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node-2");
        node_dir(&dir, 7, 2);
        let beside = root.path().join("keep.txt");
        std::fs::write(&beside, "mine").unwrap();
        let found = inspect_data_dir(&dir, &owner(7, &[2])).unwrap();
        let DataDir::Node {
            cluster_id,
            node,
            version,
            files,
        } = &found
        else {
            panic!("not recognised: {found:?}");
        };
        assert_eq!((*cluster_id, *node, *version), (7, 2, 2));
        assert!(files.contains(&"META".to_string()), "{files:?}");
        assert!(files.iter().any(|f| is_segment(f)), "{files:?}");
        assert_eq!(remove_data_dir(&dir, &owner(7, &[2])).unwrap(), found);
        assert!(!dir.exists());
        assert_eq!(std::fs::read_to_string(&beside).unwrap(), "mine");
        // Gone: nothing to do the second time.
        assert_eq!(
            remove_data_dir(&dir, &owner(7, &[2])).unwrap(),
            DataDir::Missing
        );
    }

    #[test]
    fn empty_directories_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("empty");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(
            remove_data_dir(&dir, &owner(7, &[1])).unwrap(),
            DataDir::Empty
        );
        assert!(!dir.exists());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("LOCK"), "").unwrap();
        assert_eq!(
            remove_data_dir(&dir, &owner(7, &[1])).unwrap(),
            DataDir::Empty
        );
        assert!(!dir.exists());
    }

    #[test]
    fn refuses_what_is_not_this_clusters_data_directory() {
        let root = tempfile::tempdir().unwrap();
        let check = |dir: &Path, owner: &DataDirOwner, want: &str| {
            let err = remove_data_dir(dir, owner).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(dir.exists(), "{} was removed", dir.display());
        };
        // Another cluster's, another node's.
        let dir = root.path().join("n1");
        node_dir(&dir, 7, 1);
        check(
            &dir,
            &owner(8, &[1]),
            "belongs to cluster 7, not to this cluster (8)",
        );
        check(
            &dir,
            &owner(7, &[2, 3]),
            "is node 1's directory, expected n2 or n3",
        );
        // A file a node does not write, however well-formed the rest.
        std::fs::write(dir.join("notes.txt"), "precious").unwrap();
        check(&dir, &owner(7, &[1]), "holds \"notes.txt\"");
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        std::fs::create_dir(dir.join("wal-1.log")).unwrap();
        check(&dir, &owner(7, &[1]), "holds \"wal-1.log\"");
        std::fs::remove_dir(dir.join("wal-1.log")).unwrap();
        // In use by a node.
        let storage = FileStorage::open(&dir, 7, 1).unwrap();
        check(&dir, &owner(7, &[1]), "in use by a running node");
        drop(storage);
        // A damaged or foreign META.
        let meta = dir.join("META");
        let mut bytes = std::fs::read(&meta).unwrap();
        bytes[15] ^= 1;
        std::fs::write(&meta, &bytes).unwrap();
        check(&dir, &owner(7, &[1]), "META fails its checksum");
        std::fs::write(&meta, b"not a meta file at all, 32 bytes").unwrap();
        check(&dir, &owner(7, &[1]), "not a bank data directory");
        // Files but no META.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("checkpoint"), "x").unwrap();
        check(&other, &owner(7, &[1]), "no META file");
        // Not a directory.
        let file = root.path().join("file");
        std::fs::write(&file, "x").unwrap();
        check(&file, &owner(7, &[1]), "not a directory");
        #[cfg(unix)]
        {
            let good = root.path().join("good");
            node_dir(&good, 7, 1);
            let link = root.path().join("link");
            std::os::unix::fs::symlink(&good, &link).unwrap();
            check(&link, &owner(7, &[1]), "not a directory");
            assert!(good.join("META").exists());
        }
    }

    #[test]
    fn segment_names() {
        assert!(is_segment("wal-00000000000000000001.log"));
        assert!(!is_segment("wal-.log"));
        assert!(!is_segment("wal-1.log.bak"));
        assert!(!is_segment("notes.txt"));
    }
}
