//! One data file of a cache, wherever it lies, as Parquet's readers want it: a local file is mapped whole (pages
//! are read from the page cache, no copy), an object is fetched as the byte ranges a reader needs (its footer,
//! then the column chunks of the row groups asked for), in one concurrent batch of ranged requests. Both are a
//! [`FileBytes`], so every reader of the cache has one code path for both.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes};
use object_store::path::Path as ObjectPath;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use serde::{Deserialize, Serialize};

use super::object::ObjectCache;

/// Bytes fetched from the end of an object to read its footer in one request (most footers fit).
const FOOTER_PREFETCH: u64 = 64 << 10;

/// Where one cache file lies. Serialised (for plans sent to workers) as its path, or as its cache's URL, object
/// path and size; the receiving process opens the store with its own credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "CachePathSpec", into = "CachePathSpec")]
pub enum CachePath {
    Local(PathBuf),
    Object {
        cache: Arc<ObjectCache>,
        path: ObjectPath,
        /// Its size as the manifest records it (so no request is needed to learn it).
        size: u64,
    },
}

/// The serialised form of a [`CachePath`].
#[derive(Serialize, Deserialize)]
enum CachePathSpec {
    Local(PathBuf),
    Object { cache: String, path: String, size: u64 },
}

impl From<CachePath> for CachePathSpec {
    fn from(p: CachePath) -> Self {
        match p {
            // Absolute: the worker that opens it runs in another directory.
            CachePath::Local(p) => CachePathSpec::Local(std::path::absolute(&p).unwrap_or(p)),
            CachePath::Object { cache, path, size } => CachePathSpec::Object {
                cache: cache.url().to_string(),
                path: path.to_string(),
                size,
            },
        }
    }
}

impl TryFrom<CachePathSpec> for CachePath {
    type Error = String;

    fn try_from(spec: CachePathSpec) -> Result<Self, String> {
        Ok(match spec {
            // Only a worker reads a plan's paths: one it cannot see is not damage to the cache.
            CachePathSpec::Local(p) if !p.exists() => {
                return Err(format!(
                    "a worker cannot find the cache file {}: every worker must see the cache at the same path (a file system all hosts mount), or the cache must be on a store (cache_dir=s3://...)",
                    p.display()
                ))
            }
            CachePathSpec::Local(p) => CachePath::Local(p),
            CachePathSpec::Object { cache, path, size } => CachePath::Object {
                cache: ObjectCache::shared(&cache).map_err(|e| format!("{e:#}"))?,
                path: ObjectPath::from(path),
                size,
            },
        })
    }
}

impl fmt::Display for CachePath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            CachePath::Local(p) => write!(f, "{}", p.display()),
            CachePath::Object { cache, path, .. } => write!(f, "{}", cache.url_of(path)),
        }
    }
}

impl CachePath {
    /// The order files are read in: by path (a cache's files are all local or all objects; local first).
    pub fn order(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (CachePath::Local(a), CachePath::Local(b)) => a.cmp(b),
            (CachePath::Object { path: a, .. }, CachePath::Object { path: b, .. }) => a.as_ref().cmp(b.as_ref()),
            (CachePath::Local(_), CachePath::Object { .. }) => std::cmp::Ordering::Less,
            (CachePath::Object { .. }, CachePath::Local(_)) => std::cmp::Ordering::Greater,
        }
    }

    /// The local path, if the file is local.
    pub fn local(&self) -> Option<&Path> {
        match self {
            CachePath::Local(p) => Some(p),
            CachePath::Object { .. } => None,
        }
    }
}

/// Byte ranges of one file (a local file: one range, the whole mapping) served to Parquet's readers. Asking
/// for bytes outside the ranges fetched is an error, not a silent request.
#[derive(Clone)]
pub struct FileBytes {
    len: u64,
    /// Sorted by offset, not overlapping.
    ranges: Arc<Vec<(u64, Bytes)>>,
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FileBytes({} bytes, {} ranges held)", self.len, self.ranges.len())
    }
}

impl FileBytes {
    /// The whole file in `bytes`.
    pub fn whole(bytes: Bytes) -> Self {
        Self {
            len: bytes.len() as u64,
            ranges: Arc::new(vec![(0, bytes)]),
        }
    }

    /// Ranges of a file of `len` bytes.
    fn ranges(len: u64, mut ranges: Vec<(u64, Bytes)>) -> Self {
        ranges.sort_by_key(|(start, _)| *start);
        Self {
            len,
            ranges: Arc::new(ranges),
        }
    }

    /// The held bytes from `start` to the end of the range holding it.
    fn from(&self, start: u64) -> parquet::errors::Result<Bytes> {
        let i = self.ranges.partition_point(|(s, _)| *s <= start);
        if i > 0 {
            let (s, bytes) = &self.ranges[i - 1];
            let at = (start - s) as usize;
            if at < bytes.len() {
                return Ok(bytes.slice(at..));
            }
        }
        Err(ParquetError::General(format!(
            "byte {start} of the file was not fetched"
        )))
    }

    /// The bytes of the first held range, if it is the whole file (a mapped local file).
    pub fn as_whole(&self) -> Option<&Bytes> {
        match self.ranges.as_slice() {
            [(0, b)] if b.len() as u64 == self.len => Some(b),
            _ => None,
        }
    }
}

impl Length for FileBytes {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for FileBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.from(start)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let held = self.from(start)?;
        if held.len() < length {
            return Err(ParquetError::General(format!(
                "bytes {start}..{} of the file were not fetched",
                start + length as u64
            )));
        }
        Ok(held.slice(..length))
    }
}

/// A cache file opened for reading: its footer read once, for every reader of it.
#[derive(Debug)]
pub struct CacheFile {
    pub path: CachePath,
    pub metadata: ArrowReaderMetadata,
    /// A local file's mapping (the whole file).
    mapped: Option<Arc<memmap2::Mmap>>,
}

impl CacheFile {
    /// Maps a local file, or fetches an object's footer.
    pub fn open(path: &CachePath) -> Result<Self> {
        match path {
            CachePath::Local(p) => {
                let mapped = map(p)?;
                let metadata = ArrowReaderMetadata::load(&mapped_bytes(&mapped), ArrowReaderOptions::default())
                    .with_context(|| format!("cache file {} is not a readable Parquet file", p.display()))?;
                Ok(Self {
                    path: path.clone(),
                    metadata,
                    mapped: Some(mapped),
                })
            }
            CachePath::Object {
                cache,
                path: object,
                size,
            } => {
                let footer = read_footer(cache, object, *size)?;
                let metadata = ArrowReaderMetadata::load(&footer, ArrowReaderOptions::default())
                    .with_context(|| format!("cache file {path} is not a readable Parquet file"))?;
                Ok(Self {
                    path: path.clone(),
                    metadata,
                    mapped: None,
                })
            }
        }
    }

    /// The bytes of root columns `columns` in `row_groups`: a local file's mapping (those chunks prefaulted in
    /// one call each), or the chunks fetched from the store.
    pub fn bytes_for(&self, row_groups: &[usize], columns: &[usize]) -> Result<FileBytes> {
        let meta = self.metadata.metadata();
        let mut chunks: Vec<Range<u64>> = Vec::new();
        for &rg in row_groups {
            let group = meta
                .row_groups()
                .get(rg)
                .with_context(|| format!("{} has no row group {rg}", self.path))?;
            for &root in columns {
                for leaf in leaves_of(meta.file_metadata().schema_descr(), root) {
                    let (start, len) = group.column(leaf).byte_range();
                    chunks.push(start..start + len);
                }
            }
        }
        match (&self.path, &self.mapped) {
            (CachePath::Local(_), Some(mapped)) => {
                populate(mapped, &chunks);
                Ok(FileBytes::whole(mapped_bytes(mapped)))
            }
            (CachePath::Object { cache, path, size }, _) => {
                chunks.sort_by_key(|r| r.start);
                let merged = merge(chunks);
                let fetched = cache.get_ranges(path, merged.clone())?;
                Ok(FileBytes::ranges(
                    *size,
                    merged.iter().map(|r| r.start).zip(fetched).collect(),
                ))
            }
            (CachePath::Local(p), None) => bail!("{} was opened without its mapping", p.display()),
        }
    }

    /// A record-batch reader of the named columns of `row_groups` (every row group if `None`).
    pub fn reader(
        &self,
        row_groups: Option<&[usize]>,
        names: &[&str],
        batch_size: usize,
    ) -> Result<ParquetRecordBatchReader> {
        let all: Vec<usize> = (0..self.metadata.metadata().num_row_groups()).collect();
        let groups = row_groups.unwrap_or(&all);
        let roots = self.root_indices(names)?;
        let bytes = self.bytes_for(groups, &roots)?;
        let mask = ProjectionMask::roots(self.metadata.parquet_schema(), roots);
        ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, self.metadata.clone())
            .with_row_groups(groups.to_vec())
            .with_projection(mask)
            .with_batch_size(batch_size)
            .build()
            .with_context(|| format!("cannot read cache file {}", self.path))
    }

    /// The root column indices of `names` (caches written at different times order their columns differently).
    pub fn root_indices(&self, names: &[&str]) -> Result<Vec<usize>> {
        let fields = self.metadata.parquet_schema().root_schema().get_fields();
        names
            .iter()
            .map(|name| {
                fields
                    .iter()
                    .position(|f| f.name() == *name)
                    .with_context(|| format!("cache file {} has no column {name}", self.path))
            })
            .collect()
    }

    /// Whether the file has a root column `name`.
    pub fn has_column(&self, name: &str) -> bool {
        self.metadata.schema().field_with_name(name).is_ok()
    }

    /// Rows of each row group.
    pub fn row_group_rows(&self) -> Vec<usize> {
        self.metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .collect()
    }
}

/// The leaf column indices under root column `root`.
fn leaves_of(schema: &parquet::schema::types::SchemaDescriptor, root: usize) -> Vec<usize> {
    (0..schema.num_columns())
        .filter(|&leaf| schema.get_column_root_idx(leaf) == root)
        .collect()
}

/// Joins ranges that touch or overlap (sorted by start).
fn merge(ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The end of an object holding its whole footer, as ranges of a file of `size` bytes.
fn read_footer(cache: &ObjectCache, path: &ObjectPath, size: u64) -> Result<FileBytes> {
    let url = || cache.url_of(path);
    if size < 12 {
        bail!("cache file {} is {size} bytes, too short for Parquet", url());
    }
    let tail_start = size.saturating_sub(FOOTER_PREFETCH);
    let mut tail = cache.get_range(path, tail_start..size)?;
    let mut start = tail_start;
    let n = tail.len();
    if n < 8 || &tail[n - 4..] != b"PAR1" {
        bail!(
            "cache file {} does not end like a Parquet file (is it truncated?)",
            url()
        );
    }
    let metadata_len = u32::from_le_bytes(tail[n - 8..n - 4].try_into().expect("4 bytes")) as u64;
    let footer_start = size
        .checked_sub(metadata_len + 8)
        .with_context(|| format!("cache file {} has a footer longer than the file", url()))?;
    if footer_start < start {
        tail = cache.get_range(path, footer_start..size)?;
        start = footer_start;
    }
    Ok(FileBytes::ranges(size, vec![(start, tail)]))
}

/// A local file mapped into memory.
fn map(path: &Path) -> Result<Arc<memmap2::Mmap>> {
    let file = File::open(path).with_context(|| format!("cannot open cache file {}", path.display()))?;
    // SAFETY: cache files are written once under .staging/ and renamed into place; nothing writes them
    // afterwards. A file truncated behind diffsql's back is outside what this can guard against.
    let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    Ok(Arc::new(map))
}

/// A mapping shared by the `Bytes` made from it.
struct SharedMap(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}

/// The whole mapping as `Bytes`.
fn mapped_bytes(map: &Arc<memmap2::Mmap>) -> Bytes {
    Bytes::from_owner(SharedMap(Arc::clone(map)))
}

/// Prefaults byte ranges of a mapping in one call each rather than one page fault at a time (best effort:
/// older kernels lack MADV_POPULATE_READ).
fn populate(map: &memmap2::Mmap, ranges: &[Range<u64>]) {
    for r in ranges {
        let end = (r.end as usize).min(map.len());
        let start = r.start as usize;
        if start < end {
            map.advise_range(memmap2::Advice::PopulateRead, start, end - start).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_path_travels_absolute_and_one_the_receiver_cannot_see_is_refused_as_such() {
        let sent = serde_json::to_string(&CachePath::Local(PathBuf::from("Cargo.toml"))).unwrap();
        let here = std::env::current_dir().unwrap().join("Cargo.toml");
        assert!(sent.contains(&*here.to_string_lossy()), "{sent}");
        let received: CachePath = serde_json::from_str(&sent).unwrap();
        assert_eq!(received.local(), Some(here.as_path()));
        let missing = serde_json::to_string(&CachePath::Local(PathBuf::from("/no/such/cache/part-00000.parquet")));
        let e = serde_json::from_str::<CachePath>(&missing.unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a worker cannot find the cache file /no/such/cache/part-00000.parquet") && e.contains("s3://"),
            "{e}"
        );
    }

    #[test]
    fn held_ranges_serve_reads_and_refuse_the_rest() {
        let fb = FileBytes::ranges(
            100,
            vec![(50, Bytes::from(vec![5u8; 10])), (10, Bytes::from(vec![1u8; 5]))],
        );
        assert_eq!(fb.get_bytes(12, 3).unwrap().as_ref(), &[1, 1, 1]);
        assert_eq!(fb.get_bytes(55, 5).unwrap().as_ref(), &[5; 5]);
        assert!(fb.get_bytes(13, 5).is_err(), "past the end of a held range");
        assert!(fb.get_bytes(0, 1).is_err() && fb.get_bytes(20, 1).is_err() && fb.get_bytes(60, 1).is_err());
        assert_eq!(fb.len(), 100);
        assert!(fb.as_whole().is_none());
        assert!(FileBytes::whole(Bytes::from_static(b"abc")).as_whole().is_some());
    }

    #[test]
    fn touching_ranges_merge() {
        assert_eq!(merge(vec![0..5, 5..8, 10..12, 11..20]), vec![0..8, 10..20]);
    }
}
