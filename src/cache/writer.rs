//! Writes cache partitions atomically: files go to a staging directory, the manifest is written last, and
//! the directory is renamed into place, so readers never see a partial partition.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use xxhash_rust::xxh3::Xxh3;

use super::layout::{token_key_fields, CacheLayout, PartitionKey, MANIFEST_FILE};
use super::manifest::{FileEntry, Manifest, FORMAT_VERSION};
use super::vectors::VectorEncoding;

/// Name of the vector column in `activations` files.
pub const VECTOR_COLUMN: &str = "act";

/// Writes `bytes` to `path` through a temporary file beside it (`path` + `.tmp`) and a rename, so readers see
/// the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

/// How partitions are laid out in files.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Rows per Parquet file. Base and organism partitions written with the same value pair file by file.
    pub rows_per_file: usize,
    /// Rows per row group (the unit a scan reads at once).
    pub row_group_rows: usize,
    /// Compression of the vector column. The default, none, decodes fastest (a scan reads at memory
    /// speed); `zstd` makes real bfloat16 activations about 3× smaller and scans several times slower.
    pub vector_compression: Compression,
    /// Recorded in each manifest.
    pub settings: serde_json::Value,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            rows_per_file: 1 << 17,
            row_group_rows: 4096,
            vector_compression: Compression::UNCOMPRESSED,
            settings: serde_json::Value::Null,
        }
    }
}

/// Parses a compression setting: `none`, `snappy`, `zstd` or `zstd(N)`.
pub fn parse_compression(s: &str) -> Result<Compression> {
    Ok(match s {
        "none" | "uncompressed" => Compression::UNCOMPRESSED,
        "snappy" => Compression::SNAPPY,
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        _ => match s
            .strip_prefix("zstd(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|n| n.parse().ok())
        {
            Some(level) => Compression::ZSTD(ZstdLevel::try_new(level)?),
            None => bail!("unknown compression {s:?}: use none, snappy, zstd or zstd(N)"),
        },
    })
}

/// A `Write` that hashes what passes through it, so a file's checksum costs no second read.
struct HashingWriter<W> {
    inner: W,
    hasher: twox_hash::XxHash3_64,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        std::hash::Hasher::write(&mut self.hasher, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// An exclusive claim on writing one partition: a lock file holding the writer's process id.
#[derive(Debug)]
/// A lock file holding the writer's pid: a second writer is refused, a dead writer's lock is taken over.
pub struct WriteLock {
    path: PathBuf,
}

impl WriteLock {
    /// Takes the lock at `path` for writing `what` (named in the error when another process holds it).
    pub fn acquire(path: PathBuf, what: &dyn std::fmt::Display) -> Result<Self> {
        let key = what;
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    let alive = holder.trim().parse::<u32>().is_ok_and(process_alive);
                    if alive {
                        bail!(
                            "{key} is being written by process {} (lock {}); wait for it, or delete the lock if that process is gone",
                            holder.trim(),
                            path.display()
                        );
                    }
                    // The writer died: its lock is stale.
                    fs::remove_file(&path).ok();
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create lock {}", path.display())),
            }
        }
        bail!("cannot take the lock {} for {key}", path.display())
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        fs::remove_file(&self.path).ok();
    }
}

fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// The fingerprint of a partition's token keys (dataset, split, seq_id, pos, token_id) in row order:
/// equal fingerprints mean the same tokens in the same order. xxh3-128 over the keys' bytes.
#[derive(Default)]
pub struct TokenFingerprint {
    hasher: Xxh3,
    row: Vec<u8>,
}

impl TokenFingerprint {
    /// Adds one row.
    pub fn push(&mut self, dataset: &str, split: &str, seq_id: i64, pos: i32, token_id: i32) {
        self.row.clear();
        self.row.extend_from_slice(dataset.as_bytes());
        self.row.push(0);
        self.row.extend_from_slice(split.as_bytes());
        self.row.push(0);
        self.row.extend_from_slice(&seq_id.to_le_bytes());
        self.row.extend_from_slice(&pos.to_le_bytes());
        self.row.extend_from_slice(&token_id.to_le_bytes());
        self.hasher.update(&self.row);
    }

    /// The fingerprint as stored in manifests.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.hasher.digest128())
    }
}

/// Writes the record batches of one partition.
pub struct PartitionWriter {
    key: PartitionKey,
    schema: SchemaRef,
    props: WriterProperties,
    options: WriteOptions,
    staging: PathBuf,
    final_dir: PathBuf,
    current: Option<ArrowWriter<HashingWriter<BufWriter<File>>>>,
    rows_in_file: usize,
    files: Vec<FileEntry>,
    rows: u64,
    fingerprint: Option<TokenFingerprint>,
    /// The fingerprint of the tokens a partition without token keys was computed from.
    declared_fingerprint: Option<String>,
    encoding: Option<VectorEncoding>,
    _lock: WriteLock,
}

impl PartitionWriter {
    /// Starts writing `key` with files of `schema`. Fails if the partition is already complete
    /// (check [`CacheLayout::manifest`] first) or another process is writing it.
    pub fn create(layout: &CacheLayout, key: PartitionKey, schema: SchemaRef, options: WriteOptions) -> Result<Self> {
        key.validate()?;
        let final_dir = layout.partition_dir(&key);
        if final_dir.join(MANIFEST_FILE).exists() {
            bail!("partition {key} is already complete in {}", layout.root().display());
        }
        let staging_root = layout.staging_dir();
        fs::create_dir_all(&staging_root).with_context(|| {
            format!(
                "cannot create {}: is the cache directory writable?",
                staging_root.display()
            )
        })?;
        let name = key.to_string().replace('/', ",");
        let lock = WriteLock::acquire(staging_root.join(format!("{name}.lock")), &format!("partition {key}"))?;
        let staging = staging_root.join(&name);
        if staging.exists() {
            // Left by an interrupted run: start the partition again.
            fs::remove_dir_all(&staging).with_context(|| format!("cannot remove stale {}", staging.display()))?;
        }
        fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
        let has_keys = token_key_fields()
            .iter()
            .all(|f| schema.field_with_name(f.name()).is_ok());
        let encoding = schema
            .field_with_name(VECTOR_COLUMN)
            .ok()
            .map(VectorEncoding::from_field)
            .transpose()?;
        let props = writer_properties(&options, encoding.is_some());
        Ok(Self {
            key,
            schema,
            props,
            options,
            staging,
            final_dir,
            current: None,
            rows_in_file: 0,
            files: Vec::new(),
            rows: 0,
            fingerprint: has_keys.then(TokenFingerprint::default),
            declared_fingerprint: None,
            encoding,
            _lock: lock,
        })
    }

    /// Records the fingerprint of the tokens this partition summarises (for files without token keys,
    /// such as per-dataset totals), so a later run over other tokens finds it stale.
    pub fn declare_token_fingerprint(&mut self, fingerprint: String) {
        self.declared_fingerprint = Some(fingerprint);
    }

    /// The partition being written.
    pub fn key(&self) -> &PartitionKey {
        &self.key
    }

    /// Appends rows, starting a new file every `rows_per_file` rows.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.schema().fields() != self.schema.fields() {
            bail!("batch schema does not match the {} file schema", self.key.table);
        }
        self.hash_keys(batch)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open_file()?;
            }
            let room = self.options.rows_per_file - self.rows_in_file;
            let take = room.min(batch.num_rows() - offset);
            let writer = self.current.as_mut().expect("opened above");
            writer.write(&batch.slice(offset, take))?;
            self.rows_in_file += take;
            offset += take;
            if self.rows_in_file == self.options.rows_per_file {
                self.close_file()?;
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn hash_keys(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(fp) = self.fingerprint.as_mut() else {
            return Ok(());
        };
        let col = |name: &str| batch.column_by_name(name).expect("schema checked");
        let dataset = col("dataset").as_string::<i32>();
        let split = col("split").as_string::<i32>();
        let seq = col("seq_id").as_primitive::<Int64Type>();
        let pos = col("pos").as_primitive::<Int32Type>();
        let tok = col("token_id").as_primitive::<Int32Type>();
        for i in 0..batch.num_rows() {
            fp.push(
                dataset.value(i),
                split.value(i),
                seq.value(i),
                pos.value(i),
                tok.value(i),
            );
        }
        Ok(())
    }

    fn file_name(index: usize) -> String {
        format!("part-{index:05}.parquet")
    }

    fn open_file(&mut self) -> Result<()> {
        let path = self.staging.join(Self::file_name(self.files.len()));
        let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: twox_hash::XxHash3_64::new(),
            bytes: 0,
        };
        self.current = Some(ArrowWriter::try_new(
            sink,
            Arc::clone(&self.schema),
            Some(self.props.clone()),
        )?);
        self.rows_in_file = 0;
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        let Some(writer) = self.current.take() else {
            return Ok(());
        };
        let mut sink = writer
            .into_inner()
            .with_context(|| format!("cannot finish a file of {}", self.key))?;
        sink.flush()
            .with_context(|| format!("cannot write a file of {} (disk full?)", self.key))?;
        let file = sink.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
            .with_context(|| format!("cannot sync a file of {} (disk full?)", self.key))?;
        self.files.push(FileEntry {
            name: Self::file_name(self.files.len()),
            rows: self.rows_in_file as u64,
            bytes: sink.bytes,
            xxh3: format!("{:016x}", std::hash::Hasher::finish(&sink.hasher)),
        });
        self.rows_in_file = 0;
        Ok(())
    }

    /// Closes the last file, writes the manifest, and moves the partition into place.
    pub fn finish(mut self) -> Result<Manifest> {
        self.close_file()?;
        let manifest = Manifest {
            format: FORMAT_VERSION,
            partition: self.key.clone(),
            rows: self.rows,
            token_fingerprint: self
                .fingerprint
                .as_ref()
                .map(TokenFingerprint::hex)
                .or_else(|| self.declared_fingerprint.clone()),
            dtype: self.encoding.map(|e| e.dtype.name().to_string()),
            d_model: self.encoding.map(|e| e.d_model),
            files: self.files.clone(),
            settings: self.options.settings.clone(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        manifest.write(&self.staging.join(MANIFEST_FILE))?;
        if let Some(parent) = self.final_dir.parent() {
            fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if self.final_dir.exists() {
            // A directory without a manifest is not a partition: replace it.
            fs::remove_dir_all(&self.final_dir)?;
        }
        fs::rename(&self.staging, &self.final_dir)
            .with_context(|| format!("cannot move {} into place", self.final_dir.display()))?;
        Ok(manifest)
    }
}

fn writer_properties(options: &WriteOptions, has_vectors: bool) -> WriterProperties {
    // Key columns are small and always compressed; vectors follow `vector_compression`.
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(options.row_group_rows));
    if has_vectors {
        let col = ColumnPath::from(VECTOR_COLUMN);
        // Uncompressed vectors are stored PLAIN: decoding them is a copy. Compressed ones are
        // byte-stream-split first, which makes float bytes far more compressible (slower to decode).
        let encoding = match options.vector_compression {
            Compression::UNCOMPRESSED => Encoding::PLAIN,
            _ => Encoding::BYTE_STREAM_SPLIT,
        };
        b = b
            .set_column_compression(col.clone(), options.vector_compression)
            .set_column_dictionary_enabled(col.clone(), false)
            .set_column_encoding(col.clone(), encoding)
            .set_column_statistics_enabled(col, EnabledStatistics::None);
    }
    b.build()
}

/// Rows of activations for one dataset split, vectors row-major in f32.
#[derive(Debug, Clone, Copy)]
pub struct ActivationBatch<'a> {
    pub dataset: &'a str,
    pub split: &'a str,
    pub seq_id: &'a [i64],
    pub pos: &'a [i32],
    pub token_id: &'a [i32],
    /// rows × d_model values.
    pub vectors: &'a [f32],
}

/// Writes one `activations` partition from f32 vectors, stored in the configured encoding.
pub struct ActivationWriter {
    inner: PartitionWriter,
    encoding: VectorEncoding,
}

impl ActivationWriter {
    /// The Arrow schema of an activations file with vectors of `encoding`.
    pub fn file_schema(encoding: VectorEncoding) -> SchemaRef {
        let mut fields = token_key_fields();
        fields.push(encoding.storage_field(VECTOR_COLUMN));
        Arc::new(Schema::new(fields))
    }

    /// Starts the partition `key` (an activations partition).
    pub fn create(
        layout: &CacheLayout,
        key: PartitionKey,
        encoding: VectorEncoding,
        options: WriteOptions,
    ) -> Result<Self> {
        let inner = PartitionWriter::create(layout, key, Self::file_schema(encoding), options)?;
        Ok(Self { inner, encoding })
    }

    /// Appends rows.
    pub fn push(&mut self, batch: &ActivationBatch) -> Result<()> {
        let rows = batch.seq_id.len();
        if batch.pos.len() != rows
            || batch.token_id.len() != rows
            || batch.vectors.len() != rows * self.encoding.d_model
        {
            bail!(
                "activation batch for {} is inconsistent: {rows} seq_ids, {} positions, {} token ids, {} values for d_model {}",
                self.inner.key(),
                batch.pos.len(),
                batch.token_id.len(),
                batch.vectors.len(),
                self.encoding.d_model
            );
        }
        let record = RecordBatch::try_new(
            Arc::clone(&self.inner.schema),
            vec![
                Arc::new(StringArray::from(vec![batch.dataset; rows])),
                Arc::new(StringArray::from(vec![batch.split; rows])),
                Arc::new(Int64Array::from(batch.seq_id.to_vec())),
                Arc::new(Int32Array::from(batch.pos.to_vec())),
                Arc::new(Int32Array::from(batch.token_id.to_vec())),
                Arc::new(self.encoding.encode(batch.vectors)?),
            ],
        )?;
        self.inner.write(&record)
    }

    /// Completes the partition.
    pub fn finish(self) -> Result<Manifest> {
        self.inner.finish()
    }
}
