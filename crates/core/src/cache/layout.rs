//! Where each table and partition of a cache lives, and the Arrow schemas of the files.
//!
//! ```text
//! <root>/activations/model=M/organism=O/layer=L/part-00000.parquet, _manifest.json
//! <root>/tokens/model=M/organism=O/part-00000.parquet, _manifest.json
//! <root>/sequences/model=M/part-00000.parquet, _manifest.json
//! <root>/final_hidden/model=M/organism=O/...   the last normed hidden state (input of the unembedding)
//! <root>/vocab/model=M/...                       every token id of the tokenizer with its text
//! <root>/logit_diff/model=M/organism=O/...       per token, the k largest ft − base logit differences
//! <root>/logit_diff_totals/model=M/organism=O/... per dataset and vocabulary token, sums over every token
//! <root>/.staging/...   partitions being written; renamed into place when complete
//! ```
//! The base model's own activations are the partition `organism=base`.
//!
//! A cache on an object store (`s3://bucket/prefix`, [`super::object`]) has the same tree of objects under its
//! prefix; partitions are written under a local spool directory's `.staging/` and uploaded, manifest last.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::manifest::Manifest;
use super::object::{is_object_url, ObjectCache};
use super::partition::key_from_values;
pub use super::partition::{PartitionKey, Table, BASE_ORGANISM};
use super::source::CachePath;

/// Name of the manifest file in each partition directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// A partition's name under `.staging/`: its key with `/` as `,` (one flat directory).
fn staging_name(key: &PartitionKey) -> String {
    key.to_string().replace('/', ",")
}

/// A cache directory, or a cache on an object store.
#[derive(Debug, Clone)]
pub struct CacheLayout {
    /// The cache directory; for an object-store cache, the local spool where partitions are staged.
    root: PathBuf,
    /// The object store holding the cache, or why it could not be opened (said by the first use).
    object: Option<Result<Arc<ObjectCache>, Arc<String>>>,
}

/// The local directory where partitions of the object-store cache at `url` are staged before upload
/// (`DIFFSQL_SPOOL`, else under the user's cache directory), one per URL.
fn spool_dir(url: &str) -> PathBuf {
    let base = std::env::var_os("DIFFSQL_SPOOL").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("diffsql/spool")
    });
    let name: String = url
        .trim_start_matches(super::object::S3_SCHEME)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join(name)
}

impl CacheLayout {
    /// The cache at `root` (which need not exist yet): a directory, or `s3://bucket/prefix`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root: PathBuf = root.into();
        match root.to_str().filter(|r| is_object_url(r)) {
            Some(url) => {
                let object = ObjectCache::shared(url).map_err(|e| Arc::new(format!("{e:#}")));
                Self {
                    root: spool_dir(url),
                    object: Some(object),
                }
            }
            None => Self { root, object: None },
        }
    }

    /// The cache directory (for an object-store cache, its local spool).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the cache is, for messages: its directory or its URL.
    pub fn location(&self) -> String {
        match &self.object {
            Some(Ok(o)) => o.url().to_string(),
            _ => self.root.display().to_string(),
        }
    }

    /// The object store holding the cache (`None` for a directory).
    pub fn object(&self) -> Result<Option<&Arc<ObjectCache>>> {
        match &self.object {
            None => Ok(None),
            Some(Ok(o)) => Ok(Some(o)),
            Some(Err(e)) => anyhow::bail!("{e}"),
        }
    }

    /// Whether the cache exists: its directory, or any object under its prefix (the store is reached, so a
    /// missing bucket or refused credentials are errors here).
    pub fn exists(&self) -> Result<bool> {
        match self.object()? {
            Some(o) => Ok(!o.is_empty()?),
            None => match std::fs::read_dir(&self.root) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => anyhow::bail!(
                    "cannot read the cache directory {}: {e}; check its permissions, or pass --cache DIR",
                    self.root.display()
                ),
            },
        }
    }

    /// Whether the cache is on an object store.
    pub fn is_object(&self) -> bool {
        self.object.is_some()
    }

    /// A partition's path inside the cache, `/`-separated (its directory, or its objects' prefix).
    pub fn partition_relative(key: &PartitionKey) -> String {
        let mut parts = vec![key.table.name().to_string()];
        parts.extend(key.components());
        parts.join("/")
    }

    /// A data file of a partition, `bytes` long as its manifest records.
    pub fn file(&self, key: &PartitionKey, name: &str, bytes: u64) -> Result<CachePath> {
        Ok(match self.object()? {
            None => CachePath::Local(self.partition_dir(key).join(name)),
            Some(o) => CachePath::Object {
                cache: Arc::clone(o),
                path: o.path(&format!("{}/{name}", Self::partition_relative(key))),
                size: bytes,
            },
        })
    }

    /// Every data file of a partition, in its manifest's order.
    pub fn files(&self, key: &PartitionKey, manifest: &Manifest) -> Result<Vec<CachePath>> {
        manifest
            .files
            .iter()
            .map(|f| self.file(key, &f.name, f.bytes))
            .collect()
    }

    /// The directory of a table.
    pub fn table_dir(&self, table: Table) -> PathBuf {
        self.root.join(table.name())
    }

    /// The directory of a partition.
    pub fn partition_dir(&self, key: &PartitionKey) -> PathBuf {
        let mut p = self.table_dir(key.table);
        for c in key.components() {
            p.push(c);
        }
        p
    }

    /// Where partitions are written before they are renamed into place.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }

    /// Where a partition is written before it is renamed into place.
    pub fn partition_staging_dir(&self, key: &PartitionKey) -> PathBuf {
        self.staging_dir().join(staging_name(key))
    }

    /// A partition's name among locks (its key with `/` as `,`).
    pub fn partition_lock_name(&self, key: &PartitionKey) -> String {
        staging_name(key)
    }

    /// The lock file of a partition's writer ([`WriteLock`](super::lock::WriteLock)).
    pub fn partition_lock_path(&self, key: &PartitionKey) -> PathBuf {
        self.staging_dir().join(format!("{}.lock", staging_name(key)))
    }

    /// Creates the cache and its staging directory if needed and checks that files can be written there,
    /// so a read-only or full cache stops a run before any model is loaded.
    pub fn ensure_writable(&self) -> Result<()> {
        if let Some(o) = self.object()? {
            o.probe()?;
        }
        let staging = self.staging_dir();
        std::fs::create_dir_all(&staging).with_context(|| {
            format!(
                "cannot create the cache directory {}: check the path and its permissions, or set cache_dir",
                staging.display()
            )
        })?;
        let probe = staging.join(format!(".write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"probe").with_context(|| {
            format!(
                "the cache {} is not writable: check its permissions and free space, or set cache_dir",
                self.root.display()
            )
        })?;
        std::fs::remove_file(&probe).ok();
        Ok(())
    }

    /// The manifest of a partition, if the partition is complete.
    pub fn manifest(&self, key: &PartitionKey) -> Result<Option<Manifest>> {
        if let Some(o) = self.object()? {
            let relative = format!("{}/{MANIFEST_FILE}", Self::partition_relative(key));
            return match o.get_optional(&relative)? {
                None => Ok(None),
                Some(bytes) => Manifest::parse(&bytes, &o.url_of(&o.path(&relative))).map(Some),
            };
        }
        let path = self.partition_dir(key).join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Manifest::read(&path).map(Some)
    }

    /// Every complete partition of `table` (those with a manifest), sorted.
    /// The depth of `model` as preprocessing recorded it in the manifests of its activations.
    pub fn recorded_depth(&self, model: &str) -> Result<usize> {
        self.partitions(Table::Activations)?
            .iter()
            .filter(|(k, _)| k.model == model)
            .find_map(|(_, m)| m.settings.get("num_layers").and_then(|n| n.as_u64()))
            .map(|n| n as usize)
            .with_context(|| {
                format!(
                    "no activations of model {model} with a recorded depth in {}: run diffsql preprocess first",
                    self.location()
                )
            })
    }

    pub fn partitions(&self, table: Table) -> Result<Vec<(PartitionKey, Manifest)>> {
        if let Some(o) = self.object()? {
            return object_partitions(o, table);
        }
        let mut out = Vec::new();
        let dir = self.table_dir(table);
        if dir.is_dir() {
            collect_partitions(&dir, table, &mut Vec::new(), &mut out)?;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// The complete partitions of `table` in an object store: every manifest under the table's prefix, fetched
/// concurrently.
fn object_partitions(o: &ObjectCache, table: Table) -> Result<Vec<(PartitionKey, Manifest)>> {
    let depth = table.partition_columns().len();
    let table_prefix = o.path(table.name());
    let mut keys = Vec::new();
    for meta in o.list(table.name())? {
        let Some(rest) = meta.location.prefix_match(&table_prefix) else {
            continue;
        };
        let parts: Vec<String> = rest.map(|p| p.as_ref().to_string()).collect();
        if parts.len() != depth + 1 || parts[depth] != MANIFEST_FILE {
            continue;
        }
        let mut values = Vec::new();
        for (column, part) in table.partition_columns().iter().zip(&parts) {
            match part.strip_prefix(column).and_then(|r| r.strip_prefix('=')) {
                Some(v) => values.push((column.to_string(), v.to_string())),
                None => break,
            }
        }
        if values.len() == depth {
            keys.push((key_from_values(table, &values)?, meta.location));
        }
    }
    let manifests = o.get_many(keys.iter().map(|(_, p)| p.clone()).collect())?;
    let mut out = keys
        .into_iter()
        .zip(manifests)
        .map(|((key, path), bytes)| Ok((key, Manifest::parse(&bytes, &o.url_of(&path))?)))
        .collect::<Result<Vec<_>>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn collect_partitions(
    dir: &Path,
    table: Table,
    values: &mut Vec<(String, String)>,
    out: &mut Vec<(PartitionKey, Manifest)>,
) -> Result<()> {
    let depth = table.partition_columns().len();
    if values.len() == depth {
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            let manifest = Manifest::read(&manifest_path)?;
            out.push((key_from_values(table, values)?, manifest));
        }
        return Ok(());
    }
    let column = table.partition_columns()[values.len()];
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(value) = name.strip_prefix(column).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        values.push((column.to_string(), value.to_string()));
        collect_partitions(&entry.path(), table, values, out)?;
        values.pop();
    }
    Ok(())
}

/// Columns that identify a token, shared by `activations` and `tokens` files.
pub fn token_key_fields() -> Vec<Field> {
    vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("seq_id", DataType::Int64, false),
        Field::new("pos", DataType::Int32, false),
        Field::new("token_id", DataType::Int32, false),
    ]
}

/// Schema of a `tokens` file (without the partition columns).
pub fn tokens_file_schema() -> SchemaRef {
    let mut fields = token_key_fields();
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    fields.extend([
        Field::new("token", DataType::Utf8, true),
        Field::new("logprob", DataType::Float32, true),
        Field::new("topk_ids", DataType::List(item(DataType::Int32)), true),
        Field::new("topk_logprobs", DataType::List(item(DataType::Float32)), true),
        Field::new("kl", DataType::Float32, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Schema of a `sequences` file (without the partition columns).
pub fn sequences_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("seq_id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("n_tokens", DataType::Int32, false),
    ]))
}

/// Schema of a `logit_diff` file (without the partition columns): the token's keys, then the ids and values
/// of the largest ft − base logit differences at that token, largest first.
pub fn logit_diff_file_schema() -> SchemaRef {
    let mut fields = token_key_fields();
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    fields.extend([
        Field::new("top_ids", DataType::List(item(DataType::Int32)), false),
        Field::new("top_values", DataType::List(item(DataType::Float32)), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Schema of a `logit_diff_totals` file (without the partition columns): per dataset, split and vocabulary
/// token, over every cached token of the dataset.
pub fn logit_diff_totals_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("token_id", DataType::Int32, false),
        // Tokens of the dataset (the same in every row of it).
        Field::new("positions", DataType::Int64, false),
        // Σ (ft − base logit) of this vocabulary token over the positions.
        Field::new("sum_diff", DataType::Float64, false),
        // Positions where its difference is > 0.
        Field::new("positive_count", DataType::Int64, false),
        // Positions where it is among the k largest differences / the k smallest.
        Field::new("top_count", DataType::Int64, false),
        Field::new("bottom_count", DataType::Int64, false),
    ]))
}

/// Schema of a `vocab` file (without the partition column).
pub fn vocab_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("token_id", DataType::Int32, false),
        Field::new("token", DataType::Utf8, true),
    ]))
}

/// Partition columns as typed table columns.
pub fn partition_fields(table: Table) -> Vec<Field> {
    table
        .partition_columns()
        .iter()
        .map(|c| match *c {
            "layer" => Field::new("layer", DataType::Int32, false),
            other => Field::new(other, DataType::Utf8, false),
        })
        .collect()
}
