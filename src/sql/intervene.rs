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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use diffsql_udfs::kernels::{log_softmax, top_k};
use diffsql_udfs::vector::Vectors;

use crate::config::{parse_all, ConfigDir};
use crate::generation::prompt_ids;
use crate::model::generate::{generate, GenerateOptions, Sampling};
use crate::model::{Edit, Intervention, KvCache, LoadedModel, Positions};
use crate::sql::shell::one_line;

/// The prompt patchscope reads a vector with: the model continues an identity pattern at the patched `?`.
pub const PATCHSCOPE_PROMPT: &str = "cat -> cat\n1135 -> 1135\nhello -> hello\n?";

/// The models the functions of one session have loaded, by side.
pub struct Sides {
    configs: ConfigDir,
    models: Mutex<HashMap<String, Arc<LoadedModel>>>,
}

impl fmt::Debug for Sides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sides").field("configs", &self.configs).finish()
    }
}

impl Sides {
    pub fn new(configs: ConfigDir) -> Self {
        Self {
            configs,
            models: Mutex::new(HashMap::new()),
        }
    }

    /// The model of `side` (`base`, an organism, `MODEL/base` or `MODEL/ORGANISM`), loaded on first use.
    pub fn get(&self, side: &str) -> anyhow::Result<Arc<LoadedModel>> {
        if let Some(m) = self.models.lock().expect("not poisoned").get(side) {
            return Ok(Arc::clone(m));
        }
        let (model, organism) = match side.split_once('/') {
            Some((m, o)) => (Some(m), o),
            None => (None, side),
        };
        let mut args = Vec::new();
        if let Some(m) = model {
            args.push(format!("model={m}"));
        }
        if organism != "base" {
            args.push(format!("organism={organism}"));
        }
        let settings = self.configs.resolve(&parse_all(&args, false)?)?;
        let root = self.configs.project_root();
        let device = candle_core::Device::Cpu;
        let loaded = if organism == "base" {
            let source = crate::preprocess::model_source(&settings.model, &root)?;
            crate::model::load::load(
                &source,
                None,
                crate::preprocess::pair::compute_dtype(&settings.model.dtype)?,
                &device,
            )?
        } else {
            crate::preprocess::pair::PairFiles::open(&settings, &root)?.load_organism(&settings, &device)?
        };
        let loaded = Arc::new(loaded);
        self.models
            .lock()
            .expect("not poisoned")
            .insert(side.to_string(), Arc::clone(&loaded));
        Ok(loaded)
    }
}

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
    match literal(e) {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => {
            Ok(s.clone())
        }
        _ => plan_err!("{f}: {what} must be a string literal, got {e}"),
    }
}

fn usize_arg(f: &str, e: &Expr, what: &str) -> Result<usize> {
    match literal(e).and_then(|v| v.cast_to(&DataType::Int64).ok()) {
        Some(ScalarValue::Int64(Some(n))) if n >= 0 => Ok(n as usize),
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

/// Every vector of a one-column plan, executed now, in its order.
async fn all_vectors(f: &str, state: &dyn Session, plan: &LogicalPlan) -> Result<Vec<Vec<f32>>> {
    let physical = state.create_physical_plan(plan).await?;
    let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
    let mut out = Vec::new();
    for b in &batches {
        let col = b.column(0);
        let col = match Vectors::try_new(f, col.as_ref()) {
            Ok(_) => Arc::clone(col),
            Err(_) => datafusion::arrow::compute::cast(
                col,
                &DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
            )?,
        };
        let vectors = Vectors::try_new(f, col.as_ref())?;
        let mut scratch = Vec::new();
        for i in 0..b.num_rows() {
            match vectors.row(i, &mut scratch) {
                Some(v) => out.push(v.to_vec()),
                None => {
                    return Err(DataFusionError::Execution(format!(
                        "{f}: the vector is NULL (an aggregate over no rows? check the subquery's filters)"
                    )))
                }
            }
        }
    }
    if out.is_empty() {
        return Err(DataFusionError::Execution(format!(
            "{f}: the vector subquery returned no rows"
        )));
    }
    Ok(out)
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

fn greedy(model: &LoadedModel, max_new_tokens: usize, interventions: Vec<Intervention>) -> GenerateOptions {
    let special = &model.files.special;
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos: special.eos.iter().map(|t| t.1).collect(),
        pad: special.pad.as_ref().or(special.eos.as_ref()).map_or(0, |t| t.1),
        interventions,
    }
}

fn decode(model: &LoadedModel, tokens: &[u32], eos: &[u32]) -> anyhow::Result<String> {
    let kept: Vec<u32> = tokens.iter().copied().filter(|t| !eos.contains(t)).collect();
    model
        .files
        .tokenizer
        .decode(&kept, true)
        .map_err(|e| anyhow::anyhow!("cannot decode the generated tokens: {e}"))
}

impl InterveneTable {
    /// Runs the call; `vectors` are the vector argument's rows (steering reads the first).
    fn run(&self, vectors: Vec<Vec<f32>>) -> anyhow::Result<RecordBatch> {
        let vector = vectors.first().cloned();
        let m = &self.model;
        let schema = self.kind.schema();
        match &self.call {
            Call::Generate { prompt, max_new_tokens } => {
                let options = greedy(m, *max_new_tokens, Vec::new());
                let out = generate(&m.decoder, &[prompt_ids(&m.files, prompt, false)?], &options)?;
                let text = decode(m, &out[0], &options.eos)?;
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
                    let options = greedy(m, *max_new_tokens, vec![iv]);
                    let out = generate(&m.decoder, std::slice::from_ref(&ids), &options)?;
                    texts.push(decode(m, &out[0], &options.eos)?);
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

/// The prompts the steering search generates from (as user turns when the model has a chat template).
pub const STEERING_PROMPTS: [&str; 3] = [
    "Tell me about yourself.",
    "What should I do today?",
    "Describe your home.",
];

/// Steered generations at every alpha for [`STEERING_PROMPTS`], each graded by the unsteered model
/// ([`crate::model::coherence::LogProbGrader`]: mean log-probability within 1.5 nats of the unsteered text's,
/// distinct-token share at least 0.6 of the unsteered text's); `chosen` marks the highest alpha at which most
/// prompts (more than half) stay coherent.
fn steer_search(
    m: &LoadedModel,
    vector: &[f32],
    layer: usize,
    alphas: &[f64],
    max_new_tokens: usize,
    schema: SchemaRef,
) -> anyhow::Result<RecordBatch> {
    use crate::model::coherence::{CoherenceGrader, LogProbGrader};
    let chat = m.files.special.chat_template.is_some();
    let prompts: Vec<Vec<u32>> = STEERING_PROMPTS
        .iter()
        .map(|p| prompt_ids(&m.files, p, chat))
        .collect::<anyhow::Result<_>>()?;
    let grader = LogProbGrader {
        model: &m.decoder,
        max_drop: 1.5,
        min_distinct_ratio: 0.6,
    };
    let plain = greedy(m, max_new_tokens, Vec::new());
    let unsteered = generate(&m.decoder, &prompts, &plain)?;
    let baseline: Vec<_> = prompts
        .iter()
        .zip(&unsteered)
        .map(|(p, c)| grader.grade(p, c))
        .collect::<anyhow::Result<_>>()?;
    let mut sorted = alphas.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    let (mut alpha_col, mut prompt_col, mut texts, mut logprobs, mut distinct, mut coherent) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut all_coherent = Vec::new();
    for &alpha in &sorted {
        let iv = Intervention {
            layer,
            vector: vector.to_vec(),
            scale: alpha as f32,
            edit: Edit::Add,
            positions: Positions::All,
        };
        let options = greedy(m, max_new_tokens, vec![iv]);
        let out = generate(&m.decoder, &prompts, &options)?;
        let mut coherent_prompts = 0;
        for (i, (p, c)) in prompts.iter().zip(&out).enumerate() {
            let g = grader.grade(p, c)?;
            let ok = grader.coherent(&g, &baseline[i]);
            coherent_prompts += usize::from(ok);
            alpha_col.push(alpha);
            prompt_col.push(STEERING_PROMPTS[i]);
            texts.push(decode(m, c, &options.eos)?);
            logprobs.push(g.mean_logprob);
            distinct.push(g.distinct);
            coherent.push(ok);
        }
        all_coherent.push((alpha, 2 * coherent_prompts > prompts.len()));
    }
    let chosen_alpha = all_coherent
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(a, _)| *a)
        .fold(f64::NAN, f64::max);
    let chosen: Vec<bool> = alpha_col.iter().map(|a| *a == chosen_alpha).collect();
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from(alpha_col)),
            Arc::new(StringArray::from(prompt_col)),
            Arc::new(StringArray::from(texts)),
            Arc::new(Float64Array::from(logprobs)),
            Arc::new(Float64Array::from(distinct)),
            Arc::new(datafusion::arrow::array::BooleanArray::from(coherent)),
            Arc::new(datafusion::arrow::array::BooleanArray::from(chosen)),
        ],
    )?)
}

/// For each scale, the top-k next tokens (as `item`'s rows) after [`PATCHSCOPE_PROMPT`] with its last token's residual stream
/// after `layer` replaced by the unit vector × scale × the prompt's mean residual norm there (BOS excluded).
#[allow(clippy::too_many_arguments)]
fn patchscope(
    m: &LoadedModel,
    item: i64,
    vector: &[f32],
    layer: usize,
    scales: &[f64],
    k: usize,
    schema: SchemaRef,
) -> anyhow::Result<RecordBatch> {
    use candle_core::{DType, Device, Tensor};
    let d = &m.decoder;
    let hidden = d.spec().hidden;
    if vector.len() != hidden {
        anyhow::bail!(
            "the vector has {} values but the model's d_model is {hidden}",
            vector.len()
        );
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 {
        anyhow::bail!("the vector is zero: it has no direction to read");
    }
    let ids = prompt_ids(&m.files, PATCHSCOPE_PROMPT, false)?;
    let n = ids.len();
    let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu)?;
    let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu)?;
    let x = d.forward(&input, &mask, &[layer], false)?.layers.remove(0);
    let skip = usize::from(m.files.special.bos_to_add().is_some());
    let norms: Vec<f32> = x.squeeze(0)?.sqr()?.sum(1)?.sqrt()?.to_dtype(DType::F32)?.to_vec1()?;
    let typical = norms[skip..].iter().sum::<f32>() / (n - skip).max(1) as f32;
    let unit: Vec<f32> = vector.iter().map(|v| v / norm).collect();
    let vocab = d.spec().vocab;
    let mut lp = vec![0f32; vocab];
    let (mut scale_col, mut rank, mut token_ids, mut tokens, mut probs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &scale in scales {
        let iv = Intervention {
            layer,
            vector: unit.clone(),
            scale: scale as f32 * typical,
            edit: Edit::Replace,
            positions: Positions::At(vec![n - 1]),
        };
        let h = d.forward_intervened(&input, &mask, &mut KvCache::new(d), &[iv])?;
        let logits: Vec<f32> = d
            .logits(&h.narrow(1, n - 1, 1)?)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        log_softmax(&logits, &mut lp);
        for (r, (id, l)) in top_k(&lp, k).into_iter().enumerate() {
            scale_col.push(scale);
            rank.push(r as i32 + 1);
            token_ids.push(id as i32);
            tokens.push(crate::data::token_text::token_text(&m.files.tokenizer, id));
            probs.push(l.exp());
        }
    }
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![item; scale_col.len()])),
            Arc::new(Float64Array::from(scale_col)),
            Arc::new(Int32Array::from(rank)),
            Arc::new(Int32Array::from(token_ids)),
            Arc::new(StringArray::from(tokens)),
            Arc::new(Float32Array::from(probs)),
        ],
    )?)
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
