//! Writes that readers never see half done, and that survive a power cut once they return: a file goes through a
//! temporary beside it and a rename, a directory (a partition, a dictionary) is built under staging and renamed
//! into place; the data and then the directory holding the new name are flushed to disk (`fsync`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` through a temporary file beside it (`path` + `.tmp`) and a rename, so readers see
/// the old file or the whole new one, never a part. The file and its directory are synced before returning.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    written.with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    sync_parent(path)
}

/// Moves a finished directory built under staging to `final_dir` (replacing a directory there, which callers
/// have found incomplete), then syncs the directory that now holds it.
pub fn move_into_place(staging: &Path, final_dir: &Path) -> Result<()> {
    sync_dir(staging)?;
    if let Some(parent) = final_dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if final_dir.exists() {
        fs::remove_dir_all(final_dir).with_context(|| format!("cannot replace {}", final_dir.display()))?;
    }
    fs::rename(staging, final_dir).with_context(|| format!("cannot move {} into place", final_dir.display()))?;
    sync_parent(final_dir)
}

/// Flushes a directory's entries (names created, renamed or removed in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("summary.json")]);
    }

    #[test]
    fn a_directory_moves_into_place_over_an_incomplete_one() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(".staging/p");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("part-00000.parquet"), b"x").unwrap();
        let target = dir.path().join("activations/layer=0");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("junk"), b"left by a crash").unwrap();
        move_into_place(&staging, &target).unwrap();
        assert!(!staging.exists());
        assert!(target.join("part-00000.parquet").exists() && !target.join("junk").exists());
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_the_file() {
        let e = write_atomic(Path::new("/nonexistent-dir/x.json"), b"x").unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent-dir/x.json.tmp"), "{e:#}");
    }
}
