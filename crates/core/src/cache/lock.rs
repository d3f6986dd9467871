//! One writer per partition or dictionary, across processes: an advisory `flock` on a lock file under
//! `.staging/`. The kernel releases it when the holder exits, however it exits, so there are no stale locks to
//! take over and no process table to read; the file holds the holder's pid only for messages.
//!
//! A cache on an object store adds [`ObjectLock`], the same claim across hosts: a lock object created with a
//! conditional put, naming its holder. A writer holds the local lock first, so a lock object left by this
//! machine (a writer killed before it could remove it) has no live holder and is taken over.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::object::ObjectCache;

/// An exclusive claim on writing one thing, held until dropped.
#[derive(Debug)]
pub struct WriteLock {
    path: PathBuf,
    file: File,
}

impl WriteLock {
    /// Takes the lock at `path` for writing `what` (named in the error), failing at once if another process
    /// holds it.
    pub fn acquire(path: PathBuf, what: &dyn std::fmt::Display) -> Result<Self> {
        Self::take(path, what, false)
    }

    /// Takes the lock at `path`, waiting as long as another process holds it (saying so once on stderr). The
    /// kernel drops a lock with its holder, so this waits only for a writer that is still running.
    pub fn acquire_waiting(path: PathBuf, what: &dyn std::fmt::Display) -> Result<Self> {
        Self::take(path, what, true)
    }

    fn take(path: PathBuf, what: &dyn std::fmt::Display, wait: bool) -> Result<Self> {
        let mut told = false;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot create lock {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {
                    // The holder before us may have removed the file between our open and our lock: then we
                    // hold a lock on a name nobody else will open, and must lock the file now at that path.
                    if !same_file(&file, &path) {
                        continue;
                    }
                    let mut lock = Self { path, file };
                    lock.record_holder();
                    return Ok(lock);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    let by = match holder.trim() {
                        "" => "another process".to_string(),
                        pid => format!("process {pid}"),
                    };
                    if !wait {
                        bail!(
                            "{what} is being written by {by} (lock {}); wait for it to finish and run again",
                            path.display()
                        );
                    }
                    if !told {
                        eprintln!("waiting for {by}, which is writing {what}");
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock {}", path.display()));
                }
            }
        }
    }

    fn record_holder(&mut self) {
        let pid = std::process::id().to_string();
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = self.file.write_all(pid.as_bytes());
    }
}

/// A claim on writing one thing of an object-store cache, held until dropped (which removes the lock object).
#[derive(Debug)]
pub struct ObjectLock {
    cache: Arc<ObjectCache>,
    relative: String,
}

/// What a lock object says about its holder.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    machine: String,
    host: String,
    pid: u32,
    since_unix: u64,
}

/// This machine: its machine id where there is one, and its host name.
fn this_machine() -> (String, String) {
    let read = |p: &str| fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
    let host = read("/proc/sys/kernel/hostname");
    let machine = read("/etc/machine-id");
    let machine = if machine.is_empty() { host.clone() } else { machine };
    (machine, host)
}

impl ObjectLock {
    /// Takes the lock object `relative` of `cache` for writing `what`, waiting for another host's writer if
    /// `wait`, else failing at once naming it. Call it while holding the local [`WriteLock`] of the same thing.
    pub fn acquire(
        cache: &Arc<ObjectCache>,
        relative: String,
        what: &dyn std::fmt::Display,
        wait: bool,
    ) -> Result<Self> {
        let (machine, host) = this_machine();
        let body = serde_json::to_vec(&Holder {
            machine: machine.clone(),
            host,
            pid: std::process::id(),
            since_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })?;
        let lock = Self {
            cache: Arc::clone(cache),
            relative,
        };
        let url = cache.url_of(&cache.path(&lock.relative));
        let mut told = false;
        loop {
            if cache.create(&lock.relative, body.clone())? {
                return Ok(lock);
            }
            let Some(meta) = cache.head(&lock.relative)? else {
                continue; // released between our two requests
            };
            let holder: Option<Holder> = cache
                .get_optional(&lock.relative)?
                .and_then(|b| serde_json::from_slice(&b).ok());
            let ours = holder.as_ref().is_none_or(|h| h.machine == machine);
            if ours {
                // Left by a writer of this machine that is gone (we hold the local lock): take it over, unless
                // someone else did first.
                let taken = match meta.e_tag {
                    Some(tag) => cache.replace_if(&lock.relative, tag, body.clone())?,
                    None => {
                        cache.delete(&meta.location)?;
                        cache.create(&lock.relative, body.clone())?
                    }
                };
                if taken {
                    return Ok(lock);
                }
                continue;
            }
            let holder = holder.expect("checked above");
            let by = format!("process {} on host {}", holder.pid, holder.host);
            if !wait {
                bail!(
                    "{what} is being written by {by} (lock {url}); wait for it to finish, or delete that object if the writer is gone"
                );
            }
            if !told {
                eprintln!("waiting for {by}, which is writing {what} (lock {url})");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        let path = self.cache.path(&self.relative);
        self.cache.delete(&path).ok();
    }
}

/// Whether the open `file` is the one `path` names now (same device and inode).
fn same_file(file: &File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        // Removed while still held, so a waiting writer that opened this file sees it is gone and retries.
        fs::remove_file(&self.path).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_naming_the_holder_and_gets_the_lock_once_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        let first = WriteLock::acquire(path.clone(), &"partition p").unwrap();
        let e = WriteLock::acquire(path.clone(), &"partition p")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partition p") && e.contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(first);
        assert!(!path.exists());
        WriteLock::acquire(path, &"partition p").unwrap();
    }

    #[test]
    fn a_lock_file_left_without_a_holder_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        fs::write(&path, "4194303").unwrap();
        WriteLock::acquire(path, &"partition p").unwrap();
    }

    #[test]
    fn a_waiting_writer_gets_the_lock_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        let first = WriteLock::acquire(path.clone(), &"p").unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        WriteLock::acquire_waiting(path, &"p").unwrap();
        release.join().unwrap();
    }
}
