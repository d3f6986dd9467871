//! `nmf((SELECT struct(row, item, value) FROM …), topics [, iterations [, seed]])`: topics of any sparse
//! non-negative matrix given as a subquery of (row key, item key, value) triplets (one struct column: a scalar
//! subquery has one column), factorised by `diffsql_kernels::nmf`. diff_mining calls it with positions as
//! rows, vocabulary tokens as items and their top-k logit differences as values.
//!
//! ```sql
//! SELECT topic, rank, item AS token_id, weight FROM nmf(
//!     (SELECT struct(seq_id * 100000 + pos, id, value)
//!      FROM (SELECT seq_id, pos, unnest(top_ids) AS id, unnest(top_values) AS value
//!            FROM logit_diff WHERE organism = 'caps')),
//!     3) WHERE rank <= 10;
//! ```

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

use diffsql_kernels::nmf::{fit, Factorisation, KeyedMatrix};

const NAME: &str = "nmf";
const USAGE: &str = "nmf((SELECT struct(row_key, item_key, value) FROM ...), topics [, iterations [, seed]]): keys are integers, values >= 0";

/// The table function.
#[derive(Debug, Default)]
pub struct NmfFunction;

/// One call: the triplets' plan and the settings.
struct NmfCall {
    triplets: LogicalPlan,
    topics: usize,
    iterations: usize,
    seed: u64,
}

impl fmt::Debug for NmfCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NmfCall").field("topics", &self.topics).finish()
    }
}

fn integer_arg(e: &Expr, what: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64> {
    match super::args::literal_i64(e) {
        Some(n) if range.contains(&n) => Ok(n),
        _ => plan_err!(
            "{NAME}: {what} must be an integer literal in {}..={}, got {e}",
            range.start(),
            range.end()
        ),
    }
}

impl TableFunctionImpl for NmfFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let args = args.exprs();
        if !(2..=4).contains(&args.len()) {
            return plan_err!("{NAME} takes 2 to 4 arguments, got {}: {USAGE}", args.len());
        }
        let Expr::ScalarSubquery(sub) = &args[0] else {
            return plan_err!("{NAME}: the first argument must be a subquery in parentheses: {USAGE}");
        };
        let triplets = sub.subquery.as_ref().clone();
        let fields = triplets.schema().fields();
        let DataType::Struct(parts) = fields[0].data_type() else {
            return plan_err!(
                "{NAME}: the subquery must return one column of struct(row key, item key, value), got {}: {USAGE}",
                fields[0].data_type()
            );
        };
        if parts.len() != 3 {
            return plan_err!(
                "{NAME}: the struct has {} fields, not 3 (row key, item key, value): {USAGE}",
                parts.len()
            );
        }
        for (part, what, integer) in [(0, "row key", true), (1, "item key", true), (2, "value", false)] {
            let t = parts[part].data_type();
            if !(t.is_integer() || (!integer && t.is_floating()) || t.is_null()) {
                return plan_err!(
                    "{NAME}: the {what} is {t}, not {}: {USAGE}",
                    if integer { "an integer" } else { "a number" }
                );
            }
        }
        Ok(Arc::new(NmfCall {
            triplets,
            topics: integer_arg(&args[1], "topics", 1..=64)? as usize,
            iterations: match args.get(2) {
                Some(e) => integer_arg(e, "iterations", 1..=100_000)? as usize,
                None => 200,
            },
            seed: match args.get(3) {
                Some(e) => integer_arg(e, "seed", 0..=i64::MAX)? as u64,
                None => 0,
            },
        }))
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Int32, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("item", DataType::Int64, false),
        Field::new("weight", DataType::Float64, false),
        // Share of the rows whose largest contribution is this topic (the same on every row of a topic).
        Field::new("prevalence", DataType::Float64, false),
    ]))
}

/// The triplets of the executed subquery as parallel (row key, item key, value) vectors; NULL rows are
/// skipped. Numbering the keys, checking the values and sorting happen in `diffsql_kernels::nmf`.
fn read_triplets(batches: &[RecordBatch]) -> Result<KeyedMatrix> {
    let (mut rows, mut items, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for b in batches {
        let triplet = b.column(0).as_struct();
        let cast = |i: usize, t: &DataType, what: &str| {
            datafusion::arrow::compute::cast(triplet.column(i), t).map_err(|_| {
                DataFusionError::Plan(format!(
                    "{NAME}: the {what} is {}, not a number: {USAGE}",
                    triplet.column(i).data_type()
                ))
            })
        };
        let row = cast(0, &DataType::Int64, "row key")?;
        let item = cast(1, &DataType::Int64, "item key")?;
        let value = cast(2, &DataType::Float64, "value")?;
        let (row, item, value) = (
            row.as_primitive::<Int64Type>(),
            item.as_primitive::<Int64Type>(),
            value.as_primitive::<Float64Type>(),
        );
        let any_null = triplet.null_count() + row.null_count() + item.null_count() + value.null_count() > 0;
        if any_null {
            for i in 0..b.num_rows() {
                if !(triplet.is_null(i) || row.is_null(i) || item.is_null(i) || value.is_null(i)) {
                    rows.push(row.value(i));
                    items.push(item.value(i));
                    values.push(value.value(i));
                }
            }
        } else {
            rows.extend_from_slice(row.values());
            items.extend_from_slice(item.values());
            values.extend_from_slice(value.values());
        }
    }
    KeyedMatrix::from_keyed(&rows, &items, &values).map_err(|e| DataFusionError::Execution(format!("{NAME}: {e}")))
}

/// Topic rows: per topic, every item with weight above 1e-6, heaviest first.
fn topic_batch(f: &Factorisation, items: &[i64], rows: usize) -> Result<RecordBatch> {
    let columns = items.len();
    let mass: Vec<f64> = (0..f.rank)
        .map(|k| f.t[k * columns..(k + 1) * columns].iter().sum())
        .collect();
    let mut dominant = vec![0usize; f.rank];
    for r in 0..rows {
        let w = &f.w[r * f.rank..(r + 1) * f.rank];
        if let Some(k) = (0..f.rank)
            .filter(|&k| w[k] * mass[k] > 0.0)
            .max_by(|&a, &b| (w[a] * mass[a]).total_cmp(&(w[b] * mass[b])))
        {
            dominant[k] += 1;
        }
    }
    let (mut topic, mut rank, mut item, mut weight, mut prevalence) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, dominant) in dominant.iter().enumerate() {
        let t = &f.t[k * columns..(k + 1) * columns];
        let mut order: Vec<usize> = (0..columns).filter(|&c| t[c] > 1e-6).collect();
        order.sort_by(|&a, &b| t[b].total_cmp(&t[a]).then(items[a].cmp(&items[b])));
        for (i, c) in order.into_iter().enumerate() {
            topic.push(k as i32);
            rank.push(i as i32 + 1);
            item.push(items[c]);
            weight.push(t[c]);
            prevalence.push(*dominant as f64 / rows.max(1) as f64);
        }
    }
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int32Array::from(topic)),
            Arc::new(Int32Array::from(rank)),
            Arc::new(Int64Array::from(item)),
            Arc::new(Float64Array::from(weight)),
            Arc::new(Float64Array::from(prevalence)),
        ],
    )?)
}

#[async_trait]
impl TableProvider for NmfCall {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let physical = state.create_physical_plan(&self.triplets).await?;
        let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
        let (topics, iterations, seed) = (self.topics, self.iterations, self.seed);
        let keyed = tokio::task::spawn_blocking(move || read_triplets(&batches))
            .await
            .map_err(|e| DataFusionError::Execution(format!("{NAME}: {e}")))??;
        let KeyedMatrix {
            matrix,
            row_keys,
            column_keys,
        } = keyed;
        let factors = tokio::task::spawn_blocking(move || fit(&matrix, topics, iterations, seed))
            .await
            .map_err(|e| DataFusionError::Execution(format!("{NAME}: {e}")))?
            .map_err(|e| DataFusionError::Execution(format!("{NAME}: {e} (did the subquery return rows?)")))?;
        let batch = topic_batch(&factors, &column_keys, row_keys.len())?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema(),
            projection.cloned(),
        )?)
    }
}
