//! What patchscope and the steering search compute for one call: the model runs, the grading, the result rows.

use std::sync::Arc;

use datafusion::arrow::array::{Float32Array, Float64Array, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use diffsql_udfs::kernels::{log_softmax, top_k};

use crate::generation::{decode, options_for, prompt_ids};
use crate::model::generate::{generate, Sampling};
use crate::model::{Edit, Intervention, KvCache, LoadedModel, Positions};

/// The prompt patchscope reads a vector with: the model continues an identity pattern at the patched `?`.
pub const PATCHSCOPE_PROMPT: &str = "cat -> cat\n1135 -> 1135\nhello -> hello\n?";

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
pub(super) fn steer_search(
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
pub(super) fn patchscope(
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
