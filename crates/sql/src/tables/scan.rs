//! The execution plan that reads vector partitions: `activations` file by file, and `acts` by reading each
//! organism file beside the base file holding the same tokens, zipping rows without any join.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int32Array, RecordBatch, RecordBatchOptions, StringArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_datafusion_err, DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use diffsql_core::cache::layout::PartitionKey;
use diffsql_core::cache::source::{CacheFile, CachePath};
use diffsql_core::cache::vector_pages::{readable_in_place, VectorPages};
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::writer::VECTOR_COLUMN;
use serde::{Deserialize, Serialize};

/// Vectors read in place come in batches this many times larger than decoded ones: the batch size keeps
/// decoded vectors in cache between the decoder and the functions, but a view of the mapping has nothing to
/// keep, and larger batches cost less per row (normdiff over 7.4 GB: 4 MiB batches 7% faster than 1 MiB).
/// Where keys are read beside them, batches follow the keys' size.
const IN_PLACE_BATCH_FACTOR: usize = 4;

/// Key columns of an activations file (found by name: their place in the file changed in 2026-12).
const KEY_COLUMNS: [&str; 5] = ["dataset", "split", "seq_id", "pos", "token_id"];

/// What one output column of a vector table is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnSource {
    Model,
    Organism,
    Layer,
    /// A key column of the (organism's) file, by index in [`KEY_COLUMNS`].
    Key(usize),
    /// The vector of the file being read (`act`, or `ft` in `acts`).
    Vector,
    /// The vector of the paired base file (`base` in `acts`).
    BaseVector,
}

/// A contiguous run of row groups of one file, or of a base/organism pair of files with equal row groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanUnit {
    pub partition: PartitionKey,
    pub file: CachePath,
    pub base_file: Option<CachePath>,
    pub row_groups: Vec<usize>,
    pub rows: usize,
    pub encoding: VectorEncoding,
}

/// Reads vector partitions as record batches of the table's schema.
#[derive(Debug)]
pub struct VectorScanExec {
    table: &'static str,
    schema: SchemaRef,
    sources: Vec<ColumnSource>,
    /// Units for each output partition.
    units: Vec<Vec<ScanUnit>>,
    vector_type: DataType,
    batch_size: usize,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl VectorScanExec {
    /// A scan producing `schema` (already projected), whose columns come from `sources`.
    pub fn new(
        table: &'static str,
        schema: SchemaRef,
        sources: Vec<ColumnSource>,
        units: Vec<Vec<ScanUnit>>,
        vector_type: DataType,
        batch_size: usize,
        limit: Option<usize>,
    ) -> Self {
        let partitions = units.len().max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            table,
            schema,
            sources,
            units,
            vector_type,
            batch_size,
            limit,
            properties: Arc::new(properties),
        }
    }

    fn total_rows(&self) -> usize {
        self.units.iter().flatten().map(|u| u.rows).sum()
    }

    /// Everything but the schema and the vector type, for sending the scan to another process.
    pub fn parts(&self) -> VectorScanParts {
        VectorScanParts {
            table: self.table.to_string(),
            sources: self.sources.clone(),
            units: self.units.clone(),
            batch_size: self.batch_size,
            limit: self.limit,
        }
    }

    /// The vector column's type.
    pub fn vector_type(&self) -> &DataType {
        &self.vector_type
    }

    /// The scan [`Self::parts`] describes, producing `schema`.
    pub fn from_parts(parts: VectorScanParts, schema: SchemaRef, vector_type: DataType) -> Result<Self> {
        let table = match parts.table.as_str() {
            "activations" => "activations",
            "acts" => "acts",
            other => return Err(exec_datafusion_err!("no vector table {other}")),
        };
        Ok(Self::new(
            table,
            schema,
            parts.sources,
            parts.units,
            vector_type,
            parts.batch_size,
            parts.limit,
        ))
    }

    /// Scan units in all.
    pub fn unit_count(&self) -> usize {
        self.units.iter().map(Vec::len).sum()
    }

    /// This scan cut into `tasks` scans of about equal rows (for as many workers), each with this scan's
    /// number of output partitions (some maybe empty), together reading every unit once.
    pub fn split(&self, tasks: usize) -> Vec<Self> {
        let all: Vec<ScanUnit> = self.units.iter().flatten().cloned().collect();
        split_among_tasks(all, tasks, self.units.len(), |u| u.rows, unit_order)
            .into_iter()
            .map(|per_partition| {
                Self::new(
                    self.table,
                    Arc::clone(&self.schema),
                    self.sources.clone(),
                    per_partition,
                    self.vector_type.clone(),
                    self.batch_size,
                    self.limit,
                )
            })
            .collect()
    }
}

/// File order, then row-group order: the order a partition reads its units in.
pub fn unit_order(a: &ScanUnit, b: &ScanUnit) -> std::cmp::Ordering {
    a.file.order(&b.file).then_with(|| a.row_groups.cmp(&b.row_groups))
}

/// A [`VectorScanExec`] without its schema and vector type (which travel as Arrow types).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VectorScanParts {
    pub table: String,
    pub sources: Vec<ColumnSource>,
    pub units: Vec<Vec<ScanUnit>>,
    pub batch_size: usize,
    pub limit: Option<usize>,
}

impl DisplayAs for VectorScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let units: usize = self.units.iter().map(Vec::len).sum();
        write!(
            f,
            "VectorScanExec: table={}, units={units}, rows={}",
            self.table,
            self.total_rows()
        )?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for VectorScanExec {
    fn name(&self) -> &str {
        "VectorScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, _children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let units = self.units.get(partition).cloned().unwrap_or_default();
        let reader = UnitReader {
            schema: Arc::clone(&self.schema),
            sources: self.sources.clone(),
            vector_type: self.vector_type.clone(),
            batch_size: self.batch_size,
            remaining: self.limit.unwrap_or(usize::MAX),
            units: units.into_iter(),
            current: None,
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::iter(reader),
        )))
    }
}

/// `batch`, cut to the `remaining` rows a scan's limit still allows, which it then counts down.
pub(super) fn within_limit(batch: RecordBatch, remaining: &mut usize) -> RecordBatch {
    let batch = if batch.num_rows() > *remaining {
        batch.slice(0, *remaining)
    } else {
        batch
    };
    *remaining -= batch.num_rows();
    batch
}

/// One source of rows of a unit: a Parquet reader of some columns of a file, or a file's vectors read in
/// place ([`VectorPages`]). The streams of a unit yield the same rows in the same order, in batches that need
/// not line up.
struct Stream {
    batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    /// Rows read but not yet emitted.
    pending: Option<RecordBatch>,
}

impl Stream {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        self.batches.next().transpose()
    }
}

/// The open files of one unit.
struct OpenUnit {
    unit: ScanUnit,
    streams: Vec<Stream>,
    /// Where each output column comes from: a stream and a column of its batches.
    columns: Vec<Option<(usize, &'static str)>>,
    /// Rows still to emit when no file column is read.
    rows_left: usize,
}

struct UnitReader {
    schema: SchemaRef,
    sources: Vec<ColumnSource>,
    vector_type: DataType,
    batch_size: usize,
    remaining: usize,
    units: std::vec::IntoIter<ScanUnit>,
    current: Option<OpenUnit>,
}

/// For tests of a worker dying mid-query: the process aborts (as under kill -9) once its scans have produced
/// this many batches.
pub const CRASH_AFTER_SCAN_BATCHES_VAR: &str = "DIFFSQL_CRASH_AFTER_SCAN_BATCHES";

fn count_scan_batch() {
    static LIMIT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    static BATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if let Some(limit) = LIMIT.get_or_init(|| std::env::var(CRASH_AFTER_SCAN_BATCHES_VAR).ok()?.parse().ok()) {
        if BATCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= *limit {
            std::process::abort();
        }
    }
}

impl Iterator for UnitReader {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        count_scan_batch();
        loop {
            if self.remaining == 0 {
                return None;
            }
            if self.current.is_none() {
                let unit = self.units.next()?;
                match self.open(unit) {
                    Ok(open) => self.current = Some(open),
                    Err(e) => return Some(Err(e)),
                }
            }
            match self.next_batch() {
                Ok(Some(batch)) => return Some(Ok(within_limit(batch, &mut self.remaining))),
                Ok(None) => self.current = None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl UnitReader {
    fn open(&self, unit: ScanUnit) -> Result<OpenUnit> {
        let keys: Vec<&'static str> = self
            .sources
            .iter()
            .filter_map(|s| match s {
                ColumnSource::Key(i) => Some(KEY_COLUMNS[*i]),
                _ => None,
            })
            .collect();
        let mut streams = Vec::new();
        let (mut key_stream, mut vector_stream, mut base_stream) = (None, None, None);
        let wants_vector = self.sources.contains(&ColumnSource::Vector);
        if !keys.is_empty() || wants_vector {
            // One map and one footer read for the keys and the vectors of the file.
            let file = open_file(&unit.file)?;
            if !keys.is_empty() {
                key_stream = Some(streams.len());
                streams.push(self.columns_stream(&file, &unit.row_groups, &keys)?);
            }
            if wants_vector {
                vector_stream = Some(streams.len());
                streams.push(self.vector_stream(&file, &unit)?);
            }
        }
        if self.sources.contains(&ColumnSource::BaseVector) {
            let path = unit
                .base_file
                .as_ref()
                .ok_or_else(|| exec_datafusion_err!("acts: no base file for {}", unit.partition))?;
            base_stream = Some(streams.len());
            streams.push(self.vector_stream(&open_file(path)?, &unit)?);
        }
        let columns = self
            .sources
            .iter()
            .map(|s| match s {
                ColumnSource::Key(i) => key_stream.map(|k| (k, KEY_COLUMNS[*i])),
                ColumnSource::Vector => vector_stream.map(|k| (k, VECTOR_COLUMN)),
                ColumnSource::BaseVector => base_stream.map(|k| (k, VECTOR_COLUMN)),
                _ => None,
            })
            .collect();
        let rows_left = unit.rows;
        Ok(OpenUnit {
            unit,
            streams,
            columns,
            rows_left,
        })
    }

    /// The named columns of `file`'s row groups, through Parquet's reader.
    fn columns_stream(&self, file: &CacheFile, row_groups: &[usize], names: &[&str]) -> Result<Stream> {
        let roots = file
            .root_indices(names)
            .map_err(|e| corrupt(&file.path, format!("{e:#}")))?;
        let bytes = file.bytes_for(row_groups, &roots).map_err(read_error)?;
        let mask = ProjectionMask::roots(file.metadata.parquet_schema(), roots);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, file.metadata.clone())
            .with_row_groups(row_groups.to_vec())
            .with_projection(mask)
            .with_batch_size(self.batch_size)
            .build()
            .map_err(|e| corrupt(&file.path, e))?;
        let path = file.path.clone();
        Ok(Stream {
            batches: Box::new(reader.map(move |b| b.map_err(|e| corrupt(&path, e)))),
            pending: None,
        })
    }

    /// The vectors of `file`'s row groups of `unit`: in place where the pages allow it, else through
    /// Parquet's reader.
    fn vector_stream(&self, file: &CacheFile, unit: &ScanUnit) -> Result<Stream> {
        let roots = file
            .root_indices(&[VECTOR_COLUMN])
            .map_err(|e| corrupt(&file.path, format!("{e:#}")))?;
        let metadata = Arc::clone(file.metadata.metadata());
        if !readable_in_place(&metadata, &unit.row_groups, roots[0]) {
            return self.columns_stream(file, &unit.row_groups, &[VECTOR_COLUMN]);
        }
        let bytes = file.bytes_for(&unit.row_groups, &roots).map_err(read_error)?;
        let field = file
            .metadata
            .schema()
            .field_with_name(VECTOR_COLUMN)
            .map_err(|e| corrupt(&file.path, e))?
            .clone();
        let pages = VectorPages::new(
            bytes,
            metadata,
            roots[0],
            Arc::new(field),
            unit.encoding.dtype.width(),
            &unit.row_groups,
            self.batch_size * IN_PLACE_BATCH_FACTOR,
        )
        .map_err(|e| corrupt(&file.path, e))?;
        let path = file.path.clone();
        Ok(Stream {
            batches: Box::new(pages.map(move |b| b.map_err(|e| corrupt(&path, format!("{e:#}"))))),
            pending: None,
        })
    }

    /// The next batch of the current unit, or `None` when it is exhausted.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let open = self.current.as_mut().expect("a unit is open");
        let mut batches = Vec::with_capacity(open.streams.len());
        let rows = if open.streams.is_empty() {
            let rows = open.rows_left.min(self.batch_size);
            if rows == 0 {
                return Ok(None);
            }
            open.rows_left -= rows;
            rows
        } else {
            for stream in &mut open.streams {
                batches.push(stream.next_batch()?);
            }
            if batches.iter().all(Option::is_none) {
                return Ok(None);
            }
            if batches.iter().any(Option::is_none) {
                return Err(DataFusionError::Execution(format!(
                    "acts: {} and its base file have different row counts; rerun preprocessing for {}",
                    open.unit.file, open.unit.partition
                )));
            }
            let rows = batches.iter().flatten().map(RecordBatch::num_rows).min().unwrap_or(0);
            // Keep what a stream read beyond the shortest batch for the next call.
            for (stream, batch) in open.streams.iter_mut().zip(&mut batches) {
                let b = batch.as_mut().expect("checked above");
                if b.num_rows() > rows {
                    stream.pending = Some(b.slice(rows, b.num_rows() - rows));
                    *b = b.slice(0, rows);
                }
            }
            rows
        };
        let unit = &open.unit;
        let columns = self
            .sources
            .iter()
            .zip(&open.columns)
            .map(|(source, from)| -> Result<ArrayRef> {
                let read = || column(from.and_then(|(s, name)| batches[s].as_ref().map(|b| (b, name))));
                Ok(match source {
                    ColumnSource::Model => Arc::new(StringArray::from(vec![unit.partition.model.as_str(); rows])),
                    ColumnSource::Organism => {
                        Arc::new(StringArray::from(vec![
                            unit.partition.organism.as_deref().unwrap_or("");
                            rows
                        ]))
                    }
                    ColumnSource::Layer => Arc::new(Int32Array::from(vec![unit.partition.layer.unwrap_or(-1); rows])),
                    ColumnSource::Key(_) => read()?,
                    ColumnSource::Vector | ColumnSource::BaseVector => vectors(&self.vector_type, read()?, unit)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(Some(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?))
    }
}

/// Stored vectors of `unit` as the table's vector type.
fn vectors(vector_type: &DataType, stored: ArrayRef, unit: &ScanUnit) -> Result<ArrayRef> {
    let stored = stored.as_fixed_size_binary();
    let decoded = if *vector_type == unit.encoding.sql_type() {
        unit.encoding.decode(stored)
    } else {
        unit.encoding.decode_to_f32_list(stored)
    };
    decoded.map_err(|e| DataFusionError::Execution(format!("{}: {e:#}", unit.file)))
}

fn column(from: Option<(&RecordBatch, &str)>) -> Result<ArrayRef> {
    let (batch, name) = from.ok_or_else(|| exec_datafusion_err!("a cache file column was not read"))?;
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| exec_datafusion_err!("column {name} missing from a cache file"))
}

/// Opens a cache file (maps it, or reads an object's footer), the error naming the file.
fn open_file(path: &CachePath) -> Result<CacheFile> {
    CacheFile::open(path).map_err(read_error)
}

fn read_error(e: anyhow::Error) -> DataFusionError {
    DataFusionError::Execution(format!("{e:#}; delete its partition and rerun preprocessing"))
}

fn corrupt(path: &CachePath, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!(
        "cache file {path} is unreadable ({e}); delete its partition directory and rerun preprocessing"
    ))
}

/// Spreads scan units over `partitions` output partitions, largest (by `weight`) first onto the least
/// loaded, so each partition reads about the same number of rows; within a partition units are read in
/// `order` (file order), so reads stay sequential.
pub fn balance<U>(
    mut units: Vec<U>,
    partitions: usize,
    weight: impl Fn(&U) -> usize,
    order: impl Fn(&U, &U) -> std::cmp::Ordering,
) -> Vec<Vec<U>> {
    let partitions = partitions.max(1).min(units.len().max(1));
    units.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| order(a, b)));
    let mut bins: Vec<(usize, Vec<U>)> = (0..partitions).map(|_| (0, Vec::new())).collect();
    for u in units {
        let bin = bins.iter_mut().min_by_key(|(load, _)| *load).expect("at least one bin");
        bin.0 += weight(&u);
        bin.1.push(u);
    }
    bins.into_iter()
        .map(|(_, mut v)| {
            v.sort_by(&order);
            v
        })
        .collect()
}

/// A scan's `units` cut into `tasks` sets of about equal weight, each cut again into the scan's number of
/// output `partitions` (some maybe empty): how a scan is split among workers.
pub fn split_among_tasks<U>(
    units: Vec<U>,
    tasks: usize,
    partitions: usize,
    weight: impl Fn(&U) -> usize,
    order: impl Fn(&U, &U) -> std::cmp::Ordering,
) -> Vec<Vec<Vec<U>>> {
    let partitions = partitions.max(1);
    let mut per_task = balance(units, tasks, &weight, &order);
    per_task.resize_with(tasks.max(1), Vec::new);
    per_task
        .into_iter()
        .map(|units| {
            let mut per_partition = balance(units, partitions, &weight, &order);
            per_partition.resize_with(partitions, Vec::new);
            per_partition
        })
        .collect()
}

/// Row-group sizes of a cache file.
pub fn row_group_rows(path: &CachePath) -> Result<Vec<usize>> {
    Ok(open_file(path)?.row_group_rows())
}

/// Splits a file's row groups into runs of about `target_rows` rows.
pub fn chunk_row_groups(sizes: &[usize], target_rows: usize) -> Vec<(Vec<usize>, usize)> {
    let mut out = Vec::new();
    let mut current = (Vec::new(), 0usize);
    for (i, &n) in sizes.iter().enumerate() {
        current.0.push(i);
        current.1 += n;
        if current.1 >= target_rows {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.0.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_group_once() {
        let chunks = chunk_row_groups(&[10, 10, 10, 5], 15);
        assert_eq!(chunks, vec![(vec![0, 1], 20), (vec![2, 3], 15)]);
        assert!(chunk_row_groups(&[], 15).is_empty());
    }
}
