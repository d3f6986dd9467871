//! `logit_lens(vector, model, k)`: a vector read through a model's final norm and unembedding, as the
//! activation difference lens does with mean differences. Lives here, not in `diffsql-udfs`, because it needs
//! model weights.
//!
//! ```sql
//! SELECT * FROM logit_lens((SELECT mean_diff(base, ft) FROM acts WHERE layer = 1 AND pos < 5 GROUP BY pos
//!                           ORDER BY pos), 'shakespeare', 20);
//! ```
//! The first argument is a vector expression (`[1.0, 2.0, ...]`) or a subquery of one vector column; each row
//! of the subquery is an `item` (0, 1, ... in its order). For every item, the `k` top tokens of +vector and of
//! −vector: item, sign ('+' or '-'), rank (1 = highest logit), token_id, token, logit, prob (softmax over the
//! whole vocabulary). `model` names a model config (`configs/model/NAME.toml`); models load once per session.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Tensor};
use datafusion::arrow::array::{Array, ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use diffsql_kernels::dense::{log_softmax, top_k};
use diffsql_udfs::vector::Vectors;

use crate::intervene::Sides;
use diffsql_core::config::ConfigDir;
use diffsql_model::load::LoadedModel;
use diffsql_model::one_line;

/// The table function; models load through the session's [`Sides`] (once per session).
#[derive(Debug)]
pub struct LogitLens {
    sides: Arc<Sides>,
}

impl LogitLens {
    pub fn new(configs: ConfigDir) -> Self {
        Self::with_sides(Arc::new(Sides::new(configs)))
    }

    /// A `logit_lens` that shares loaded models with the intervention functions.
    pub fn with_sides(sides: Arc<Sides>) -> Self {
        Self { sides }
    }

    fn model(&self, name: &str) -> Result<Arc<LoadedModel>> {
        self.sides
            .get(&format!("{name}/base"))
            .map_err(|e| DataFusionError::Plan(format!("logit_lens: {}", one_line(&e))))
    }
}

fn literal_string(e: &Expr, what: &str) -> Result<String> {
    match super::args::literal_str(e) {
        Some(s) => Ok(s.to_string()),
        None => plan_err!("logit_lens: {what} must be a string literal, got {e}"),
    }
}

fn literal_usize(e: &Expr, what: &str) -> Result<usize> {
    match super::args::literal_i64(e) {
        Some(n) if n > 0 => Ok(n as usize),
        _ => plan_err!("logit_lens: {what} must be a positive integer literal, got {e}"),
    }
}

impl TableFunctionImpl for LogitLens {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() != 3 {
            return plan_err!(
                "logit_lens(vector, model, k) takes 3 arguments, got {}: e.g. logit_lens([0.1, 0.2], 'shakespeare', 20)",
                exprs.len()
            );
        }
        let model_name = literal_string(&exprs[1], "model")?;
        let k = literal_usize(&exprs[2], "k")?;
        let model = self.model(&model_name)?;
        let vectors = match &exprs[0] {
            Expr::ScalarSubquery(sub) => sub.subquery.as_ref().clone(),
            e => LogicalPlanBuilder::empty(true).project(vec![e.clone()])?.build()?,
        };
        if vectors.schema().fields().len() != 1 {
            return plan_err!("logit_lens: the vector subquery must return one column");
        }
        Ok(Arc::new(LogitLensTable { model, vectors, k }))
    }
}

/// The output schema.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item", DataType::Int64, false),
        Field::new("sign", DataType::Utf8, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("token_id", DataType::Int32, false),
        Field::new("token", DataType::Utf8, true),
        Field::new("logit", DataType::Float32, false),
        Field::new("prob", DataType::Float32, false),
    ]))
}

struct LogitLensTable {
    model: Arc<LoadedModel>,
    vectors: LogicalPlan,
    k: usize,
}

impl fmt::Debug for LogitLensTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogitLensTable").field("k", &self.k).finish()
    }
}

#[async_trait]
impl TableProvider for LogitLensTable {
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
        let rows = plan_vectors("logit_lens", state, &self.vectors).await?;
        let batch = lens(&self.model, &rows, self.k)
            .map_err(|e| DataFusionError::Execution(format!("logit_lens: {}", one_line(&e))))?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema(),
            projection.cloned(),
        )?)
    }
}

/// Every vector of a one-column plan (a literal or a subquery argument of a table function), executed now, in
/// its order; NULL rows are kept as None. `function` names the caller in errors.
pub(crate) async fn plan_vectors(
    function: &str,
    state: &dyn Session,
    plan: &LogicalPlan,
) -> Result<Vec<Option<Vec<f32>>>> {
    let physical = state.create_physical_plan(plan).await?;
    let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
    let mut rows = Vec::new();
    for b in &batches {
        rows.extend(vector_rows(function, b.column(0))?);
    }
    Ok(rows)
}

/// The vectors of a column (NULL rows are kept as None).
fn vector_rows(function: &str, col: &ArrayRef) -> Result<Vec<Option<Vec<f32>>>> {
    // Literal lists such as [1.0, 2.0] are float64: read them as float32.
    let col = match Vectors::try_new(function, col.as_ref()) {
        Ok(_) => Arc::clone(col),
        Err(_) => datafusion::arrow::compute::cast(
            col,
            &DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
        )?,
    };
    let vectors = Vectors::try_new(function, col.as_ref())?;
    let mut scratch = Vec::new();
    Ok((0..col.len())
        .map(|i| vectors.row(i, &mut scratch).map(|v| v.to_vec()))
        .collect())
}

/// Top-k tokens of +v and −v for every vector.
pub fn lens(model: &LoadedModel, rows: &[Option<Vec<f32>>], k: usize) -> anyhow::Result<RecordBatch> {
    let d = model.decoder.spec().hidden;
    let vocab = model.decoder.spec().vocab;
    let (mut item, mut sign, mut rank, mut ids, mut tokens, mut logit, mut prob) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut lp = vec![0f32; vocab];
    for (i, row) in rows.iter().enumerate() {
        let Some(v) = row else { continue };
        if v.len() != d {
            anyhow::bail!("vector {i} has {} values but the model's d_model is {d}", v.len());
        }
        for (s, scale) in [("+", 1f32), ("-", -1f32)] {
            let x: Vec<f32> = v.iter().map(|x| x * scale).collect();
            let dec = &model.decoder;
            let t = Tensor::from_vec(x, (1, 1, d), dec.device())?.to_dtype(dec.dtype())?;
            let logits: Vec<f32> = model
                .decoder
                .logit_lens(&t)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            log_softmax(&logits, &mut lp);
            for (r, (id, l)) in top_k(&lp, k).into_iter().enumerate() {
                item.push(i as i64);
                sign.push(s);
                rank.push(r as i32 + 1);
                ids.push(id as i32);
                tokens.push(diffsql_model::data::token_text::token_text(&model.files.tokenizer, id));
                logit.push(logits[id as usize]);
                prob.push(l.exp());
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(item)),
        Arc::new(StringArray::from(sign)),
        Arc::new(Int32Array::from(rank)),
        Arc::new(Int32Array::from(ids)),
        Arc::new(StringArray::from(tokens)),
        Arc::new(Float32Array::from(logit)),
        Arc::new(Float32Array::from(prob)),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}
