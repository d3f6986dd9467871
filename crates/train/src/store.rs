//! Trained dictionaries in the cache: `dictionaries/model=M/organism=O/name=N/` holds `latents.parquet` (one
//! row per latent or component: encoder and decoder vectors, statistics) and `_dictionary.json` (how it was
//! trained, its normalisation and biases, its training curve and validation figures), written last and
//! moved into place with the directory, so a dictionary is complete or absent.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use diffsql_core::cache::layout::CacheLayout;
use diffsql_core::config::{DictionaryKind, TrainConfig};

/// Directory of all dictionaries under a cache.
pub const DICTIONARIES_DIR: &str = "dictionaries";
/// The file that marks a dictionary complete.
pub const DICTIONARY_MANIFEST: &str = "_dictionary.json";
/// The latents table's file.
pub const LATENTS_FILE: &str = "latents.parquet";
/// Version of the dictionary format this build writes and reads.
pub const DICTIONARY_FORMAT: u32 = 1;

/// Which dictionary: model, organism and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DictionaryId {
    pub model: String,
    pub organism: String,
    pub name: String,
}

impl std::fmt::Display for DictionaryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.model, self.organism, self.name)
    }
}

/// One point of a training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub tokens: u64,
    pub loss: f32,
    pub fve: f32,
    pub l0: f32,
    pub dead: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_fve: Option<f32>,
}

/// Figures measured on the held-out sequences after training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub tokens: u64,
    /// Fraction of variance explained (PCA: by the kept components).
    pub fve: f64,
    /// Mean active latents per token (PCA: components kept).
    pub l0: f64,
    /// Fraction of latents that never fired on the validation tokens.
    pub dead_fraction: f64,
}

/// Everything known about a dictionary besides its latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DictionaryManifest {
    pub format: u32,
    pub id: DictionaryId,
    pub kind: DictionaryKind,
    pub layer: i32,
    pub datasets: Vec<String>,
    pub d_model: usize,
    /// Latents (PCA: components).
    pub latents: usize,
    /// The training settings as resolved.
    pub settings: TrainConfig,
    /// Inputs were multiplied by these (one per side: base, ft; or one for ft − base) before training, so
    /// that the mean squared norm is d_model; the SQL functions apply them too.
    pub scale: Vec<f32>,
    /// Decoder bias (sides × d_model, normalised units); PCA: the mean of ft − base (model units).
    pub bias: Vec<f32>,
    /// BatchTopK inference threshold on decoder-norm-scaled activations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    pub train_tokens: u64,
    pub steps: u64,
    pub seconds: f64,
    pub curve: Vec<CurvePoint>,
    pub validation: Validation,
    /// Token fingerprint of the cached partition it was trained on.
    pub source_fingerprint: String,
    /// Size and xxh3-64 of `latents.parquet`.
    pub latents_bytes: u64,
    pub latents_xxh3: String,
    pub created_unix: u64,
}

/// Names of the sides of a dictionary's vectors: `base`, `ft` for a crosscoder, one unnamed side otherwise.
pub fn side_names(kind: DictionaryKind) -> &'static [&'static str] {
    match kind {
        DictionaryKind::Crosscoder => &["base", "ft"],
        _ => &[""],
    }
}

/// `prefix_side` or `prefix` for the unnamed side.
pub fn side_column(prefix: &str, side: &str) -> String {
    if side.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}_{side}")
    }
}

/// A float32 vector column of `rows` vectors of length `d` from row-major values.
pub fn vector_column(values: Vec<f32>, d: usize) -> Result<ArrayRef> {
    let item = Arc::new(Field::new_list_field(DataType::Float32, true));
    Ok(Arc::new(FixedSizeListArray::try_new(
        item,
        d as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?))
}

/// The type of [`vector_column`].
pub fn vector_type(d: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), d as i32)
}

/// Columns of a latents table, built by the trainers.
#[derive(Default)]
pub struct LatentColumns {
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl LatentColumns {
    pub fn ids(mut self, n: usize) -> Self {
        self.fields.push(Field::new("latent", DataType::Int32, false));
        self.columns.push(Arc::new(Int32Array::from_iter_values(0..n as i32)));
        self
    }
    pub fn vectors(mut self, name: &str, values: Vec<f32>, d: usize) -> Result<Self> {
        self.fields.push(Field::new(name, vector_type(d), false));
        self.columns.push(vector_column(values, d)?);
        Ok(self)
    }
    pub fn f32(mut self, name: &str, values: Vec<f32>) -> Self {
        self.fields.push(Field::new(name, DataType::Float32, true));
        self.columns.push(Arc::new(Float32Array::from(values)));
        self
    }
    pub fn f32_opt(mut self, name: &str, values: Vec<Option<f32>>) -> Self {
        self.fields.push(Field::new(name, DataType::Float32, true));
        self.columns.push(Arc::new(Float32Array::from(values)));
        self
    }
    pub fn f64(mut self, name: &str, values: Vec<f64>) -> Self {
        self.fields.push(Field::new(name, DataType::Float64, true));
        self.columns.push(Arc::new(Float64Array::from(values)));
        self
    }
    pub fn batch(self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(Arc::new(Schema::new(self.fields)), self.columns)?)
    }
}

/// Where dictionaries live in a cache.
pub fn dictionary_dir(layout: &CacheLayout, id: &DictionaryId) -> PathBuf {
    layout
        .root()
        .join(DICTIONARIES_DIR)
        .join(format!("model={}", id.model))
        .join(format!("organism={}", id.organism))
        .join(format!("name={}", id.name))
}

/// Where a dictionary's training keeps its checkpoint and lock.
pub fn checkpoint_dir(layout: &CacheLayout, id: &DictionaryId) -> PathBuf {
    layout.staging_dir().join(format!(
        "dictionary,model={},organism={},name={}",
        id.model, id.organism, id.name
    ))
}

/// The manifest of a complete dictionary, or None.
pub fn read_manifest(layout: &CacheLayout, id: &DictionaryId) -> Result<Option<DictionaryManifest>> {
    let path = dictionary_dir(layout, id).join(DICTIONARY_MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    read_manifest_file(&path).map(Some)
}

fn read_manifest_file(path: &Path) -> Result<DictionaryManifest> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let m: DictionaryManifest = serde_json::from_str(&text).with_context(|| {
        format!(
            "dictionary manifest {} is corrupt: delete its directory and train it again",
            path.display()
        )
    })?;
    if m.format != DICTIONARY_FORMAT {
        bail!(
            "dictionary {} has format {} but this build reads {DICTIONARY_FORMAT}: train it again",
            m.id,
            m.format
        );
    }
    Ok(m)
}

/// Every complete dictionary in a cache, sorted by id.
pub fn list(layout: &CacheLayout) -> Result<Vec<DictionaryManifest>> {
    let root = layout.root().join(DICTIONARIES_DIR);
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for model in read_dirs(&root)? {
        for organism in read_dirs(&model)? {
            for name in read_dirs(&organism)? {
                let path = name.join(DICTIONARY_MANIFEST);
                if path.exists() {
                    out.push(read_manifest_file(&path)?);
                }
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

/// Finds a dictionary by `model/organism/name`, `organism/name` or `name`; a short form must be unambiguous.
pub fn resolve(layout: &CacheLayout, spec: &str) -> Result<DictionaryManifest> {
    let all = list(layout)?;
    let parts: Vec<&str> = spec.split('/').collect();
    let matches: Vec<&DictionaryManifest> = all
        .iter()
        .filter(|m| match parts.as_slice() {
            [name] => m.id.name == *name,
            [organism, name] => m.id.organism == *organism && m.id.name == *name,
            [model, organism, name] => m.id.model == *model && m.id.organism == *organism && m.id.name == *name,
            _ => false,
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let known: Vec<String> = all.iter().map(|m| m.id.to_string()).collect();
            bail!(
                "unknown dictionary {spec:?}: the cache holds {}; train one with diffsql run diffing/method=crosscoder (or sae_difference, pca)",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        }
        many => bail!(
            "dictionary {spec:?} is ambiguous: {}; give model/organism/name",
            many.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Writes a dictionary: latents and manifest in a staging directory, then the directory moved into place.
pub fn write(
    layout: &CacheLayout,
    mut manifest: DictionaryManifest,
    latents: &RecordBatch,
) -> Result<DictionaryManifest> {
    let final_dir = dictionary_dir(layout, &manifest.id);
    let staging = layout.staging_dir().join(format!(
        "dictionary-out,model={},organism={},name={}",
        manifest.id.model, manifest.id.organism, manifest.id.name
    ));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("cannot remove stale {}", staging.display()))?;
    }
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let mut buf = Vec::new();
    {
        let mut w = ArrowWriter::try_new(&mut buf, latents.schema(), None)?;
        w.write(latents)?;
        w.close()?;
    }
    manifest.latents_bytes = buf.len() as u64;
    manifest.latents_xxh3 = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&buf));
    fs::write(staging.join(LATENTS_FILE), &buf)?;
    let text = serde_json::to_string_pretty(&manifest)? + "\n";
    fs::write(staging.join(DICTIONARY_MANIFEST), text)?;
    if let Some(parent) = final_dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).with_context(|| format!("cannot replace {}", final_dir.display()))?;
    }
    fs::rename(&staging, &final_dir).with_context(|| format!("cannot move {} into place", final_dir.display()))?;
    Ok(manifest)
}

/// The bytes of a dictionary's latents file, checked against its manifest (size and xxh3).
fn verified_latents_bytes(layout: &CacheLayout, manifest: &DictionaryManifest) -> Result<Vec<u8>> {
    let path = dictionary_dir(layout, &manifest.id).join(LATENTS_FILE);
    let fix = "delete its directory (or run diffsql check --repair) and train it again";
    let bytes = fs::read(&path)
        .with_context(|| format!("dictionary {}: cannot read {}; {fix}", manifest.id, path.display()))?;
    let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
    if bytes.len() as u64 != manifest.latents_bytes || hash != manifest.latents_xxh3 {
        bail!(
            "dictionary {}: {} does not match its manifest (damaged or changed); {fix}",
            manifest.id,
            path.display()
        );
    }
    Ok(bytes)
}

/// A damaged dictionary found by [`check`]: its directory and what is wrong.
#[derive(Debug, Clone)]
pub struct DamagedDictionary {
    pub dir: PathBuf,
    pub problem: String,
}

/// Verifies every dictionary of the cache (manifest readable, latents file matching it); with `repair`,
/// removes the damaged ones (manifest first). Returns how many were checked and the damaged ones.
pub fn check(layout: &CacheLayout, repair: bool) -> Result<(usize, Vec<DamagedDictionary>)> {
    let root = layout.root().join(DICTIONARIES_DIR);
    let (mut checked, mut damaged) = (0, Vec::new());
    if !root.exists() {
        return Ok((0, damaged));
    }
    for model in read_dirs(&root)? {
        for organism in read_dirs(&model)? {
            for dir in read_dirs(&organism)? {
                let path = dir.join(DICTIONARY_MANIFEST);
                if !path.exists() {
                    continue;
                }
                checked += 1;
                let result = read_manifest_file(&path).and_then(|m| verified_latents_bytes(layout, &m).map(|_| ()));
                if let Err(e) = result {
                    damaged.push(DamagedDictionary {
                        dir: dir.clone(),
                        problem: format!("{e:#}"),
                    });
                }
            }
        }
    }
    if repair {
        for d in &damaged {
            fs::remove_file(d.dir.join(DICTIONARY_MANIFEST)).ok();
            fs::remove_dir_all(&d.dir).with_context(|| format!("cannot remove {}", d.dir.display()))?;
        }
    }
    Ok((checked, damaged))
}

/// Reads a dictionary's latents, checked against its manifest (size and xxh3).
pub fn read_latents(layout: &CacheLayout, manifest: &DictionaryManifest) -> Result<RecordBatch> {
    let path = dictionary_dir(layout, &manifest.id).join(LATENTS_FILE);
    let fix = "delete its directory and train it again";
    let bytes = verified_latents_bytes(layout, manifest)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .and_then(|b| b.with_batch_size(usize::MAX >> 1).build())
        .with_context(|| format!("dictionary {}: {} is unreadable; {fix}", manifest.id, path.display()))?;
    let batches: Vec<RecordBatch> = reader.collect::<std::result::Result<_, _>>()?;
    let schema: SchemaRef = batches
        .first()
        .map(|b| b.schema())
        .with_context(|| format!("dictionary {}: {} holds no rows; {fix}", manifest.id, path.display()))?;
    let batch = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
    if batch.num_rows() != manifest.latents {
        bail!(
            "dictionary {}: {} rows for {} latents; {fix}",
            manifest.id,
            batch.num_rows(),
            manifest.latents
        );
    }
    Ok(batch)
}

/// The row-major values of a vector column of a latents batch.
pub fn column_values(batch: &RecordBatch, name: &str) -> Result<Vec<f32>> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("the latents table has no column {name}"))?;
    let list = col.as_fixed_size_list();
    Ok(list.values().as_primitive::<Float32Type>().values().to_vec())
}

/// A float column of a latents batch.
pub fn scalar_values(batch: &RecordBatch, name: &str) -> Result<Vec<f32>> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("the latents table has no column {name}"))?;
    Ok(col.as_primitive::<Float32Type>().values().to_vec())
}

/// Whether a column exists and is non-empty (for optional statistics).
pub fn has_column(batch: &RecordBatch, name: &str) -> bool {
    batch.column_by_name(name).is_some_and(|c| !c.is_empty())
}
