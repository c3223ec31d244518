//! The directory lock across processes: this test binary re-executes itself as a probe
//! that opens the directory.
//!
//! It is a binary of its own, not one of the library's unit tests, because spawning a
//! process briefly copies every open file descriptor of the spawning process into the
//! child (until its `exec`), lock files included: another test of the same process that
//! dropped a `FileStorage` and reopened its directory at that moment would find it still
//! locked. Test binaries run one after the other, so here nothing else opens a
//! directory while a probe starts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paxos_core::{Ballot, MemStorage, PersistOp, PersistentState, Storage, Value};
use paxos_storage_file::{FileStorage, FileStorageOptions, OpenError};

const CLUSTER: u64 = 0xC1;
const NODE: u64 = 3;

fn nosync() -> FileStorageOptions {
    FileStorageOptions {
        sync: false,
        ..FileStorageOptions::default()
    }
}

fn open(dir: &Path) -> FileStorage {
    FileStorage::open_with(dir, CLUSTER, NODE, nosync()).unwrap()
}

fn accept(slot: u64) -> PersistOp {
    PersistOp::Accept {
        slot,
        ballot: Ballot::new(1, 1),
        value: Value::Noop,
    }
}

fn mem_after(batches: &[Vec<PersistOp>]) -> PersistentState {
    let mut mem = MemStorage::new();
    for b in batches {
        mem.persist(b).unwrap();
    }
    mem.state().clone()
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

/// Set in a child process (this test binary, re-executed) to the directory to probe.
const PROBE_DIR: &str = "PAXOS_STORAGE_FILE_TEST_PROBE_DIR";
/// Set in a child process to a file to create once it holds the lock; it then keeps
/// it until it is killed (or for at most a minute).
const PROBE_HOLD: &str = "PAXOS_STORAGE_FILE_TEST_PROBE_HOLD";
const PROBE_OPENED: i32 = 10;
const PROBE_LOCKED: i32 = 11;
const PROBE_FAILED: i32 = 12;

/// Not a test of its own: the body of the child process of
/// `the_lock_holds_across_processes`, which does nothing unless `PROBE_DIR` is set.
#[test]
fn lock_probe_child() {
    let Some(dir) = std::env::var_os(PROBE_DIR) else {
        return;
    };
    let code = match FileStorage::open_with(PathBuf::from(dir), CLUSTER, NODE, nosync()) {
        Ok(storage) => {
            if let Some(marker) = std::env::var_os(PROBE_HOLD) {
                fs::write(marker, b"locked").unwrap();
                std::thread::sleep(Duration::from_secs(60));
            }
            drop(storage);
            PROBE_OPENED
        }
        Err(OpenError::Locked { .. }) => PROBE_LOCKED,
        Err(_) => PROBE_FAILED,
    };
    std::process::exit(code);
}

/// Starts this test binary again, running only `lock_probe_child` on `dir`.
fn spawn_probe(dir: &Path, hold: Option<&Path>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "lock_probe_child", "--test-threads=1"])
        .env(PROBE_DIR, dir)
        .env_remove(PROBE_HOLD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(marker) = hold {
        cmd.env(PROBE_HOLD, marker);
    }
    cmd.spawn().unwrap()
}

/// Waits (at most a minute) for a child to exit; kills it when it takes longer.
fn wait_exit_code(mut child: Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("the probe was killed by a signal");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the probe process did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_lock_holds_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(dir.path());
    s.persist(&[accept(0)]).unwrap();
    fs::write(dir.path().join("checkpoint.tmp"), b"leftover").unwrap();
    let before = snapshot(dir.path());

    // Another process is refused while this one holds the directory, and changes nothing.
    assert_eq!(wait_exit_code(spawn_probe(dir.path(), None)), PROBE_LOCKED);
    assert_eq!(snapshot(dir.path()), before);
    // Once it is released, the other process opens it.
    drop(s);
    assert_eq!(wait_exit_code(spawn_probe(dir.path(), None)), PROBE_OPENED);

    // A process that holds the lock keeps this one out; when it dies (killed, as in a
    // crash), the OS releases the lock.
    let markers = tempfile::tempdir().unwrap();
    let marker = markers.path().join("holding");
    let mut child = spawn_probe(dir.path(), Some(&marker));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the holding probe exited early: {status}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the holding probe did not lock the directory in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = FileStorage::open_with(dir.path(), CLUSTER, NODE, nosync());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        matches!(refused, Err(OpenError::Locked { .. })),
        "{refused:?}"
    );
    let mut s = open(dir.path());
    assert_eq!(s.load().unwrap(), mem_after(&[vec![accept(0)]]));
}
