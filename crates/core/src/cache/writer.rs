//! Writes cache partitions atomically: files go to a staging directory, the manifest is written last, and
//! the directory is renamed into place, so readers never see a partial partition.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, Schema, SchemaRef};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use xxhash_rust::xxh3::Xxh3;

use super::atomic::move_into_place;
pub use super::atomic::write_atomic;
use super::file_writer::{vector_page_rows, FileSink};
use super::layout::{token_key_fields, CacheLayout, PartitionKey, MANIFEST_FILE};
use super::lock::ObjectLock;
pub use super::lock::WriteLock;
use super::manifest::{FileEntry, Manifest, FORMAT_VERSION};
use super::object::ObjectCache;
use super::vectors::VectorEncoding;
use crate::config::VectorCompression;

/// Name of the vector column in `activations` files.
pub const VECTOR_COLUMN: &str = "act";

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
    /// Whether a writer waits for another process writing the same partition (preprocessing: then it finds
    /// the partition complete, and skips it) instead of failing at once.
    pub wait_for_other_writers: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            rows_per_file: 1 << 17,
            row_group_rows: 4096,
            vector_compression: Compression::UNCOMPRESSED,
            settings: serde_json::Value::Null,
            wait_for_other_writers: false,
        }
    }
}

/// The Parquet codec of a compression setting.
pub fn parquet_compression(c: VectorCompression) -> Compression {
    match c {
        VectorCompression::None => Compression::UNCOMPRESSED,
        VectorCompression::Snappy => Compression::SNAPPY,
        VectorCompression::Zstd(None) => Compression::ZSTD(ZstdLevel::default()),
        // The level was checked when the setting was parsed.
        VectorCompression::Zstd(Some(level)) => Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default()),
    }
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

/// Why [`PartitionWriter::create`] did not start: the partition is complete, found before or after waiting
/// for its lock (another writer finished it meanwhile). Callers that plan their writes downcast to this and
/// plan again, so a partition finished meanwhile is skipped, as on a rerun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlreadyComplete {
    pub key: PartitionKey,
    pub cache: String,
}

impl std::fmt::Display for AlreadyComplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition {} is already complete in {}", self.key, self.cache)
    }
}

impl std::error::Error for AlreadyComplete {}

/// Writes the record batches of one partition.
pub struct PartitionWriter {
    key: PartitionKey,
    schema: SchemaRef,
    props: WriterProperties,
    options: WriteOptions,
    staging: PathBuf,
    final_dir: PathBuf,
    current: Option<FileSink>,
    rows_in_file: usize,
    files: Vec<FileEntry>,
    rows: u64,
    fingerprint: Option<TokenFingerprint>,
    /// The fingerprint of the tokens a partition without token keys was computed from.
    declared_fingerprint: Option<String>,
    encoding: Option<VectorEncoding>,
    /// Whether the vector column's values are aligned in the file (uncompressed vectors, stored first).
    aligned_vectors: bool,
    /// The object store the partition is uploaded to when finished, and its lock there.
    object: Option<(Arc<ObjectCache>, ObjectLock)>,
    _lock: WriteLock,
}

impl PartitionWriter {
    /// Starts writing `key` with files of `schema`. Fails if the partition is already complete
    /// (check [`CacheLayout::manifest`] first) or another process is writing it.
    pub fn create(layout: &CacheLayout, key: PartitionKey, schema: SchemaRef, options: WriteOptions) -> Result<Self> {
        key.validate()?;
        let final_dir = layout.partition_dir(&key);
        let store = layout.object()?.cloned();
        let manifest_relative = format!("{}/{MANIFEST_FILE}", CacheLayout::partition_relative(&key));
        let complete = || -> Result<()> {
            let present = match &store {
                None => final_dir.join(MANIFEST_FILE).exists(),
                Some(o) => o.head(&manifest_relative)?.is_some(),
            };
            if present {
                return Err(AlreadyComplete {
                    key: key.clone(),
                    cache: layout.location(),
                }
                .into());
            }
            Ok(())
        };
        complete()?;
        let staging_root = layout.staging_dir();
        fs::create_dir_all(&staging_root).with_context(|| {
            format!(
                "cannot create {}: is the cache directory writable?",
                staging_root.display()
            )
        })?;
        let what = format!("partition {key}");
        let lock_path = layout.partition_lock_path(&key);
        let lock = if options.wait_for_other_writers {
            WriteLock::acquire_waiting(lock_path, &what)?
        } else {
            WriteLock::acquire(lock_path, &what)?
        };
        let object = match store.clone() {
            None => None,
            Some(o) => {
                let relative = format!(".locks/{}.lock", layout.partition_lock_name(&key));
                let lock = ObjectLock::acquire(&o, relative, &what, options.wait_for_other_writers)?;
                Some((o, lock))
            }
        };
        // Another writer may have finished it while we waited.
        complete()?;
        let staging = layout.partition_staging_dir(&key);
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
        let aligned_vectors = encoding.is_some()
            && options.vector_compression == Compression::UNCOMPRESSED
            && schema.fields().first().is_some_and(|f| f.name() == VECTOR_COLUMN);
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
            aligned_vectors,
            object,
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
            writer
                .write(&batch.slice(offset, take))
                .with_context(|| format!("cannot write a file of {}", self.key))?;
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
        self.current = Some(FileSink::create(
            &path,
            Arc::clone(&self.schema),
            self.props.clone(),
            self.options.row_group_rows,
            self.aligned_vectors,
        )?);
        self.rows_in_file = 0;
        Ok(())
    }

    fn close_file(&mut self) -> Result<()> {
        let Some(sink) = self.current.take() else {
            return Ok(());
        };
        let (bytes, xxh3) = sink
            .finish()
            .with_context(|| format!("cannot finish a file of {} (disk full?)", self.key))?;
        self.files.push(FileEntry {
            name: Self::file_name(self.files.len()),
            rows: self.rows_in_file as u64,
            bytes,
            xxh3,
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
        if let Some((object, _lock)) = &self.object {
            // Every data object complete first, the manifest last: until it is there the partition is not.
            let relative = CacheLayout::partition_relative(&self.key);
            for f in &self.files {
                object.upload(&self.staging.join(&f.name), &format!("{relative}/{}", f.name))?;
            }
            object.upload(
                &self.staging.join(MANIFEST_FILE),
                &format!("{relative}/{MANIFEST_FILE}"),
            )?;
            fs::remove_dir_all(&self.staging).ok();
            return Ok(manifest);
        }
        // A directory without a manifest in its place is not a partition: it is replaced.
        move_into_place(&self.staging, &self.final_dir)?;
        Ok(manifest)
    }
}

fn writer_properties(options: &WriteOptions, has_vectors: bool) -> WriterProperties {
    // Key columns are small and always compressed; vectors follow `vector_compression`.
    // Row groups are cut by `FileSink`, which also keeps a row group's vectors in one page.
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(None)
        .set_data_page_row_count_limit(vector_page_rows(options.row_group_rows));
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
            .set_column_data_page_size_limit(col.clone(), usize::MAX)
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
    /// The Arrow schema of an activations file with vectors of `encoding`: the vectors first (so that their
    /// pages can be aligned, see `file_writer`), then the token keys. Readers find columns by name: caches
    /// written before 2026-12 hold the vectors last.
    pub fn file_schema(encoding: VectorEncoding) -> SchemaRef {
        let mut fields = vec![encoding.storage_field(VECTOR_COLUMN)];
        fields.extend(token_key_fields());
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
                Arc::new(self.encoding.encode(batch.vectors)?),
                Arc::new(StringArray::from(vec![batch.dataset; rows])),
                Arc::new(StringArray::from(vec![batch.split; rows])),
                Arc::new(Int64Array::from(batch.seq_id.to_vec())),
                Arc::new(Int32Array::from(batch.pos.to_vec())),
                Arc::new(Int32Array::from(batch.token_id.to_vec())),
            ],
        )?;
        self.inner.write(&record)
    }

    /// Completes the partition.
    pub fn finish(self) -> Result<Manifest> {
        self.inner.finish()
    }
}
