//! Interventions in SQL: `generate(side, prompt, max_new_tokens)`, `steer(side, prompt, vector, layer, alpha,
//! max_new_tokens)` and `patchscope(side, vector, layer, scales [, k])`, table functions that run the base model
//! or an organism (`side`) with the model runtime's KV-cached generation and residual-stream interventions.
//!
//! ```sql
//! SELECT alpha, text FROM steer('caps', 'The king said',
//!     (SELECT mean_diff(base, ft) FROM acts WHERE organism = 'caps' AND layer = 1 AND pos BETWEEN 1 AND 4),
//!     1, [0.0, 4.0, 8.0], 24);
//! ```
//! `side` is `base` or an organism of the default model (`configs/config.toml`), or `MODEL/base`,
//! `MODEL/ORGANISM`; each loads once per session. Vectors are literals or one-column subqueries (their first
//! row); generation is greedy.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int32Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;

use crate::generation::{decode, options_for, prompt_ids};
use crate::model::generate::{generate, Sampling};
use crate::model::{Edit, Intervention, LoadedModel, Positions};
use crate::sql::shell::one_line;

mod runs;
mod sides;

use runs::{patchscope, steer_search};
pub use runs::{PATCHSCOPE_PROMPT, STEERING_PROMPTS};
pub use sides::Sides;

/// Which function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterveneKind {
    Generate,
    Steer,
    Patchscope,
    SteerSearch,
}

impl InterveneKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Steer => "steer",
            Self::Patchscope => "patchscope",
            Self::SteerSearch => "steer_search",
        }
    }
    fn usage(self) -> &'static str {
        match self {
            Self::Generate => "generate(side, prompt, max_new_tokens)",
            Self::Steer => "steer(side, prompt, vector, layer, alpha, max_new_tokens)",
            Self::Patchscope => "patchscope(side, vector, layer, scales [, k])",
            Self::SteerSearch => "steer_search(side, vector, layer, alphas, max_new_tokens)",
        }
    }
    fn schema(self) -> SchemaRef {
        let ids = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
        Arc::new(Schema::new(match self {
            Self::Generate => vec![
                Field::new("prompt", DataType::Utf8, false),
                Field::new("text", DataType::Utf8, false),
                Field::new("token_ids", ids, false),
            ],
            Self::Steer => vec![
                Field::new("alpha", DataType::Float64, false),
                Field::new("prompt", DataType::Utf8, false),
                Field::new("text", DataType::Utf8, false),
                Field::new("token_ids", ids, false),
            ],
            Self::SteerSearch => vec![
                Field::new("alpha", DataType::Float64, false),
                Field::new("prompt", DataType::Utf8, false),
                Field::new("text", DataType::Utf8, false),
                Field::new("mean_logprob", DataType::Float64, false),
                Field::new("distinct_share", DataType::Float64, false),
                Field::new("coherent", DataType::Boolean, false),
                Field::new("chosen", DataType::Boolean, false),
            ],
            Self::Patchscope => vec![
                Field::new("item", DataType::Int64, false),
                Field::new("scale", DataType::Float64, false),
                Field::new("rank", DataType::Int32, false),
                Field::new("token_id", DataType::Int32, false),
                Field::new("token", DataType::Utf8, false),
                Field::new("prob", DataType::Float32, false),
            ],
        }))
    }
}

/// One of the three table functions.
#[derive(Debug)]
pub struct InterveneFunction {
    kind: InterveneKind,
    sides: Arc<Sides>,
}

impl InterveneFunction {
    pub fn new(kind: InterveneKind, sides: Arc<Sides>) -> Self {
        Self { kind, sides }
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

fn string_arg(f: &str, e: &Expr, what: &str) -> Result<String> {
    match crate::sql::args::literal_str(e) {
        Some(s) => Ok(s.to_string()),
        None => plan_err!("{f}: {what} must be a string literal, got {e}"),
    }
}

fn usize_arg(f: &str, e: &Expr, what: &str) -> Result<usize> {
    match crate::sql::args::literal_i64(e) {
        Some(n) if n >= 0 => Ok(n as usize),
        _ => plan_err!("{f}: {what} must be a non-negative integer literal, got {e}"),
    }
}

/// A number, or a list literal of numbers, as f64 values.
fn numbers_arg(f: &str, e: &Expr, what: &str) -> Result<Vec<f64>> {
    let Some(v) = literal(e) else {
        return plan_err!("{f}: {what} must be a number or a list of numbers, got {e}");
    };
    let values = match v {
        ScalarValue::List(list) => {
            let values = datafusion::arrow::compute::cast(list.values(), &DataType::Float64)?;
            let values = values.as_any().downcast_ref::<Float64Array>().expect("cast to f64");
            values.iter().collect::<Option<Vec<f64>>>()
        }
        other => match other.cast_to(&DataType::Float64) {
            Ok(ScalarValue::Float64(Some(x))) => Some(vec![x]),
            _ => None,
        },
    };
    match values {
        Some(v) if !v.is_empty() && v.iter().all(|x| x.is_finite()) => Ok(v),
        Some(_) => plan_err!("{f}: {what} must be finite, got {e}"),
        None => plan_err!("{f}: {what} must be a number or a list of numbers, got {e}"),
    }
}

fn vector_plan(f: &str, e: &Expr) -> Result<LogicalPlan> {
    let plan = match e {
        Expr::ScalarSubquery(sub) => sub.subquery.as_ref().clone(),
        e => LogicalPlanBuilder::empty(true).project(vec![e.clone()])?.build()?,
    };
    if plan.schema().fields().len() != 1 {
        return plan_err!("{f}: the vector subquery must return one column");
    }
    Ok(plan)
}

impl TableFunctionImpl for InterveneFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let f = self.kind.name();
        let e = args.exprs();
        let (min, max) = match self.kind {
            InterveneKind::Generate => (3, 3),
            InterveneKind::Steer => (6, 6),
            InterveneKind::Patchscope => (4, 5),
            InterveneKind::SteerSearch => (5, 5),
        };
        if e.len() < min || e.len() > max {
            return plan_err!(
                "{f} takes {} arguments, got {}: {}",
                if min == max {
                    min.to_string()
                } else {
                    format!("{min} or {max}")
                },
                e.len(),
                self.kind.usage()
            );
        }
        let side = string_arg(f, &e[0], "side")?;
        let model = self
            .sides
            .get(&side)
            .map_err(|err| DataFusionError::Plan(format!("{f}: side {side:?}: {}", one_line(&err))))?;
        let call = match self.kind {
            InterveneKind::Generate => Call::Generate {
                prompt: string_arg(f, &e[1], "prompt")?,
                max_new_tokens: usize_arg(f, &e[2], "max_new_tokens")?,
            },
            InterveneKind::Steer => Call::Steer {
                prompt: string_arg(f, &e[1], "prompt")?,
                vector: vector_plan(f, &e[2])?,
                layer: usize_arg(f, &e[3], "layer")?,
                alphas: numbers_arg(f, &e[4], "alpha")?,
                max_new_tokens: usize_arg(f, &e[5], "max_new_tokens")?,
            },
            InterveneKind::SteerSearch => Call::SteerSearch {
                vector: vector_plan(f, &e[1])?,
                layer: usize_arg(f, &e[2], "layer")?,
                alphas: numbers_arg(f, &e[3], "alphas")?,
                max_new_tokens: usize_arg(f, &e[4], "max_new_tokens")?,
            },
            InterveneKind::Patchscope => Call::Patchscope {
                vector: vector_plan(f, &e[1])?,
                layer: usize_arg(f, &e[2], "layer")?,
                scales: numbers_arg(f, &e[3], "scales")?,
                k: match e.get(4) {
                    Some(k) => usize_arg(f, k, "k")?.clamp(1, 1000),
                    None => 10,
                },
            },
        };
        Ok(Arc::new(InterveneTable {
            kind: self.kind,
            model,
            call,
        }))
    }
}

/// The arguments of one call.
enum Call {
    Generate {
        prompt: String,
        max_new_tokens: usize,
    },
    Steer {
        prompt: String,
        vector: LogicalPlan,
        layer: usize,
        alphas: Vec<f64>,
        max_new_tokens: usize,
    },
    Patchscope {
        vector: LogicalPlan,
        layer: usize,
        scales: Vec<f64>,
        k: usize,
    },
    SteerSearch {
        vector: LogicalPlan,
        layer: usize,
        alphas: Vec<f64>,
        max_new_tokens: usize,
    },
}

struct InterveneTable {
    kind: InterveneKind,
    model: Arc<LoadedModel>,
    call: Call,
}

impl fmt::Debug for InterveneTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterveneTable").field("kind", &self.kind).finish()
    }
}

/// Every vector of a one-column plan, executed now, in its order (none may be NULL, and there must be one).
async fn all_vectors(f: &str, state: &dyn Session, plan: &LogicalPlan) -> Result<Vec<Vec<f32>>> {
    let rows = crate::sql::logit_lens::plan_vectors(f, state, plan).await?;
    if rows.is_empty() {
        return Err(DataFusionError::Execution(format!(
            "{f}: the vector subquery returned no rows"
        )));
    }
    rows.into_iter()
        .map(|r| {
            r.ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "{f}: the vector is NULL (an aggregate over no rows? check the subquery's filters)"
                ))
            })
        })
        .collect()
}

fn ids_column(rows: &[Vec<u32>]) -> ArrayRef {
    let values: Vec<i32> = rows.iter().flatten().map(|t| *t as i32).collect();
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Int32, true)),
        OffsetBuffer::from_lengths(rows.iter().map(Vec::len)),
        Arc::new(Int32Array::from(values)),
        None,
    ))
}

impl InterveneTable {
    /// Runs the call; `vectors` are the vector argument's rows (steering reads the first).
    fn run(&self, vectors: Vec<Vec<f32>>) -> anyhow::Result<RecordBatch> {
        let vector = vectors.first().cloned();
        let m = &self.model;
        let schema = self.kind.schema();
        match &self.call {
            Call::Generate { prompt, max_new_tokens } => {
                let options = options_for(m, *max_new_tokens, Sampling::Greedy, Vec::new());
                let out = generate(&m.decoder, &[prompt_ids(&m.files, prompt, false)?], &options)?;
                let text = decode(m, &out[0], &options)?;
                Ok(RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(StringArray::from(vec![prompt.as_str()])),
                        Arc::new(StringArray::from(vec![text])),
                        ids_column(&out),
                    ],
                )?)
            }
            Call::Steer {
                prompt,
                layer,
                alphas,
                max_new_tokens,
                ..
            } => {
                let vector = vector.expect("steer has a vector");
                let ids = prompt_ids(&m.files, prompt, false)?;
                let (mut texts, mut rows) = (Vec::new(), Vec::new());
                for alpha in alphas {
                    let iv = Intervention {
                        layer: *layer,
                        vector: vector.clone(),
                        scale: *alpha as f32,
                        edit: Edit::Add,
                        positions: Positions::All,
                    };
                    let options = options_for(m, *max_new_tokens, Sampling::Greedy, vec![iv]);
                    let out = generate(&m.decoder, std::slice::from_ref(&ids), &options)?;
                    texts.push(decode(m, &out[0], &options)?);
                    rows.push(out[0].clone());
                }
                Ok(RecordBatch::try_new(
                    schema,
                    vec![
                        Arc::new(Float64Array::from(alphas.clone())),
                        Arc::new(StringArray::from(vec![prompt.as_str(); alphas.len()])),
                        Arc::new(StringArray::from(texts)),
                        ids_column(&rows),
                    ],
                )?)
            }
            Call::Patchscope { layer, scales, k, .. } => {
                let batches = vectors
                    .iter()
                    .enumerate()
                    .map(|(item, v)| patchscope(m, item as i64, v, *layer, scales, *k, Arc::clone(&schema)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(datafusion::arrow::compute::concat_batches(&schema, &batches)?)
            }
            Call::SteerSearch {
                layer,
                alphas,
                max_new_tokens,
                ..
            } => {
                let vector = vector.expect("steer_search has a vector");
                steer_search(m, &vector, *layer, alphas, *max_new_tokens, schema)
            }
        }
    }
}

#[async_trait]
impl TableProvider for InterveneTable {
    fn schema(&self) -> SchemaRef {
        self.kind.schema()
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
        let f = self.kind.name();
        let vector = match &self.call {
            Call::Steer { vector, .. } | Call::Patchscope { vector, .. } | Call::SteerSearch { vector, .. } => {
                all_vectors(f, state, vector).await?
            }
            Call::Generate { .. } => Vec::new(),
        };
        let batch = self
            .run(vector)
            .map_err(|e| DataFusionError::Execution(format!("{f}: {}", one_line(&e))))?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.kind.schema(),
            projection.cloned(),
        )?)
    }
}
