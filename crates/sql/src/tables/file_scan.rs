//! The execution plan behind the cache's row tables (`tokens`, `sequences`, `vocab`): it reads exactly the
//! files the partitions' manifests list, adds the partition columns, and names the file and partition in
//! every read error. (DataFusion's listing tables read whatever `*.parquet` lies in a directory, which is
//! the wrong rule for a cache whose manifests say what is complete.)

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::scan::within_limit;
use diffsql_core::cache::layout::{PartitionKey, Table};
use diffsql_core::cache::source::{CacheFile, CachePath};
use diffsql_core::cache::verify::FIX;
use serde::{Deserialize, Serialize};

/// One data file to read, with its partition's column values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileUnit {
    pub partition: PartitionKey,
    pub path: CachePath,
    pub rows: usize,
    /// Computed from `partition` (not sent to workers).
    #[serde(skip)]
    pub partition_values: Vec<ScalarValue>,
}

/// Where one output column comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowColumn {
    /// A column of the file, by its index in the file schema.
    File(usize),
    /// A partition column, by its index in [`FileUnit::partition_values`].
    Partition(usize),
}

/// Reads listed Parquet files of one table.
#[derive(Debug)]
pub struct FileScanExec {
    table: &'static str,
    schema: SchemaRef,
    columns: Vec<RowColumn>,
    groups: Vec<Vec<FileUnit>>,
    batch_size: usize,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl FileScanExec {
    /// A scan producing `schema` (already projected) whose columns come from `columns`, with the files of
    /// `groups[i]` read by output partition `i`.
    pub fn new(
        table: &'static str,
        schema: SchemaRef,
        columns: Vec<RowColumn>,
        groups: Vec<Vec<FileUnit>>,
        batch_size: usize,
        limit: Option<usize>,
    ) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            table,
            schema,
            columns,
            groups,
            batch_size,
            limit,
            properties: Arc::new(properties),
        }
    }
}

/// A [`FileScanExec`] without its schema (which travels as an Arrow type).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileScanParts {
    pub table: String,
    pub columns: Vec<RowColumn>,
    pub groups: Vec<Vec<FileUnit>>,
    pub batch_size: usize,
    pub limit: Option<usize>,
}

impl FileScanExec {
    /// Everything but the schema, for sending the scan to another process.
    pub fn parts(&self) -> FileScanParts {
        FileScanParts {
            table: self.table.to_string(),
            columns: self.columns.clone(),
            groups: self.groups.clone(),
            batch_size: self.batch_size,
            limit: self.limit,
        }
    }

    /// The scan [`Self::parts`] describes, producing `schema`.
    pub fn from_parts(mut parts: FileScanParts, schema: SchemaRef) -> Result<Self> {
        let table = Table::ALL
            .into_iter()
            .find(|t| t.name() == parts.table)
            .ok_or_else(|| DataFusionError::Execution(format!("no row table {}", parts.table)))?;
        for unit in parts.groups.iter_mut().flatten() {
            unit.partition_values = super::partition_values(table, &unit.partition);
        }
        Ok(Self::new(
            table.name(),
            schema,
            parts.columns,
            parts.groups,
            parts.batch_size,
            parts.limit,
        ))
    }

    /// Files in all.
    pub fn file_count(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    /// This scan cut into `tasks` scans of about equal rows (for as many workers), each with this scan's
    /// number of output partitions (some maybe empty), together reading every file once.
    pub fn split(&self, tasks: usize) -> Vec<Self> {
        let order = |a: &FileUnit, b: &FileUnit| a.path.order(&b.path);
        let all: Vec<FileUnit> = self.groups.iter().flatten().cloned().collect();
        super::scan::split_among_tasks(all, tasks, self.groups.len(), |u| u.rows.max(1), order)
            .into_iter()
            .map(|groups| {
                Self::new(
                    self.table,
                    Arc::clone(&self.schema),
                    self.columns.clone(),
                    groups,
                    self.batch_size,
                    self.limit,
                )
            })
            .collect()
    }
}

impl DisplayAs for FileScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        let rows: usize = self.groups.iter().flatten().map(|u| u.rows).sum();
        write!(f, "FileScanExec: table={}, files={files}, rows={rows}", self.table)?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for FileScanExec {
    fn name(&self) -> &str {
        "FileScanExec"
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
        let mut read: Vec<usize> = self
            .columns
            .iter()
            .filter_map(|c| match c {
                RowColumn::File(i) => Some(*i),
                RowColumn::Partition(_) => None,
            })
            .collect();
        read.sort_unstable();
        read.dedup();
        let reader = FileReader {
            schema: Arc::clone(&self.schema),
            columns: self.columns.clone(),
            read,
            batch_size: self.batch_size,
            remaining: self.limit.unwrap_or(usize::MAX),
            units: self.groups.get(partition).cloned().unwrap_or_default().into_iter(),
            current: None,
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::iter(reader),
        )))
    }
}

struct FileReader {
    schema: SchemaRef,
    columns: Vec<RowColumn>,
    /// The file columns read, sorted: a projected file batch holds them in this order.
    read: Vec<usize>,
    batch_size: usize,
    remaining: usize,
    units: std::vec::IntoIter<FileUnit>,
    current: Option<(FileUnit, ParquetRecordBatchReader)>,
}

fn file_error(unit: &FileUnit, e: impl fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("{}: cannot read {}: {e}; {FIX}", unit.partition, unit.path))
}

impl FileReader {
    fn open(&self, unit: &FileUnit) -> Result<ParquetRecordBatchReader> {
        let file = CacheFile::open(&unit.path).map_err(|e| file_error(unit, format!("{e:#}")))?;
        let groups: Vec<usize> = (0..file.metadata.metadata().num_row_groups()).collect();
        let bytes = file
            .bytes_for(&groups, &self.read)
            .map_err(|e| file_error(unit, format!("{e:#}")))?;
        let mask = ProjectionMask::roots(file.metadata.parquet_schema(), self.read.iter().copied());
        ParquetRecordBatchReaderBuilder::new_with_metadata(bytes, file.metadata.clone())
            .with_projection(mask)
            .with_batch_size(self.batch_size)
            .build()
            .map_err(|e| file_error(unit, e))
    }

    /// The output batch for `rows` rows of `unit`, its file columns taken from `file_batch`.
    fn assemble(&self, unit: &FileUnit, file_batch: &RecordBatch) -> Result<RecordBatch> {
        let rows = file_batch.num_rows();
        let arrays = self
            .columns
            .iter()
            .map(|c| -> Result<ArrayRef> {
                match c {
                    RowColumn::File(i) => {
                        let at = self
                            .read
                            .binary_search(i)
                            .map_err(|_| file_error(unit, "column missing"))?;
                        Ok(Arc::clone(file_batch.column(at)))
                    }
                    RowColumn::Partition(i) => unit.partition_values[*i].to_array_of_size(rows),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options).map_err(|e| file_error(unit, e))
    }
}

impl Iterator for FileReader {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            if self.current.is_none() {
                let unit = self.units.next()?;
                match self.open(&unit) {
                    Ok(reader) => self.current = Some((unit, reader)),
                    Err(e) => return Some(Err(e)),
                }
            }
            let (unit, mut reader) = self.current.take().expect("a file is open");
            match reader.next() {
                None => {} // this file is done; the next loop opens the next one
                Some(Err(e)) => return Some(Err(file_error(&unit, e))),
                Some(Ok(batch)) => {
                    let out = self.assemble(&unit, &batch);
                    self.current = Some((unit, reader));
                    return Some(out.map(|b| within_limit(b, &mut self.remaining)));
                }
            }
        }
    }
}
