//! Integrity of the cache: a damaged, truncated or missing data file must never give a number. Every file a
//! query reads is checked against its manifest (size, and the xxh3-64 of its bytes) before its first use in
//! a process; `diffsql check` checks every file of every table and `--repair` removes damaged partitions so
//! that a rerun of preprocessing rebuilds them.
//!
//! A file's checksum is computed once per process and remembered with the file's size, modification time and
//! inode, so repeated queries in one session (the shell, the dashboard, a method's queries) hash nothing
//! twice; a file replaced on disk is hashed again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::layout::{CacheLayout, PartitionKey, Table};
use super::manifest::{FileEntry, Manifest};

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileVersion {
    path: PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

type Verdict = Arc<OnceLock<Result<(), String>>>;

/// Files whose checksums this process has checked, by version; one check per version even when several
/// scan partitions open the same file at once (the others wait for the first).
fn verdicts() -> &'static Mutex<HashMap<FileVersion, Verdict>> {
    static VERDICTS: OnceLock<Mutex<HashMap<FileVersion, Verdict>>> = OnceLock::new();
    VERDICTS.get_or_init(Default::default)
}

/// The fix every damage message ends with.
pub const FIX: &str = "run `diffsql check --repair` to remove damaged partitions, then rerun `diffsql preprocess`";

/// Checks `file` of partition `key` against its manifest entry: present, of the recorded size, with the
/// recorded xxh3-64. The error names the file, the partition and the fix.
pub fn verify_file(key: &PartitionKey, file: &Path, entry: &FileEntry) -> Result<()> {
    let meta = std::fs::metadata(file)
        .with_context(|| format!("{key}: data file {} is missing or unreadable; {FIX}", file.display()))?;
    if meta.len() != entry.bytes {
        bail!(
            "{key}: data file {} has {} bytes, its manifest says {} (truncated or overwritten); {FIX}",
            file.display(),
            meta.len(),
            entry.bytes
        );
    }
    let version = FileVersion {
        path: file.to_path_buf(),
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: inode(&meta),
    };
    let verdict = Arc::clone(
        verdicts()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(version)
            .or_default(),
    );
    let result = verdict.get_or_init(|| match hash_file(file) {
        Ok(h) if h == entry.xxh3 => Ok(()),
        Ok(h) => Err(format!(
            "{key}: data file {} is damaged (xxh3 {h}, its manifest says {}); {FIX}",
            file.display(),
            entry.xxh3
        )),
        Err(e) => Err(format!("{key}: cannot read data file {}: {e:#}; {FIX}", file.display())),
    });
    result.clone().map_err(anyhow::Error::msg)
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// The xxh3-64 of a file's bytes, hex, as the cache writer records it.
pub fn hash_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(format!("{:016x}", twox_hash::XxHash3_64::oneshot(&[])));
    }
    // SAFETY: cache files are immutable once renamed into place; a file changed underneath gives a wrong
    // checksum, which is reported as damage.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    // twox-hash picks its AVX2 loop at run time (2× xxhash-rust's SSE2 build on a 4 GB cache); the value is
    // the same xxh3-64 the writer records (test below).
    Ok(format!("{:016x}", twox_hash::XxHash3_64::oneshot(&map)))
}

/// Checks every file of a partition, in parallel.
pub fn verify_partition(layout: &CacheLayout, key: &PartitionKey, manifest: &Manifest) -> Result<()> {
    let dir = layout.partition_dir(key);
    manifest
        .files
        .par_iter()
        .try_for_each(|f| verify_file(key, &dir.join(&f.name), f))
}

/// One damaged partition found by [`check`].
#[derive(Debug, Clone)]
pub struct Damaged {
    pub key: PartitionKey,
    pub dir: PathBuf,
    /// What is wrong (the first damaged file's message).
    pub problem: String,
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub partitions: usize,
    pub files: usize,
    pub bytes: u64,
    pub damaged: Vec<Damaged>,
    /// Partitions removed by `repair`.
    pub removed: usize,
}

/// Verifies every file of every complete partition of every table; with `repair`, removes each damaged
/// partition (its manifest first, so it stops being visible before its files go).
pub fn check(layout: &CacheLayout, repair: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    for table in Table::ALL {
        for (key, manifest) in layout.partitions(table)? {
            report.partitions += 1;
            report.files += manifest.files.len();
            report.bytes += manifest.bytes();
            if let Err(e) = verify_partition(layout, &key, &manifest) {
                let dir = layout.partition_dir(&key);
                report.damaged.push(Damaged {
                    key,
                    dir,
                    problem: format!("{e:#}"),
                });
            }
        }
    }
    if repair {
        for d in &report.damaged {
            remove_partition(&d.dir)?;
            report.removed += 1;
        }
    }
    Ok(report)
}

/// Removes a partition directory, its manifest first (a partition without a manifest does not exist).
fn remove_partition(dir: &Path) -> Result<()> {
    let manifest = dir.join(super::layout::MANIFEST_FILE);
    if manifest.exists() {
        std::fs::remove_file(&manifest).with_context(|| format!("cannot remove {}", manifest.display()))?;
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_content_damage_are_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("part-00000.parquet");
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&file, &data).unwrap();
        let key = PartitionKey::tokens("m", "caps");
        let entry = FileEntry {
            name: "part-00000.parquet".into(),
            rows: 1,
            bytes: data.len() as u64,
            xxh3: hash_file(&file).unwrap(),
        };
        verify_file(&key, &file, &entry).unwrap();
        // Flip 16 bytes in the middle: same size, other content (a new file version, so hashed again).
        let mut bad = data.clone();
        for b in &mut bad[200_000..200_016] {
            *b ^= 0xff;
        }
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, &bad).unwrap();
        let e = verify_file(&key, &file, &entry).unwrap_err().to_string();
        assert!(
            e.contains("is damaged") && e.contains("part-00000.parquet") && e.contains("check --repair"),
            "{e}"
        );
        std::fs::write(&file, &data[..1000]).unwrap();
        let e = verify_file(&key, &file, &entry).unwrap_err().to_string();
        assert!(e.contains("has 1000 bytes"), "{e}");
        std::fs::remove_file(&file).unwrap();
        let e = verify_file(&key, &file, &entry).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn file_hash_is_the_streaming_xxh3_the_writer_records() {
        // Caches already written carry the writer's streaming xxh3-64 (xxhash-rust); the reader hashes with
        // twox-hash. Lengths cover xxh3's short (≤ 16), mid (≤ 240) and long paths, a partial last stripe
        // and block, and more than one block.
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_001u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 3, 16, 17, 128, 240, 241, 1024, 1025, 65_537, 3_000_001] {
            let file = dir.path().join(format!("f{len}"));
            std::fs::write(&file, &data[..len]).unwrap();
            let mut streaming = xxhash_rust::xxh3::Xxh3::new();
            for piece in data[..len].chunks(7_919) {
                streaming.update(piece);
            }
            assert_eq!(
                hash_file(&file).unwrap(),
                format!("{:016x}", streaming.digest()),
                "length {len}"
            );
        }
    }
}
