//! `FileStorage` passes paxos-core's storage conformance suite: with the defaults, with
//! segments and records small enough that batches span several of each, and without
//! fsync (which changes durability across machine crashes, not what a restart reads).

use paxos_core::testing::{StorageFactory, StorageSuite};
use paxos_storage_file::{FileStorage, FileStorageOptions};
use tempfile::TempDir;

/// A fresh directory per storage; `reopen` drops the storage (releasing its lock) and
/// opens the directory again, as a restarted process would.
struct Files {
    root: TempDir,
    options: FileStorageOptions,
    next: u32,
}

impl Files {
    fn new(options: FileStorageOptions) -> Self {
        Files {
            root: tempfile::tempdir().expect("temp dir"),
            options,
            next: 0,
        }
    }
}

impl StorageFactory for Files {
    type Storage = FileStorage;

    fn create(&mut self) -> FileStorage {
        self.next += 1;
        let dir = self.root.path().join(format!("node-{}", self.next));
        FileStorage::open_with(&dir, 1, 1, self.options.clone()).expect("open a new directory")
    }

    fn reopen(&mut self, storage: FileStorage) -> FileStorage {
        let dir = storage.dir().to_path_buf();
        drop(storage);
        FileStorage::open_with(&dir, 1, 1, self.options.clone()).expect("reopen")
    }
}

#[test]
fn file_storage_passes_the_conformance_suite() {
    StorageSuite::new(Files::new(FileStorageOptions::default()))
        .rounds(300)
        .run()
        .unwrap();
}

#[test]
fn file_storage_with_small_segments_and_records_passes_the_conformance_suite() {
    let options = FileStorageOptions {
        segment_size: 16 << 10,
        // Above the suite's largest value (1 MB), far below the default.
        max_record_size: 2 << 20,
        sync: false,
        ..FileStorageOptions::default()
    };
    StorageSuite::new(Files::new(options))
        .rounds(300)
        .seed(7)
        .run()
        .unwrap();
}
