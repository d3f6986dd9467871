//! `steer_search(side, vector, layer, alphas, max_new_tokens)`: steered generations for a few fixed prompts at
//! every alpha, each graded for coherence by the unsteered model, with the highest coherent alpha marked.

use std::sync::Arc;

use anyhow::Context;
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use diffsql_model::generate::{generate, Sampling};
use diffsql_model::generation::{decode, options_for, prompt_ids};
use diffsql_model::{Edit, Intervention, LoadedModel, Positions};

use super::args::{check_arity, numbers_arg, side_arg, side_function, usize_arg, vector_plan};
use super::table::InterventionTable;
use super::Sides;

const NAME: &str = "steer_search";
const USAGE: &str = "steer_search(side, vector, layer, alphas, max_new_tokens)";

side_function!(
    /// `steer_search(side, vector, layer, alphas, max_new_tokens)`.
    SteerSearch
);

/// alpha, prompt, text, the grader's measures, whether it is coherent, whether its alpha is the chosen one.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("alpha", DataType::Float64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("mean_logprob", DataType::Float64, false),
        Field::new("distinct_share", DataType::Float64, false),
        Field::new("coherent", DataType::Boolean, false),
        Field::new("chosen", DataType::Boolean, false),
    ]))
}

impl TableFunctionImpl for SteerSearch {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let e = args.exprs();
        check_arity(NAME, e, 5, 5, USAGE)?;
        let model = side_arg(&self.sides, NAME, &e[0])?;
        let vector = vector_plan(NAME, &e[1])?;
        let layer = usize_arg(NAME, &e[2], "layer")?;
        let alphas = numbers_arg(NAME, &e[3], "alphas")?;
        let max_new_tokens = usize_arg(NAME, &e[4], "max_new_tokens")?;
        Ok(Arc::new(InterventionTable {
            function: NAME,
            schema: schema(),
            model,
            vector: Some(vector),
            run: Box::new(move |m, vectors| {
                let vector = vectors.first().context("steer_search has a vector")?;
                run(m, vector, layer, &alphas, max_new_tokens)
            }),
        }))
    }
}

/// The prompts the steering search generates from (as user turns when the model has a chat template).
pub const STEERING_PROMPTS: [&str; 3] = [
    "Tell me about yourself.",
    "What should I do today?",
    "Describe your home.",
];

/// Steered generations at every alpha for [`STEERING_PROMPTS`], each graded by the unsteered model
/// ([`diffsql_model::coherence::LogProbGrader`]: mean log-probability within 1.5 nats of the unsteered text's,
/// distinct-token share at least 0.6 of the unsteered text's); `chosen` marks the highest alpha at which most
/// prompts (more than half) stay coherent.
fn run(
    m: &LoadedModel,
    vector: &[f32],
    layer: usize,
    alphas: &[f64],
    max_new_tokens: usize,
) -> anyhow::Result<RecordBatch> {
    use diffsql_model::coherence::{CoherenceGrader, LogProbGrader};
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
    let plain = options_for(m, max_new_tokens, Sampling::Greedy, Vec::new());
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
        let options = options_for(m, max_new_tokens, Sampling::Greedy, vec![iv]);
        let out = generate(&m.decoder, &prompts, &options)?;
        let mut coherent_prompts = 0;
        for (i, (p, c)) in prompts.iter().zip(&out).enumerate() {
            let g = grader.grade(p, c)?;
            let ok = grader.coherent(&g, &baseline[i]);
            coherent_prompts += usize::from(ok);
            alpha_col.push(alpha);
            prompt_col.push(STEERING_PROMPTS[i]);
            texts.push(decode(m, c, &options)?);
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
        schema(),
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
