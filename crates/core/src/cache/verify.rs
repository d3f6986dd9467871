//! Integrity of the cache: a damaged, truncated or missing data file must never give a number. Every file a
//! query reads is checked against its manifest (size, and the xxh3-64 of its bytes) before its first use;
//! `diffsql check` hashes every file of every table and `--repair` removes damaged partitions so that a rerun
//! of preprocessing rebuilds them.
//!
//! Hashing a multi-GB cache costs more than scanning it, so a verdict outlives the hash that made it. A file
//! found equal to its manifest is remembered by its *version* — size, modification time, status-change time
//! (ctime), inode and device — twice over: in this process (the shell, the dashboard and a method's queries hash
//! nothing twice) and in the partition's `_verified.json`, so that the next process does not hash it again
//! either. Any write to a file, a rename over it, or a copy with its mtime restored changes its ctime or inode
//! (ctime cannot be set from user space), so the verdict stops matching and the file is hashed again. What a
//! verdict cannot see is bytes that change without any metadata change (media rot under the file system):
//! `diffsql check` hashes everything regardless and withdraws the verdicts of files it finds damaged, and
//! `--rehash` (or `DIFFSQL_REHASH=1`) makes a process ignore kept verdicts.
//!
//! A verdict file is written best effort (a read-only cache simply keeps none), atomically, and ignored
//! whole when it cannot be read or parsed; it never lets a file skip its size check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::layout::{CacheLayout, PartitionKey, Table};
use super::manifest::{FileEntry, Manifest};
use super::object::ObjectCache;

/// The file in a partition directory that keeps verdicts of its files between processes.
pub const VERDICTS_FILE: &str = "_verified.json";

/// Format of [`VERDICTS_FILE`]; another value is ignored (and rewritten).
const VERDICTS_FORMAT: u32 = 1;

/// A file changed this recently (ctime) when it was hashed might change again within the same clock tick of
/// its file system without a new ctime, so its verdict is not kept (git's "racily clean" rule). Coarse
/// timestamps (no sub-second part) get a wider window.
const RACY_WINDOW: Duration = Duration::from_millis(100);
const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

/// The fix every damage message ends with.
pub const FIX: &str = "run `diffsql check --repair` to remove damaged partitions, then rerun `diffsql preprocess`";

/// Whether reads may trust kept verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyPolicy {
    /// Hash a file once per version: the verdict is remembered in the process and kept in the cache.
    Remembered,
    /// Hash every file once per process, ignoring kept verdicts (`--rehash`, `DIFFSQL_REHASH=1`).
    EveryProcess,
}

static POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets the policy of this process (the default is [`VerifyPolicy::Remembered`], or
/// [`VerifyPolicy::EveryProcess`] when `DIFFSQL_REHASH` is set to anything but `0` or empty).
pub fn set_policy(policy: VerifyPolicy) {
    POLICY.store(
        match policy {
            VerifyPolicy::Remembered => 1,
            VerifyPolicy::EveryProcess => 2,
        },
        Ordering::Relaxed,
    );
}

/// The policy in force.
pub fn policy() -> VerifyPolicy {
    match POLICY.load(Ordering::Relaxed) {
        1 => VerifyPolicy::Remembered,
        2 => VerifyPolicy::EveryProcess,
        _ => {
            let rehash = std::env::var("DIFFSQL_REHASH").is_ok_and(|v| !v.is_empty() && v != "0");
            let p = if rehash {
                VerifyPolicy::EveryProcess
            } else {
                VerifyPolicy::Remembered
            };
            set_policy(p);
            p
        }
    }
}

/// What this process has checked so far (files checked against their manifests, and of those how many had
/// to be hashed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyStats {
    pub files_checked: u64,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

static FILES_CHECKED: AtomicU64 = AtomicU64::new(0);
static FILES_HASHED: AtomicU64 = AtomicU64::new(0);
static BYTES_HASHED: AtomicU64 = AtomicU64::new(0);

/// Counters of this process's checks.
pub fn stats() -> VerifyStats {
    VerifyStats {
        files_checked: FILES_CHECKED.load(Ordering::Relaxed),
        files_hashed: FILES_HASHED.load(Ordering::Relaxed),
        bytes_hashed: BYTES_HASHED.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for VerifyStats {
    type Output = VerifyStats;
    fn sub(self, earlier: VerifyStats) -> VerifyStats {
        VerifyStats {
            files_checked: self.files_checked - earlier.files_checked,
            files_hashed: self.files_hashed - earlier.files_hashed,
            bytes_hashed: self.bytes_hashed - earlier.bytes_hashed,
        }
    }
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileVersion {
    path: PathBuf,
    stamp: Stamp,
}

/// The metadata a verdict is tied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    dev: u64,
}

impl Stamp {
    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            inode: meta.ino(),
            dev: meta.dev(),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |t: std::io::Result<SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64)
        };
        Stamp {
            len: meta.len(),
            mtime_ns: ns(meta.modified()),
            ctime_ns: 0,
            inode: 0,
            dev: 0,
        }
    }

    /// Whether a verdict on this version, hashed from `hash_start` on, may be kept: the file had not changed
    /// for a while when hashing began (see [`RACY_WINDOW`]). Without a ctime (not Unix) nothing is kept.
    fn settled_before(&self, hash_start: SystemTime) -> bool {
        if !cfg!(unix) {
            return false;
        }
        let coarse = self.ctime_ns % 1_000_000_000 == 0 && self.mtime_ns % 1_000_000_000 == 0;
        let window = if coarse { RACY_WINDOW_COARSE } else { RACY_WINDOW };
        let start_ns = hash_start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
        let latest = self.ctime_ns.max(self.mtime_ns);
        latest.saturating_add(window.as_nanos() as i64) < start_ns
    }
}

/// One kept verdict: the file `name`, at version `stamp`, hashed to `xxh3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct KeptVerdict {
    name: String,
    #[serde(flatten)]
    stamp: Stamp,
    xxh3: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct VerdictFile {
    format: u32,
    files: Vec<KeptVerdict>,
}

/// The kept verdicts of a partition by file name; empty when there are none or they cannot be read.
fn read_kept(dir: &Path) -> HashMap<String, KeptVerdict> {
    let Ok(bytes) = std::fs::read(dir.join(VERDICTS_FILE)) else {
        return HashMap::new();
    };
    match serde_json::from_slice::<VerdictFile>(&bytes) {
        Ok(v) if v.format == VERDICTS_FORMAT => v.files.into_iter().map(|k| (k.name.clone(), k)).collect(),
        _ => HashMap::new(),
    }
}

/// Replaces a partition's kept verdicts, best effort: a temporary file and a rename (no fsync: a verdict lost
/// in a power cut only means hashing again). A cache that cannot be written keeps no verdicts.
fn write_kept(dir: &Path, kept: &HashMap<String, KeptVerdict>) {
    let path = dir.join(VERDICTS_FILE);
    if kept.is_empty() {
        std::fs::remove_file(&path).ok();
        return;
    }
    let mut files: Vec<KeptVerdict> = kept.values().cloned().collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let Ok(bytes) = serde_json::to_vec(&VerdictFile {
        format: VERDICTS_FORMAT,
        files,
    }) else {
        return;
    };
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{VERDICTS_FILE}.{}.{}.tmp",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &path).is_err() {
        std::fs::remove_file(&tmp).ok();
    }
}

type Verdict = Arc<OnceLock<Result<(), String>>>;

/// Files this process has checked, by version; one check per version even when several scan partitions
/// open the same file at once (the others wait for the first).
fn verdicts() -> &'static Mutex<HashMap<FileVersion, Verdict>> {
    static VERDICTS: OnceLock<Mutex<HashMap<FileVersion, Verdict>>> = OnceLock::new();
    VERDICTS.get_or_init(Default::default)
}

/// How a check may use earlier verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// This process's and the cache's kept verdicts.
    Kept,
    /// This process's only.
    Process,
    /// None: hash (`diffsql check`).
    Nothing,
}

/// Checks `file` of partition `key` against its manifest entry: present, of the recorded size, with the
/// recorded xxh3-64 (hashed once per file version in this process). The error names the file, the
/// partition and the fix.
pub fn verify_file(key: &PartitionKey, file: &Path, entry: &FileEntry) -> Result<()> {
    check_file(key, file, entry, None, Trust::Process).map(|_| ())
}

/// The check behind every entry point: `Ok(Some(verdict))` when the file was hashed here, found good and
/// its verdict may be kept.
fn check_file(
    key: &PartitionKey,
    file: &Path,
    entry: &FileEntry,
    kept: Option<&KeptVerdict>,
    trust: Trust,
) -> Result<Option<KeptVerdict>> {
    FILES_CHECKED.fetch_add(1, Ordering::Relaxed);
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
    let stamp = Stamp::of(&meta);
    let mut fresh = None;
    let mut hash_and_judge = || -> Result<(), String> {
        let start = SystemTime::now();
        FILES_HASHED.fetch_add(1, Ordering::Relaxed);
        BYTES_HASHED.fetch_add(stamp.len, Ordering::Relaxed);
        #[cfg(test)]
        tests::hashed_log().lock().unwrap().push(file.to_path_buf());
        match hash_file(file) {
            Ok(h) if h == entry.xxh3 => {
                // Keep the verdict only if the file is the same version after hashing as before, and had
                // settled before hashing began.
                let unchanged = std::fs::metadata(file).is_ok_and(|m| Stamp::of(&m) == stamp);
                if unchanged && stamp.settled_before(start) {
                    fresh = Some(KeptVerdict {
                        name: entry.name.clone(),
                        stamp,
                        xxh3: h,
                    });
                }
                Ok(())
            }
            Ok(h) => Err(format!(
                "{key}: data file {} is damaged (xxh3 {h}, its manifest says {}); {FIX}",
                file.display(),
                entry.xxh3
            )),
            Err(e) => Err(format!("{key}: cannot read data file {}: {e:#}; {FIX}", file.display())),
        }
    };
    if trust == Trust::Nothing {
        hash_and_judge().map_err(anyhow::Error::msg)?;
        return Ok(fresh);
    }
    let version = FileVersion {
        path: file.to_path_buf(),
        stamp,
    };
    let verdict = Arc::clone(
        verdicts()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(version)
            .or_default(),
    );
    let result = verdict.get_or_init(|| match kept {
        Some(k) if trust == Trust::Kept && k.stamp == stamp && k.xxh3 == entry.xxh3 => Ok(()),
        _ => hash_and_judge(),
    });
    result.clone().map_err(anyhow::Error::msg)?;
    Ok(fresh)
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

/// Checks every file of a partition, in parallel, trusting verdicts kept in the cache unless the policy
/// says otherwise; keeps the verdicts of files it had to hash.
pub fn verify_partition(layout: &CacheLayout, key: &PartitionKey, manifest: &Manifest) -> Result<()> {
    let trust = match policy() {
        VerifyPolicy::Remembered => Trust::Kept,
        VerifyPolicy::EveryProcess => Trust::Process,
    };
    verify_partition_with(layout, key, manifest, trust)
}

fn verify_partition_with(layout: &CacheLayout, key: &PartitionKey, manifest: &Manifest, trust: Trust) -> Result<()> {
    if let Some(o) = layout.object()? {
        return verify_object_partition(o, key, manifest, trust);
    }
    let dir = layout.partition_dir(key);
    // Kept verdicts are trusted only under `Trust::Kept`; a full check reads them to rewrite them.
    let mut kept = if trust == Trust::Process {
        HashMap::new()
    } else {
        read_kept(&dir)
    };
    let outcomes: Vec<(String, Result<Option<KeptVerdict>>)> = manifest
        .files
        .par_iter()
        .map(|f| {
            let outcome = check_file(key, &dir.join(&f.name), f, kept.get(&f.name), trust);
            (f.name.clone(), outcome)
        })
        .collect();
    let (changed, first_error) = fold_outcomes(&mut kept, outcomes, manifest, trust);
    if changed && trust != Trust::Process {
        write_kept(&dir, &kept);
    }
    first_error.map_or(Ok(()), Err)
}

/// Folds a partition's check outcomes into its kept verdicts (on disk or on a store): a file hashed anew
/// keeps its fresh verdict, a damaged file keeps none whatever an earlier check found, and a full check
/// speaks for every file, so verdicts on files the manifest no longer lists go. Returns whether the kept
/// verdicts changed, and the first damage found.
fn fold_outcomes<V: PartialEq>(
    kept: &mut HashMap<String, V>,
    outcomes: Vec<(String, Result<Option<V>>)>,
    manifest: &Manifest,
    trust: Trust,
) -> (bool, Option<anyhow::Error>) {
    let mut changed = false;
    let mut first_error = None;
    if trust == Trust::Nothing {
        let before = kept.len();
        kept.retain(|name, _| manifest.files.iter().any(|f| &f.name == name));
        changed = kept.len() != before;
    }
    for (name, outcome) in outcomes {
        match outcome {
            Ok(Some(verdict)) => {
                changed |= kept.get(&name) != Some(&verdict);
                kept.insert(name, verdict);
            }
            Ok(None) => {}
            Err(e) => {
                changed |= kept.remove(&name).is_some();
                first_error.get_or_insert(e);
            }
        }
    }
    (changed, first_error)
}

/// A kept verdict on an object: the version (ETag and size) that hashed to `xxh3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ObjectVerdict {
    name: String,
    e_tag: String,
    size: u64,
    xxh3: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ObjectVerdictFile {
    format: u32,
    objects: Vec<ObjectVerdict>,
}

/// One version of an object: its URL, ETag and size.
type ObjectVersion = (String, String, u64);

/// Objects this process has checked, by version.
fn object_verdicts() -> &'static Mutex<HashMap<ObjectVersion, Verdict>> {
    static VERDICTS: OnceLock<Mutex<HashMap<ObjectVersion, Verdict>>> = OnceLock::new();
    VERDICTS.get_or_init(Default::default)
}

/// The object-store form of [`verify_partition_with`]: one listing gives every object's size and ETag (an
/// object cannot change without a new ETag), a version is hashed once by streaming it (nothing is kept on
/// disk), and verdicts are kept in the partition's `_verified.json` object.
fn verify_object_partition(o: &ObjectCache, key: &PartitionKey, manifest: &Manifest, trust: Trust) -> Result<()> {
    let relative = CacheLayout::partition_relative(key);
    let listed = o.list_dir(&relative)?;
    let verdicts_relative = format!("{relative}/{VERDICTS_FILE}");
    let mut kept: HashMap<String, ObjectVerdict> = if trust == Trust::Process {
        HashMap::new()
    } else {
        o.get_optional(&verdicts_relative)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<ObjectVerdictFile>(&b).ok())
            .filter(|v| v.format == VERDICTS_FORMAT)
            .map(|v| v.objects.into_iter().map(|k| (k.name.clone(), k)).collect())
            .unwrap_or_default()
    };
    let outcomes: Vec<(String, Result<Option<ObjectVerdict>>)> = manifest
        .files
        .par_iter()
        .map(|entry| {
            let outcome = (|| -> Result<Option<ObjectVerdict>> {
                FILES_CHECKED.fetch_add(1, Ordering::Relaxed);
                let path = o.path(&format!("{relative}/{}", entry.name));
                let url = o.url_of(&path);
                let meta = listed
                    .get(&entry.name)
                    .with_context(|| format!("{key}: data file {url} is missing; {FIX}"))?;
                if meta.size != entry.bytes {
                    bail!(
                        "{key}: data file {url} has {} bytes, its manifest says {} (truncated or overwritten); {FIX}",
                        meta.size,
                        entry.bytes
                    );
                }
                let e_tag = meta.e_tag.clone().unwrap_or_default();
                let mut fresh = None;
                let mut hash_and_judge = || -> Result<(), String> {
                    FILES_HASHED.fetch_add(1, Ordering::Relaxed);
                    BYTES_HASHED.fetch_add(meta.size, Ordering::Relaxed);
                    let hasher = Arc::new(Mutex::new(xxhash_rust::xxh3::Xxh3::new()));
                    let sink = Arc::clone(&hasher);
                    o.stream(&path, move |chunk| sink.lock().expect("hasher").update(chunk))
                        .map_err(|e| format!("{key}: cannot read data file {url}: {e:#}; {FIX}"))?;
                    let h = format!("{:016x}", hasher.lock().expect("hasher").digest());
                    if h != entry.xxh3 {
                        return Err(format!(
                            "{key}: data file {url} is damaged (xxh3 {h}, its manifest says {}); {FIX}",
                            entry.xxh3
                        ));
                    }
                    if !e_tag.is_empty() {
                        fresh = Some(ObjectVerdict {
                            name: entry.name.clone(),
                            e_tag: e_tag.clone(),
                            size: meta.size,
                            xxh3: h,
                        });
                    }
                    Ok(())
                };
                if trust == Trust::Nothing || e_tag.is_empty() {
                    hash_and_judge().map_err(anyhow::Error::msg)?;
                    return Ok(fresh);
                }
                let verdict = Arc::clone(
                    object_verdicts()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry((url.clone(), e_tag.clone(), meta.size))
                        .or_default(),
                );
                let result = verdict.get_or_init(|| match kept.get(&entry.name) {
                    Some(k)
                        if trust == Trust::Kept && k.e_tag == e_tag && k.size == meta.size && k.xxh3 == entry.xxh3 =>
                    {
                        Ok(())
                    }
                    _ => hash_and_judge(),
                });
                result.clone().map_err(anyhow::Error::msg)?;
                Ok(fresh)
            })();
            (entry.name.clone(), outcome)
        })
        .collect();
    let (changed, first_error) = fold_outcomes(&mut kept, outcomes, manifest, trust);
    if changed && trust != Trust::Process {
        // Best effort, as on disk: a store that refuses the write keeps no verdicts.
        let mut objects: Vec<ObjectVerdict> = kept.into_values().collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        if let Ok(bytes) = serde_json::to_vec(&ObjectVerdictFile {
            format: VERDICTS_FORMAT,
            objects,
        }) {
            o.put(&verdicts_relative, bytes).ok();
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One damaged partition found by [`check`].
#[derive(Debug, Clone)]
pub struct Damaged {
    pub key: PartitionKey,
    /// Its directory or its objects' prefix (a URL).
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

/// Hashes every file of every complete partition of every table, whatever verdicts are kept (and keeps the
/// verdicts of good files, withdraws those of damaged ones); with `repair`, removes each damaged partition (its manifest first, so it stops being visible before its files go).
pub fn check(layout: &CacheLayout, repair: bool) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    for table in Table::ALL {
        for (key, manifest) in layout.partitions(table)? {
            report.partitions += 1;
            report.files += manifest.files.len();
            report.bytes += manifest.bytes();
            if let Err(e) = verify_partition_with(layout, &key, &manifest, Trust::Nothing) {
                let dir = match layout.object()? {
                    Some(o) => PathBuf::from(o.url_of(&o.path(&CacheLayout::partition_relative(&key)))),
                    None => layout.partition_dir(&key),
                };
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
            match layout.object()? {
                Some(o) => remove_object_partition(o, &d.key)?,
                None => remove_partition(&d.dir)?,
            }
            report.removed += 1;
        }
    }
    Ok(report)
}

/// Removes a partition's objects, its manifest first.
fn remove_object_partition(o: &ObjectCache, key: &PartitionKey) -> Result<()> {
    let relative = CacheLayout::partition_relative(key);
    o.delete(&o.path(&format!("{relative}/{}", super::layout::MANIFEST_FILE)))?;
    for meta in o.list(&format!("{relative}/"))? {
        o.delete(&meta.location)?;
    }
    Ok(())
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

    /// Every path hashed in this test process (tests run in parallel: each looks for its own paths).
    pub(super) fn hashed_log() -> &'static Mutex<Vec<PathBuf>> {
        static LOG: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
        LOG.get_or_init(Default::default)
    }

    fn times_hashed(path: &Path) -> usize {
        hashed_log().lock().unwrap().iter().filter(|p| *p == path).count()
    }

    /// Drops this process's verdicts on files under `dir`, as a new process would start.
    fn forget_process_verdicts(dir: &Path) {
        verdicts().lock().unwrap().retain(|v, _| !v.path.starts_with(dir));
    }

    fn set_mtime(file: &Path, mtime: SystemTime) {
        let f = std::fs::File::options().write(true).open(file).unwrap();
        f.set_modified(mtime).unwrap();
        assert_eq!(std::fs::metadata(file).unwrap().modified().unwrap(), mtime);
    }

    /// A partition of two files under a fresh cache, older than the racy window.
    fn partition() -> (tempfile::TempDir, CacheLayout, PartitionKey, Manifest) {
        let root = tempfile::tempdir().unwrap();
        let layout = CacheLayout::new(root.path());
        let key = PartitionKey::activations("m", "caps", 1);
        let dir = layout.partition_dir(&key);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (i, seed) in [3u32, 7].into_iter().enumerate() {
            let name = format!("part-{i:05}.parquet");
            let data: Vec<u8> = (0..50_000u32).flat_map(|j| (j ^ seed).to_le_bytes()).collect();
            std::fs::write(dir.join(&name), &data).unwrap();
            files.push(FileEntry {
                name: name.clone(),
                rows: 1,
                bytes: data.len() as u64,
                xxh3: hash_file(&dir.join(&name)).unwrap(),
            });
        }
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(50));
        let manifest = Manifest {
            format: super::super::manifest::FORMAT_VERSION,
            partition: key.clone(),
            rows: 2,
            token_fingerprint: None,
            dtype: None,
            d_model: None,
            files,
            settings: serde_json::Value::Null,
            created_unix: 0,
        };
        (root, layout, key, manifest)
    }

    #[test]
    fn a_new_process_trusts_a_kept_verdict_and_hashes_a_changed_file() {
        let (_root, layout, key, manifest) = partition();
        let dir = layout.partition_dir(&key);
        let (a, b) = (dir.join(&manifest.files[0].name), dir.join(&manifest.files[1].name));
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        assert_eq!((times_hashed(&a), times_hashed(&b)), (1, 1));
        assert!(dir.join(VERDICTS_FILE).exists(), "no verdicts kept");
        // A second process: nothing hashed.
        forget_process_verdicts(&dir);
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        assert_eq!((times_hashed(&a), times_hashed(&b)), (1, 1));
        // Rewritten in place with the same bytes: a new ctime, hashed again (and still good).
        std::fs::write(&b, std::fs::read(&b).unwrap()).unwrap();
        forget_process_verdicts(&dir);
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        assert_eq!((times_hashed(&a), times_hashed(&b)), (1, 2));
        // --rehash: every file hashed in a new process, kept verdicts ignored.
        forget_process_verdicts(&dir);
        verify_partition_with(&layout, &key, &manifest, Trust::Process).unwrap();
        assert_eq!((times_hashed(&a), times_hashed(&b)), (2, 3));
        // `check` always hashes.
        verify_partition_with(&layout, &key, &manifest, Trust::Nothing).unwrap();
        assert_eq!((times_hashed(&a), times_hashed(&b)), (3, 4));
    }

    #[test]
    fn a_same_size_copy_with_its_mtime_restored_is_not_trusted() {
        let (_root, layout, key, manifest) = partition();
        let dir = layout.partition_dir(&key);
        let file = dir.join(&manifest.files[0].name);
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        // Replace it by a damaged copy of the same size through a rename, then restore the mtime.
        let mut bad = std::fs::read(&file).unwrap();
        bad[1234] ^= 0x40;
        let copy = dir.join("copy.tmp");
        std::fs::write(&copy, &bad).unwrap();
        std::fs::rename(&copy, &file).unwrap();
        set_mtime(&file, mtime);
        forget_process_verdicts(&dir);
        let e = verify_partition_with(&layout, &key, &manifest, Trust::Kept)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is damaged"), "{e}");
        // In place this time (same inode, same size), the mtime of the kept verdict restored: only the ctime
        // tells the versions apart.
        let mut good = bad.clone();
        good[1234] ^= 0x40;
        std::fs::write(&file, &good).unwrap();
        std::thread::sleep(RACY_WINDOW + Duration::from_millis(50));
        forget_process_verdicts(&dir);
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        let kept = read_kept(&dir)[&manifest.files[0].name].stamp;
        std::fs::write(&file, &bad).unwrap();
        set_mtime(&file, UNIX_EPOCH + Duration::from_nanos(kept.mtime_ns as u64));
        let now = Stamp::of(&std::fs::metadata(&file).unwrap());
        assert_eq!(
            (now.inode, now.len, now.mtime_ns),
            (kept.inode, kept.len, kept.mtime_ns)
        );
        assert_ne!(now.ctime_ns, kept.ctime_ns);
        forget_process_verdicts(&dir);
        let e = verify_partition_with(&layout, &key, &manifest, Trust::Kept)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is damaged"), "{e}");
    }

    #[test]
    fn check_withdraws_the_verdict_of_a_file_that_rotted_without_a_metadata_change() {
        let (_root, layout, key, manifest) = partition();
        let dir = layout.partition_dir(&key);
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        // Rot the bytes, then forge the kept verdict to the new version, as if the metadata had not changed.
        let file = dir.join(&manifest.files[1].name);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let mut kept = read_kept(&dir);
        kept.get_mut(&manifest.files[1].name).unwrap().stamp = Stamp::of(&std::fs::metadata(&file).unwrap());
        write_kept(&dir, &kept);
        forget_process_verdicts(&dir);
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap(); // what a verdict cannot see
        let e = verify_partition_with(&layout, &key, &manifest, Trust::Nothing)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is damaged"), "{e}");
        assert!(
            !read_kept(&dir).contains_key(&manifest.files[1].name),
            "verdict not withdrawn"
        );
        assert!(read_kept(&dir).contains_key(&manifest.files[0].name));
        forget_process_verdicts(&dir);
        assert!(verify_partition_with(&layout, &key, &manifest, Trust::Kept).is_err());
    }

    #[test]
    fn an_unreadable_verdict_file_is_ignored_and_rebuilt() {
        let (_root, layout, key, manifest) = partition();
        let dir = layout.partition_dir(&key);
        std::fs::write(dir.join(VERDICTS_FILE), b"{ not json").unwrap();
        verify_partition_with(&layout, &key, &manifest, Trust::Kept).unwrap();
        assert_eq!(read_kept(&dir).len(), 2);
    }

    #[test]
    fn a_file_changed_just_before_hashing_keeps_no_verdict() {
        let now = SystemTime::now();
        let ns = now.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        let stamp = |ctime_ns| Stamp {
            len: 1,
            mtime_ns: ctime_ns - 5,
            ctime_ns,
            inode: 1,
            dev: 1,
        };
        assert!(!stamp(ns - 1_000_001).settled_before(now));
        assert!(stamp(ns - 1_000_000_001).settled_before(now));
        // Whole-second timestamps (a coarse file system) need two seconds.
        let coarse = Stamp {
            mtime_ns: (ns / 1_000_000_000 - 1) * 1_000_000_000,
            ctime_ns: (ns / 1_000_000_000 - 1) * 1_000_000_000,
            ..stamp(0)
        };
        assert!(!coarse.settled_before(now));
    }

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
