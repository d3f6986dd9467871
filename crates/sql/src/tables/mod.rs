//! The cache as DataFusion tables: `activations` and the paired view `acts` (our own scan, see
//! [`self::scan`]), and `tokens`, `sequences` and `vocab` (row tables, [`self::file_scan`]). Every table
//! reads exactly the files that complete partitions' manifests list, each verified against its manifest.

pub mod file_scan;
pub mod scan;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{plan_err, DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use diffsql_udfs::vector::float32_item;

use self::file_scan::{FileScanExec, FileUnit, RowColumn};
use self::scan::{balance, chunk_row_groups, row_group_rows, ColumnSource, ScanUnit, VectorScanExec};
use diffsql_core::cache::layout::{
    partition_fields, sequences_file_schema, token_key_fields, tokens_file_schema, CacheLayout, PartitionKey, Table,
    BASE_ORGANISM,
};
use diffsql_core::cache::manifest::Manifest;
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::verify::verify_partition;

/// Which vector table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorTableKind {
    /// One row per cached token and layer, every organism including `base`: column `act`.
    Activations,
    /// One row per organism token and layer, beside the base model's vector for the same token:
    /// columns `base` and `ft`.
    Acts,
}

/// `activations` or `acts` over a cache directory.
#[derive(Debug)]
pub struct VectorTable {
    kind: VectorTableKind,
    layout: CacheLayout,
    schema: SchemaRef,
    sources: Vec<ColumnSource>,
    vector_type: DataType,
    batch_bytes: usize,
}

impl VectorTable {
    /// Opens the table; the vector column's type is fixed from the manifests present now.
    pub fn open(layout: CacheLayout, kind: VectorTableKind) -> anyhow::Result<Self> {
        let partitions = layout.partitions(Table::Activations)?;
        let vector_type = common_vector_type(&partitions)?;
        let mut fields = partition_fields(Table::Activations);
        fields.extend(token_key_fields());
        let mut sources = vec![ColumnSource::Model, ColumnSource::Organism, ColumnSource::Layer];
        sources.extend((0..5).map(ColumnSource::Key));
        match kind {
            VectorTableKind::Activations => {
                fields.push(Field::new("act", vector_type.clone(), false));
                sources.push(ColumnSource::Vector);
            }
            VectorTableKind::Acts => {
                fields.push(Field::new("base", vector_type.clone(), false));
                fields.push(Field::new("ft", vector_type.clone(), false));
                sources.extend([ColumnSource::BaseVector, ColumnSource::Vector]);
            }
        }
        Ok(Self {
            kind,
            layout,
            schema: Arc::new(Schema::new(fields)),
            sources,
            vector_type,
            batch_bytes: VECTOR_BATCH_BYTES,
        })
    }

    /// Scan batches of about `bytes` of one vector column instead of [`VECTOR_BATCH_BYTES`]: larger where each
    /// batch has a fixed cost on its way (the Python package's FFI exports and imports every batch: 4 MiB
    /// batches brought its card query from 1.16–1.24× the binary's time to parity, bench/README.md).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    fn name(&self) -> &'static str {
        match self.kind {
            VectorTableKind::Activations => "activations",
            VectorTableKind::Acts => "acts",
        }
    }

    /// The partitions a scan reads, each with its manifest and (for `acts`) its base's manifest.
    fn scan_partitions(&self) -> anyhow::Result<Vec<(PartitionKey, Manifest, Option<Manifest>)>> {
        let all = self.layout.partitions(Table::Activations)?;
        if self.kind == VectorTableKind::Activations {
            return Ok(all.into_iter().map(|(k, m)| (k, m, None)).collect());
        }
        let by_key: HashMap<&PartitionKey, &Manifest> = all.iter().map(|(k, m)| (k, m)).collect();
        let mut out = Vec::new();
        for (key, manifest) in all.iter().filter(|(k, _)| !k.is_base()) {
            let base_key = key.base();
            let Some(base) = by_key.get(&base_key) else {
                anyhow::bail!(
                    "acts: {key} has no base partition {base_key}; run preprocessing for the base model (organism={BASE_ORGANISM})"
                );
            };
            check_pairable(key, manifest, base)?;
            out.push((key.clone(), manifest.clone(), Some((*base).clone())));
        }
        Ok(out)
    }
}

/// Checks that an organism partition holds the same tokens, in the same files, as its base partition.
fn check_pairable(key: &PartitionKey, ft: &Manifest, base: &Manifest) -> anyhow::Result<()> {
    if ft.token_fingerprint != base.token_fingerprint {
        anyhow::bail!(
            "acts: {key} does not hold the same tokens as its base partition (token fingerprint {} vs {}); \
             rerun preprocessing for this organism with the base model's datasets and settings",
            ft.token_fingerprint.as_deref().unwrap_or("none"),
            base.token_fingerprint.as_deref().unwrap_or("none")
        );
    }
    let ft_rows: Vec<u64> = ft.files.iter().map(|f| f.rows).collect();
    let base_rows: Vec<u64> = base.files.iter().map(|f| f.rows).collect();
    if ft_rows != base_rows {
        anyhow::bail!(
            "acts: {key} splits its rows into files differently from its base partition ({ft_rows:?} vs {base_rows:?}); \
             rewrite both with the same rows_per_file"
        );
    }
    if ft.dtype != base.dtype || ft.d_model != base.d_model {
        anyhow::bail!(
            "acts: {key} stores vectors as {:?}×{:?}, its base as {:?}×{:?}",
            ft.dtype,
            ft.d_model,
            base.dtype,
            base.d_model
        );
    }
    Ok(())
}

/// A fixed-size list of the stored element type when every partition agrees, else `List<Float32>`.
fn common_vector_type(partitions: &[(PartitionKey, Manifest)]) -> anyhow::Result<DataType> {
    let mut encodings = Vec::new();
    for (key, m) in partitions {
        let enc = encoding_of(key, m)?;
        if !encodings.contains(&enc) {
            encodings.push(enc);
        }
    }
    Ok(match encodings.as_slice() {
        [one] => one.sql_type(),
        _ => DataType::List(float32_item()),
    })
}

fn encoding_of(key: &PartitionKey, m: &Manifest) -> anyhow::Result<VectorEncoding> {
    let dtype = m.dtype.as_deref().and_then(diffsql_udfs::vector::ElementType::parse);
    match (dtype, m.d_model) {
        (Some(dtype), Some(d)) => Ok(VectorEncoding::new(dtype, d)),
        _ => anyhow::bail!("manifest of {key} lacks dtype/d_model; delete the partition and rerun preprocessing"),
    }
}

fn to_df(e: anyhow::Error) -> DataFusionError {
    DataFusionError::Plan(format!("{e:#}"))
}

/// Whether an expression only reads partition columns of `table` (so it can prune whole partitions).
fn on_partition_columns(table: Table, expr: &Expr) -> bool {
    let cols = expr.column_refs();
    !cols.is_empty()
        && cols
            .iter()
            .all(|c| table.partition_columns().contains(&c.name.as_str()))
}

/// Filters on partition columns prune whole partitions. A partition column is constant within its partition,
/// so [`prune`] decides such a filter exactly for every row, and DataFusion drops it from the plan: no
/// `FilterExec` above the scan, whose batch coalescing would copy every vector a query reads (half of a
/// normdiff scan's time, measured). A volatile filter, or one with a subquery, is left to DataFusion as
/// well (Inexact); filters on other columns are applied above the scan.
fn partition_pushdown(table: Table, filters: &[&Expr]) -> Vec<TableProviderFilterPushDown> {
    filters
        .iter()
        .map(|f| {
            if !on_partition_columns(table, f) {
                TableProviderFilterPushDown::Unsupported
            } else if f.is_volatile() || has_subquery(f) {
                TableProviderFilterPushDown::Inexact
            } else {
                TableProviderFilterPushDown::Exact
            }
        })
        .collect()
}

fn has_subquery(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// The partition column values of `key`, as SQL values in `table`'s partition column order.
pub(crate) fn partition_values(table: Table, key: &PartitionKey) -> Vec<ScalarValue> {
    table
        .partition_columns()
        .iter()
        .map(|c| match *c {
            "model" => ScalarValue::Utf8(Some(key.model.clone())),
            "organism" => ScalarValue::Utf8(key.organism.clone()),
            "layer" => ScalarValue::Int32(key.layer),
            other => unreachable!("unknown partition column {other}"),
        })
        .collect()
}

/// Keeps the keys of `table` that satisfy every partition-only filter.
fn prune(state: &dyn Session, table: Table, keys: &[PartitionKey], filters: &[Expr]) -> Result<Vec<bool>> {
    let mut keep = vec![true; keys.len()];
    let filters: Vec<&Expr> = filters.iter().filter(|f| on_partition_columns(table, f)).collect();
    if filters.is_empty() || keys.is_empty() {
        return Ok(keep);
    }
    let schema = Arc::new(Schema::new(partition_fields(table)));
    let columns = (0..table.partition_columns().len())
        .map(|i| ScalarValue::iter_to_array(keys.iter().map(|k| partition_values(table, k)[i].clone())))
        .collect::<Result<Vec<_>>>()?;
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    for f in filters {
        let physical = state.create_physical_expr(f.clone(), &df_schema)?;
        let result = physical.evaluate(&batch)?.into_array(keys.len())?;
        let result = result.as_boolean();
        for (i, k) in keep.iter_mut().enumerate() {
            *k &= result.is_valid(i) && result.value(i);
        }
    }
    Ok(keep)
}

#[async_trait]
impl TableProvider for VectorTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(partition_pushdown(Table::Activations, filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = self.scan_partitions().map_err(to_df)?;
        let keys: Vec<PartitionKey> = partitions.iter().map(|p| p.0.clone()).collect();
        if keys.is_empty() {
            return Err(to_df(empty_table(&self.layout, self.name())));
        }
        let keep = prune(state, Table::Activations, &keys, filters)?;
        let target_partitions = state.config().target_partitions();
        let mut pairs = Vec::new();
        let mut total_rows = 0usize;
        for ((key, manifest, base), keep) in partitions.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            let encoding = encoding_of(&key, &manifest).map_err(to_df)?;
            if self.vector_type != encoding.sql_type() && self.vector_type != DataType::List(float32_item()) {
                return plan_err!(
                    "{}: the cache changed since it was opened ({key} was added); reopen it",
                    self.name()
                );
            }
            total_rows += manifest.rows as usize;
            pairs.push((key, manifest, base, encoding));
        }
        // No number comes from a file that does not match its manifest (checked once per process).
        for (key, manifest, base, _) in &pairs {
            verify_partition(&self.layout, key, manifest).map_err(to_df)?;
            if let Some(b) = base {
                verify_partition(&self.layout, &b.partition, b).map_err(to_df)?;
            }
        }
        // Aim for a few units per output partition so that work balances.
        let target_rows = (total_rows / (target_partitions * 4)).max(1);
        let mut units = Vec::new();
        for (key, manifest, base, encoding) in pairs {
            let files = self.layout.files(&key, &manifest).map_err(to_df)?;
            let base_files = match &base {
                Some(b) => Some(self.layout.files(&b.partition, b).map_err(to_df)?),
                None => None,
            };
            for (i, (entry, file)) in manifest.files.iter().zip(files).enumerate() {
                let base_file = base_files.as_ref().map(|b| b[i].clone());
                let sizes = row_group_rows(&file)?;
                let same_groups = match &base_file {
                    Some(b) => row_group_rows(b)? == sizes,
                    None => true,
                };
                let chunks = if same_groups {
                    chunk_row_groups(&sizes, target_rows)
                } else {
                    vec![((0..sizes.len()).collect(), entry.rows as usize)]
                };
                for (row_groups, rows) in chunks {
                    units.push(ScanUnit {
                        partition: key.clone(),
                        file: file.clone(),
                        base_file: base_file.clone(),
                        row_groups,
                        rows,
                        encoding,
                    });
                }
            }
        }
        let (schema, sources) = match projection {
            Some(p) => (
                Arc::new(self.schema.project(p)?),
                p.iter().map(|&i| self.sources[i]).collect(),
            ),
            None => (Arc::clone(&self.schema), self.sources.clone()),
        };
        Ok(Arc::new(VectorScanExec::new(
            self.name(),
            schema,
            sources,
            balance(units, target_partitions, |u| u.rows, scan::unit_order),
            self.vector_type.clone(),
            vector_batch_rows(&self.vector_type, self.batch_bytes, state.config().batch_size()),
            limit,
        )))
    }
}

/// Bytes of one vector column a scan batch aims at: batches this small stay in cache between the
/// Parquet decode and the functions that read them (measured here: 256-row batches of d=1152 float32
/// vectors scan `normdiff` about 1.7× faster than 4096-row ones).
const VECTOR_BATCH_BYTES: usize = 1 << 20;

/// Rows per scan batch: about `batch_bytes` of vectors, at most the session's batch size.
fn vector_batch_rows(vector_type: &DataType, batch_bytes: usize, session_batch_size: usize) -> usize {
    let width = match vector_type {
        DataType::FixedSizeList(f, n) => *n as usize * f.data_type().primitive_width().unwrap_or(4),
        _ => 4096,
    };
    (batch_bytes / width.max(1)).clamp(64, session_batch_size.max(64))
}

/// The error for a query of a table the cache holds nothing of.
fn empty_table(layout: &CacheLayout, table: &str) -> anyhow::Error {
    let how = if table.starts_with("logit_diff") {
        "run `diffsql preprocess` with preprocessing.diff_top_k above 0 (the default is 100)"
    } else {
        "run `diffsql preprocess` to fill it"
    };
    anyhow::anyhow!(
        "the cache {} holds no {table} partitions: {how}, or pass --cache DIR",
        layout.location()
    )
}

/// `tokens`, `sequences` or `vocab`: the Parquet files that complete partitions' manifests list, and only
/// those (a stray or half-written file in a partition directory is never read), each checked against its
/// manifest before its first read.
#[derive(Debug)]
pub struct RowTable {
    table: Table,
    layout: CacheLayout,
    file_schema: SchemaRef,
    schema: SchemaRef,
}

impl RowTable {
    /// The table over the cache at `layout`.
    pub fn open(layout: &CacheLayout, table: Table) -> anyhow::Result<Self> {
        let file_schema = match table {
            Table::Tokens => tokens_file_schema(),
            Table::Sequences => sequences_file_schema(),
            Table::Vocab => diffsql_core::cache::layout::vocab_file_schema(),
            Table::LogitDiff => diffsql_core::cache::layout::logit_diff_file_schema(),
            Table::LogitDiffTotals => diffsql_core::cache::layout::logit_diff_totals_file_schema(),
            Table::Activations | Table::FinalHidden => anyhow::bail!("{table} is not a row table"),
        };
        let mut fields: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(partition_fields(table));
        Ok(Self {
            table,
            layout: layout.clone(),
            file_schema,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

#[async_trait]
impl TableProvider for RowTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(partition_pushdown(self.table, filters))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = self.layout.partitions(self.table).map_err(to_df)?;
        if partitions.is_empty() {
            return Err(to_df(empty_table(&self.layout, self.table.name())));
        }
        let keys: Vec<PartitionKey> = partitions.iter().map(|p| p.0.clone()).collect();
        let keep = prune(state, self.table, &keys, filters)?;
        let mut units = Vec::new();
        for ((key, manifest), keep) in partitions.into_iter().zip(keep) {
            if !keep {
                continue;
            }
            verify_partition(&self.layout, &key, &manifest).map_err(to_df)?;
            let files = self.layout.files(&key, &manifest).map_err(to_df)?;
            let values = partition_values(self.table, &key);
            for (f, path) in manifest.files.iter().zip(files) {
                units.push(FileUnit {
                    partition: key.clone(),
                    path,
                    rows: f.rows as usize,
                    partition_values: values.clone(),
                });
            }
        }
        let file_columns = self.file_schema.fields().len();
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let indices = projection.unwrap_or(&all);
        let columns = indices
            .iter()
            .map(|&i| {
                if i < file_columns {
                    RowColumn::File(i)
                } else {
                    RowColumn::Partition(i - file_columns)
                }
            })
            .collect();
        let schema = Arc::new(self.schema.project(indices)?);
        // Whole files per output partition, balanced by rows (an empty file still costs an open).
        let groups = balance(
            units,
            state.config().target_partitions(),
            |u| u.rows.max(1),
            |a, b| a.path.order(&b.path),
        );
        Ok(Arc::new(FileScanExec::new(
            self.table.name(),
            schema,
            columns,
            groups,
            state.config().batch_size(),
            limit,
        )))
    }
}
