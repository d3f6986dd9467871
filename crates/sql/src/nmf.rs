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

use std::collections::HashMap;
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

use diffsql_kernels::nmf::{fit, Factorisation, SparseMatrix};

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

/// Keys to dense indices: in order of first appearance while reading, then renumbered in key order.
#[derive(Default)]
struct Index {
    of: HashMap<i64, u32>,
    keys: Vec<i64>,
}

impl Index {
    fn get(&mut self, key: i64) -> u32 {
        *self.of.entry(key).or_insert_with(|| {
            self.keys.push(key);
            (self.keys.len() - 1) as u32
        })
    }

    /// Renumbers the keys in ascending order; returns each old index's new one.
    fn sort(&mut self) -> Vec<u32> {
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_unstable_by_key(|&i| self.keys[i]);
        let mut renumbered = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            renumbered[old] = new as u32;
        }
        self.keys.sort_unstable();
        for index in self.of.values_mut() {
            *index = renumbered[*index as usize];
        }
        renumbered
    }
}

/// The matrix of the subquery: its row keys, item keys and (row, item, value) entries as dense indices.
#[derive(Default)]
struct Triplets {
    rows: Index,
    items: Index,
    entries: Vec<(u32, u32, f32)>,
}

/// The triplets of the executed subquery: keys as integers, values as numbers; NULL rows are skipped.
fn read_triplets(batches: &[RecordBatch]) -> Result<Triplets> {
    let Triplets {
        mut rows,
        mut items,
        entries: mut triplets,
    } = Triplets::default();
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
        for i in 0..b.num_rows() {
            if triplet.is_null(i) || row.is_null(i) || item.is_null(i) || value.is_null(i) {
                continue;
            }
            let v = value.value(i);
            if !v.is_finite() || v < 0.0 {
                return Err(DataFusionError::Execution(format!(
                    "{NAME}: value {v} at row key {}, item {} is negative or not finite: pass max(value, 0) for the positive part",
                    row.value(i),
                    item.value(i)
                )));
            }
            triplets.push((rows.get(row.value(i)), items.get(item.value(i)), v as f32));
        }
    }
    // The factorisation must not depend on the order the subquery returned its rows in (a plan's partitions,
    // or another engine running it): keys are numbered in key order and entries sorted.
    let (row_of, item_of) = (rows.sort(), items.sort());
    for (r, i, _) in &mut triplets {
        (*r, *i) = (row_of[*r as usize], item_of[*i as usize]);
    }
    triplets.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
    Ok(Triplets {
        rows,
        items,
        entries: triplets,
    })
}

/// Topic rows: per topic, every item with weight above 1e-6, heaviest first.
fn topic_batch(f: &Factorisation, items: &Index, rows: usize) -> Result<RecordBatch> {
    let columns = items.keys.len();
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
        order.sort_by(|&a, &b| t[b].total_cmp(&t[a]).then(items.keys[a].cmp(&items.keys[b])));
        for (i, c) in order.into_iter().enumerate() {
            topic.push(k as i32);
            rank.push(i as i32 + 1);
            item.push(items.keys[c]);
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
        let Triplets { rows, items, entries } = read_triplets(&batches)?;
        let matrix = SparseMatrix::from_triplets(rows.keys.len(), items.keys.len(), &entries)
            .map_err(|e| DataFusionError::Execution(format!("{NAME}: {e}")))?;
        let (topics, iterations, seed) = (self.topics, self.iterations, self.seed);
        let factors = tokio::task::spawn_blocking(move || fit(&matrix, topics, iterations, seed))
            .await
            .map_err(|e| DataFusionError::Execution(format!("{NAME}: {e}")))?
            .map_err(|e| DataFusionError::Execution(format!("{NAME}: {e} (did the subquery return rows?)")))?;
        let batch = topic_batch(&factors, &items, rows.keys.len())?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema(),
            projection.cloned(),
        )?)
    }
}
