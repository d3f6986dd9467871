//! Reading a few positions of the `tokens` or `activations` tables without decoding them whole: an index of each
//! partition's rows by sequence (built once from the key columns), and Parquet row selections that decode only the
//! pages holding the wanted rows. A page of the dashboard then costs the same on a 1M-token cache as on a small one.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float32Type, Int32Type, Int64Type};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::arrow::ProjectionMask;

use super::context::Window;
use diffsql_core::cache::source::{CacheFile, CachePath};
use diffsql_core::cache::{CacheLayout, PartitionKey};

/// Consecutive rows of one sequence with consecutive positions.
#[derive(Debug, Clone, Copy)]
struct Run {
    row: usize,
    pos: i64,
    len: usize,
}

#[derive(Debug)]
struct IndexedFile {
    path: CachePath,
    rows: usize,
    /// (dataset, seq_id) → its runs in this file.
    runs: HashMap<(String, i64), Vec<Run>>,
}

/// One sequence's tokens and KL, gathered while indexing.
#[derive(Debug, Clone, Default)]
pub struct SequenceStats {
    pub dataset: String,
    pub seq_id: i64,
    pub tokens: usize,
    kl_sum: f64,
    kl_count: usize,
    pub max_kl: Option<f64>,
}

impl SequenceStats {
    /// Mean KL over the tokens that have one.
    pub fn mean_kl(&self) -> Option<f64> {
        (self.kl_count > 0).then(|| self.kl_sum / self.kl_count as f64)
    }
}

/// Where every sequence's tokens are in one `tokens` partition, and each sequence's KL statistics.
#[derive(Debug)]
pub struct TokenIndex {
    files: Vec<IndexedFile>,
    sequences: Vec<SequenceStats>,
    /// The manifest's files (name, bytes) the index was built from.
    stamp: Vec<(String, u64)>,
}

impl TokenIndex {
    fn build(layout: &CacheLayout, key: &PartitionKey, manifest: &diffsql_core::cache::Manifest) -> Result<Self> {
        diffsql_core::cache::verify::verify_partition(layout, key, manifest)?;
        let mut files = Vec::new();
        let mut sequences: HashMap<(String, i64), SequenceStats> = HashMap::new();
        for path in layout.files(key, manifest)? {
            let file = CacheFile::open(&path)?;
            // Tokens partitions also give each sequence's KL statistics; activation partitions have no kl.
            let has_kl = file.has_column("kl");
            let columns = ["dataset", "seq_id", "pos", "kl"];
            let reader = file.reader(None, &columns[..if has_kl { 4 } else { 3 }], 1 << 16)?;
            let mut runs: HashMap<(String, i64), Vec<Run>> = HashMap::new();
            let mut row = 0usize;
            let mut last: Option<(String, i64, i64)> = None;
            for batch in reader {
                let batch = batch?;
                let dataset = batch.column_by_name("dataset").context("tokens file without dataset")?;
                let dataset = dataset.as_string::<i32>();
                let seq = batch.column_by_name("seq_id").context("tokens file without seq_id")?;
                let seq = seq.as_primitive::<Int64Type>();
                let pos = batch.column_by_name("pos").context("tokens file without pos")?;
                let pos = pos.as_primitive::<Int32Type>();
                let kl = batch.column_by_name("kl").map(|k| k.as_primitive::<Float32Type>());
                for r in 0..batch.num_rows() {
                    let (d, s, p) = (dataset.value(r), seq.value(r), pos.value(r) as i64);
                    let stats = sequences.entry((d.to_string(), s)).or_insert_with(|| SequenceStats {
                        dataset: d.to_string(),
                        seq_id: s,
                        ..Default::default()
                    });
                    stats.tokens += 1;
                    if let Some(v) = kl.filter(|k| k.is_valid(r)).map(|k| k.value(r) as f64) {
                        stats.kl_sum += v;
                        stats.kl_count += 1;
                        stats.max_kl = Some(stats.max_kl.map_or(v, |m| m.max(v)));
                    }
                    let continues = matches!(&last, Some((ld, ls, lp)) if ld == d && *ls == s && *lp + 1 == p);
                    if continues {
                        if let Some(run) = runs.get_mut(&(d.to_string(), s)).and_then(|v| v.last_mut()) {
                            run.len += 1;
                        }
                    } else {
                        runs.entry((d.to_string(), s))
                            .or_default()
                            .push(Run { row, pos: p, len: 1 });
                    }
                    last = Some((d.to_string(), s, p));
                    row += 1;
                }
            }
            files.push(IndexedFile { path, rows: row, runs });
        }
        let mut sequences: Vec<SequenceStats> = sequences.into_values().collect();
        sequences.sort_by(|a, b| (&a.dataset, a.seq_id).cmp(&(&b.dataset, b.seq_id)));
        Ok(Self {
            files,
            sequences,
            stamp: stamp(manifest),
        })
    }

    /// Every sequence of the partition with its token count and KL statistics, by dataset and seq_id.
    pub fn sequences(&self) -> &[SequenceStats] {
        &self.sequences
    }

    /// The rows of `windows` with `columns` (and the key columns dataset, seq_id, pos), in file order.
    pub fn read(&self, windows: &[Window], columns: &[&str]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for f in &self.files {
            let mut ranges: Vec<Range<usize>> = Vec::new();
            for w in windows {
                for run in f.runs.get(&(w.dataset.clone(), w.seq_id)).into_iter().flatten() {
                    let (a, b) = (w.start.max(run.pos), w.end.min(run.pos + run.len as i64 - 1));
                    if a <= b {
                        let first = run.row + (a - run.pos) as usize;
                        ranges.push(first..first + (b - a) as usize + 1);
                    }
                }
            }
            if ranges.is_empty() {
                continue;
            }
            ranges.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<usize>> = Vec::new();
            for r in ranges {
                match merged.last_mut() {
                    Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            let file = CacheFile::open(&f.path)?;
            let wanted: Vec<&str> = ["dataset", "seq_id", "pos"]
                .into_iter()
                .chain(columns.iter().copied())
                .collect();
            let roots = file.root_indices(&wanted)?;
            let groups: Vec<usize> = (0..file.metadata.metadata().num_row_groups()).collect();
            let bytes = file.bytes_for(&groups, &roots)?;
            let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, file.metadata.clone());
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let selection = RowSelection::from_consecutive_ranges(merged.into_iter(), f.rows);
            let reader = builder
                .with_projection(mask)
                .with_row_selection(selection)
                .with_batch_size(8192)
                .build()?;
            for batch in reader {
                out.push(batch?);
            }
        }
        Ok(out)
    }
}

fn stamp(manifest: &diffsql_core::cache::Manifest) -> Vec<(String, u64)> {
    manifest.files.iter().map(|f| (f.name.clone(), f.bytes)).collect()
}

/// Row indexes by partition (tokens, activations), rebuilt when a partition's manifest changes.
#[derive(Default)]
pub struct TokenIndexes {
    built: Mutex<HashMap<PartitionKey, Arc<TokenIndex>>>,
}

impl TokenIndexes {
    /// The index of `model`/`organism`'s tokens, or None when the cache has none.
    pub fn get(&self, layout: &CacheLayout, model: &str, organism: &str) -> Result<Option<Arc<TokenIndex>>> {
        self.partition(layout, PartitionKey::tokens(model, organism))
    }

    /// The index of any partition whose files have dataset, seq_id and pos columns, or None when it is missing.
    pub fn partition(&self, layout: &CacheLayout, key: PartitionKey) -> Result<Option<Arc<TokenIndex>>> {
        let Some(manifest) = layout.manifest(&key)? else {
            return Ok(None);
        };
        let id = key.clone();
        if let Some(index) = self
            .built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
        {
            if index.stamp == stamp(&manifest) {
                return Ok(Some(Arc::clone(index)));
            }
        }
        let index = Arc::new(TokenIndex::build(layout, &key, &manifest)?);
        self.built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, Arc::clone(&index));
        Ok(Some(index))
    }
}
