//! Training rows straight from the cache: (base, ft) pairs or ft − base differences of one layer, read row
//! group by row group from the Parquet files in a seeded shuffled order, through a bounded shuffle buffer,
//! with a validation split held out by sequence.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{Array, AsArray, FixedSizeBinaryArray};
use datafusion::arrow::datatypes::Int64Type;
use diffsql_udfs::vector::{decode_le_bytes, ElementType};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use diffsql_core::cache::layout::{CacheLayout, PartitionKey, Table};
use diffsql_core::cache::source::CacheFile;
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::verify::verify_partition;
use diffsql_core::cache::writer::VECTOR_COLUMN;

/// What one training row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    /// The base vector followed by the organism's: 2 × d_model values.
    Pair,
    /// ft − base: d_model values.
    Difference,
}

impl RowKind {
    /// Values per row for vectors of length `d_model`.
    pub fn width(self, d_model: usize) -> usize {
        match self {
            Self::Pair => 2 * d_model,
            Self::Difference => d_model,
        }
    }
}

/// Which rows of the cache a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

/// Where the training rows come from.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub model: String,
    pub organism: String,
    pub layer: i32,
    /// Datasets to read; empty reads every dataset of the partition.
    pub datasets: Vec<String>,
    /// Fraction of sequences held out for validation (by a hash of dataset and seq_id).
    pub validation_fraction: f64,
    /// At most this many training rows are used (the rest of the cache is not read).
    pub max_train_rows: usize,
}

/// One row group of an organism file beside the same row group of its base file.
#[derive(Debug, Clone)]
struct RowGroupUnit {
    ft_file: Arc<CacheFile>,
    base_file: Arc<CacheFile>,
    row_group: usize,
    /// Which rows of the row group are in the train split (after the dataset filter).
    train: Vec<bool>,
    /// Which are in the validation split.
    validation: Vec<bool>,
}

/// The cached rows of one layer of a model pair, ready to be streamed.
#[derive(Debug, Clone)]
pub struct TrainingSource {
    units: Vec<RowGroupUnit>,
    encoding: VectorEncoding,
    /// Rows of the train split (after `max_train_rows`).
    pub train_rows: usize,
    /// Rows of the validation split.
    pub validation_rows: usize,
    /// Datasets found in the rows read.
    pub datasets: Vec<String>,
}

/// Whether a sequence is held out: a stable hash of (dataset, seq_id), so the split never depends on file
/// order, seeds or which layer is read.
fn held_out(dataset: &str, seq_id: i64, fraction: f64) -> bool {
    let mut bytes = dataset.as_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&seq_id.to_le_bytes());
    let h = xxhash_rust::xxh3::xxh3_64(&bytes);
    (h as f64 / u64::MAX as f64) < fraction
}

impl TrainingSource {
    /// Finds the organism partition of `spec.layer` and its base partition, verifies both against their
    /// manifests, and reads the key columns once to split rows into train and validation.
    pub fn open(layout: &CacheLayout, spec: &SourceSpec) -> Result<Self> {
        let key = PartitionKey::activations(&spec.model, &spec.organism, spec.layer);
        let base_key = key.base();
        let manifest = layout.manifest(&key)?;
        let base_manifest = layout.manifest(&base_key)?;
        let (Some(manifest), Some(base_manifest)) = (manifest, base_manifest) else {
            let cached: Vec<String> = layout
                .partitions(Table::Activations)?
                .into_iter()
                .filter(|(k, _)| k.model == spec.model && k.organism.as_deref() == Some(&spec.organism))
                .filter_map(|(k, _)| k.layer.map(|l| l.to_string()))
                .collect();
            bail!(
                "layer {} of model {} organism {} (and its base) is not in the cache {} (cached layers: {}): choose a cached layer or preprocess it",
                spec.layer,
                spec.model,
                spec.organism,
                layout.root().display(),
                if cached.is_empty() { "none".into() } else { cached.join(", ") }
            );
        };
        if manifest.token_fingerprint != base_manifest.token_fingerprint
            || manifest.files.len() != base_manifest.files.len()
        {
            bail!(
                "{key} does not hold the same tokens as {base_key}; rerun preprocessing for organism {} with the base model's datasets and settings",
                spec.organism
            );
        }
        verify_partition(layout, &key, &manifest)?;
        verify_partition(layout, &base_key, &base_manifest)?;
        let dtype = manifest.dtype.as_deref().and_then(ElementType::parse);
        let (Some(dtype), Some(d_model)) = (dtype, manifest.d_model) else {
            bail!("{key}: its manifest records no vector dtype or d_model; rerun preprocessing for it");
        };
        let wanted: HashSet<&str> = spec.datasets.iter().map(String::as_str).collect();
        let ft_paths = layout.files(&key, &manifest)?;
        let base_paths = layout.files(&base_key, &base_manifest)?;
        let mut units = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let (mut train_rows, mut validation_rows) = (0usize, 0usize);
        for (ft_path, base_path) in ft_paths.iter().zip(&base_paths) {
            let ft_file = Arc::new(CacheFile::open(ft_path)?);
            let base_file = Arc::new(CacheFile::open(base_path)?);
            let groups = ft_file.metadata.metadata().num_row_groups();
            let reader = ft_file.reader(None, &["dataset", "seq_id"], 1 << 16)?;
            let mut split: Vec<(bool, bool)> = Vec::new();
            for batch in reader {
                let batch = batch?;
                let column = |name: &str| {
                    batch
                        .column_by_name(name)
                        .cloned()
                        .with_context(|| format!("{} has no {name} column", ft_file.path))
                };
                let dataset = datafusion::arrow::compute::cast(
                    &column("dataset")?,
                    &datafusion::arrow::datatypes::DataType::Utf8,
                )?;
                let dataset = dataset.as_string::<i32>();
                let seq = column("seq_id")?;
                let seq = seq.as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let name = dataset.value(i);
                    seen.insert(name.to_string());
                    if !wanted.is_empty() && !wanted.contains(name) {
                        split.push((false, false));
                        continue;
                    }
                    let held = held_out(name, seq.value(i), spec.validation_fraction);
                    split.push((!held, held));
                }
            }
            let meta = ft_file.metadata.metadata().clone();
            let mut offset = 0usize;
            for row_group in 0..groups {
                let n = meta.row_group(row_group).num_rows() as usize;
                let rows = &split[offset..offset + n];
                offset += n;
                let mut train: Vec<bool> = rows.iter().map(|r| r.0).collect();
                let validation: Vec<bool> = rows.iter().map(|r| r.1).collect();
                // Training rows beyond the limit are not read at all.
                for t in train.iter_mut() {
                    if *t {
                        if train_rows >= spec.max_train_rows {
                            *t = false;
                        } else {
                            train_rows += 1;
                        }
                    }
                }
                validation_rows += validation.iter().filter(|v| **v).count();
                units.push(RowGroupUnit {
                    ft_file: Arc::clone(&ft_file),
                    base_file: Arc::clone(&base_file),
                    row_group,
                    train,
                    validation,
                });
            }
        }
        for d in &spec.datasets {
            if !seen.contains(d) {
                bail!(
                    "dataset {d} is not in {key} (it holds {}): preprocess it or choose one of those",
                    seen.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(Self {
            units,
            encoding: VectorEncoding::new(dtype, d_model),
            train_rows,
            validation_rows,
            datasets: seen
                .into_iter()
                .filter(|d| wanted.is_empty() || wanted.contains(d.as_str()))
                .collect(),
        })
    }

    /// Length of the cached vectors.
    pub fn d_model(&self) -> usize {
        self.encoding.d_model
    }

    /// Rows of `split` in file order.
    pub fn rows(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train_rows,
            Split::Validation => self.validation_rows,
        }
    }

    /// A stream of `split`'s rows as `kind`. With `shuffle`, row groups come in a seeded random order and
    /// rows pass through a shuffle buffer of `buffer_rows` rows (its memory: buffer_rows × width × 4 bytes);
    /// without it, rows come in file order.
    pub fn stream(&self, split: Split, kind: RowKind, shuffle: Option<Shuffle>) -> RowStream<'_> {
        let mut order: Vec<usize> = (0..self.units.len()).collect();
        let (rng, buffer_rows) = match shuffle {
            Some(s) => {
                let mut rng = StdRng::seed_from_u64(s.seed ^ s.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                order.shuffle(&mut rng);
                (Some(rng), s.buffer_rows.max(1))
            }
            None => (None, 0),
        };
        RowStream {
            source: self,
            split,
            kind,
            order: order.into_iter(),
            pending: Vec::new(),
            pending_at: 0,
            buffer: Vec::new(),
            buffer_rows,
            rng,
            scratch_base: Vec::new(),
            scratch_ft: Vec::new(),
        }
    }

    /// Decodes `split`'s rows of one unit, appending them as `kind` rows to `out`.
    fn read_unit(
        &self,
        unit: &RowGroupUnit,
        split: Split,
        kind: RowKind,
        out: &mut Vec<f32>,
        scratch_base: &mut Vec<f32>,
        scratch_ft: &mut Vec<f32>,
    ) -> Result<()> {
        let keep = match split {
            Split::Train => &unit.train,
            Split::Validation => &unit.validation,
        };
        if !keep.iter().any(|k| *k) {
            return Ok(());
        }
        read_vectors(&unit.ft_file, unit.row_group, self.encoding, scratch_ft)?;
        read_vectors(&unit.base_file, unit.row_group, self.encoding, scratch_base)?;
        let d = self.encoding.d_model;
        if scratch_ft.len() != keep.len() * d || scratch_base.len() != scratch_ft.len() {
            bail!(
                "{} and {} disagree on row group {}: rerun preprocessing for this organism",
                unit.ft_file.path,
                unit.base_file.path,
                unit.row_group
            );
        }
        diffsql_kernels::gather_rows(scratch_base, scratch_ft, keep, d, kind == RowKind::Difference, out);
        Ok(())
    }
}

/// Reads the vector column of one row group as f32 values.
fn read_vectors(file: &CacheFile, row_group: usize, encoding: VectorEncoding, out: &mut Vec<f32>) -> Result<()> {
    out.clear();
    let path = &file.path;
    let reader = file.reader(Some(&[row_group]), &[VECTOR_COLUMN], 1 << 16)?;
    for batch in reader {
        let batch = batch.with_context(|| format!("cache file {path} is unreadable"))?;
        let stored = batch
            .column(0)
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .with_context(|| format!("{path}: the vector column is not fixed-size binary"))?;
        decode_into(encoding, stored, out);
    }
    Ok(())
}

/// Appends stored little-endian vectors as f32.
fn decode_into(encoding: VectorEncoding, stored: &FixedSizeBinaryArray, out: &mut Vec<f32>) {
    let bytes = &stored.value_data()[..stored.len() * encoding.byte_width()];
    decode_le_bytes(encoding.dtype, bytes, out);
}

/// How a stream is shuffled.
#[derive(Debug, Clone, Copy)]
pub struct Shuffle {
    pub seed: u64,
    pub epoch: u64,
    pub buffer_rows: usize,
}

/// Rows of one split, in file or shuffled order, handed out in batches.
pub struct RowStream<'a> {
    source: &'a TrainingSource,
    split: Split,
    kind: RowKind,
    order: std::vec::IntoIter<usize>,
    /// Rows read from the current unit and not yet used (file order), from `pending_at` on.
    pending: Vec<f32>,
    pending_at: usize,
    /// The shuffle buffer (rows × width).
    buffer: Vec<f32>,
    buffer_rows: usize,
    rng: Option<StdRng>,
    scratch_base: Vec<f32>,
    scratch_ft: Vec<f32>,
}

impl RowStream<'_> {
    fn width(&self) -> usize {
        self.kind.width(self.source.d_model())
    }

    /// The next row in file order, copied into `out`; false when the split is exhausted.
    fn next_file_row(&mut self, out: &mut Vec<f32>) -> Result<bool> {
        self.next_file_rows(out, 1).map(|n| n == 1)
    }

    /// Up to `rows` next rows in file order from the current unit (reading the next unit when it is used
    /// up), copied into `out`; how many were copied (0: the split is exhausted).
    fn next_file_rows(&mut self, out: &mut Vec<f32>, rows: usize) -> Result<usize> {
        let w = self.width();
        while self.pending_at >= self.pending.len() {
            let Some(u) = self.order.next() else {
                return Ok(0);
            };
            self.pending.clear();
            self.pending_at = 0;
            let unit = &self.source.units[u];
            self.source.read_unit(
                unit,
                self.split,
                self.kind,
                &mut self.pending,
                &mut self.scratch_base,
                &mut self.scratch_ft,
            )?;
        }
        let n = rows.min((self.pending.len() - self.pending_at) / w);
        out.extend_from_slice(&self.pending[self.pending_at..self.pending_at + n * w]);
        self.pending_at += n * w;
        Ok(n)
    }

    /// Up to `rows` rows (rows × width values, row-major); an empty vector when the split is exhausted.
    pub fn next_batch(&mut self, rows: usize) -> Result<Vec<f32>> {
        let w = self.width();
        let mut out = Vec::with_capacity(rows * w);
        if self.rng.is_none() {
            let mut got = 0;
            while got < rows {
                match self.next_file_rows(&mut out, rows - got)? {
                    0 => break,
                    n => got += n,
                }
            }
            return Ok(out);
        }
        // Fill the buffer, then hand out a random buffered row and put the next file row in its place.
        let mut buffer = std::mem::take(&mut self.buffer);
        while buffer.len() < self.buffer_rows * w && self.next_file_row(&mut buffer)? {}
        let mut incoming = Vec::with_capacity(w);
        for _ in 0..rows {
            let held = buffer.len() / w;
            if held == 0 {
                break;
            }
            let i = self.rng.as_mut().expect("shuffled").random_range(0..held);
            out.extend_from_slice(&buffer[i * w..(i + 1) * w]);
            incoming.clear();
            if self.next_file_row(&mut incoming)? {
                buffer[i * w..(i + 1) * w].copy_from_slice(&incoming);
            } else {
                // Move the last row into the hole.
                let last = held - 1;
                if i != last {
                    let (head, tail) = buffer.split_at_mut(last * w);
                    head[i * w..(i + 1) * w].copy_from_slice(&tail[..w]);
                }
                buffer.truncate(last * w);
            }
        }
        self.buffer = buffer;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_share_is_close_to_the_fraction_and_stable() {
        let held = (0..20_000).filter(|&s| held_out("d", s, 0.1)).count();
        assert!((1700..2300).contains(&held), "{held}");
        assert_eq!(held_out("d", 7, 0.1), held_out("d", 7, 0.1));
        assert_eq!((0..1000).filter(|&s| held_out("d", s, 0.0)).count(), 0);
    }
}
