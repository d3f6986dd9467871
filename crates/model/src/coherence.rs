//! Whether steered text is still language: a deterministic, offline grader for the steering search (the
//! reference toolkit asks an LLM judge). The [`CoherenceGrader`] trait is the seam where another grader, such as an
//! OpenAI-compatible endpoint, can be added.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::decoder::Decoder;

/// How one continuation was graded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grade {
    /// Mean log-probability (nats) of the continuation's tokens under the grading model, given the prompt.
    pub mean_logprob: f64,
    /// Distinct tokens over tokens of the continuation (1: no repetition).
    pub distinct: f64,
}

/// Grades continuations; `coherent` decides from a grade and the unsteered continuation's grade.
pub trait CoherenceGrader {
    fn grade(&self, prompt: &[u32], continuation: &[u32]) -> Result<Grade>;
    fn coherent(&self, grade: &Grade, unsteered: &Grade) -> bool;
}

/// The unsteered model reads the steered text: coherent while its mean log-probability stays within
/// `max_drop` nats of the unsteered text's and its share of distinct tokens is at least `min_distinct_ratio` of
/// the unsteered text's (degenerate steering repeats itself, and repetition is likely text for a model).
pub struct LogProbGrader<'a> {
    pub model: &'a Decoder,
    pub max_drop: f64,
    pub min_distinct_ratio: f64,
}

impl CoherenceGrader for LogProbGrader<'_> {
    fn grade(&self, prompt: &[u32], continuation: &[u32]) -> Result<Grade> {
        if continuation.is_empty() {
            return Ok(Grade {
                mean_logprob: 0.0,
                distinct: 1.0,
            });
        }
        let ids: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
        let n = ids.len();
        let input = Tensor::from_vec(ids.clone(), (1, n), &Device::Cpu)?;
        let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu)?;
        let hidden = self
            .model
            .forward(&input, &mask, &[], true)?
            .final_hidden
            .expect("requested");
        // The logits that predict each continuation token: positions prompt − 1 .. n − 2.
        let start = prompt.len() - 1;
        let logits = self
            .model
            .logits(&hidden.narrow(1, start, continuation.len())?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut total = 0f64;
        let mut lp = vec![0f32; logits[0].len()];
        for (row, &t) in logits.iter().zip(continuation) {
            diffsql_kernels::dense::log_softmax(row, &mut lp);
            total += lp[t as usize] as f64;
        }
        let mut distinct = continuation.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        Ok(Grade {
            mean_logprob: total / continuation.len() as f64,
            distinct: distinct.len() as f64 / continuation.len() as f64,
        })
    }

    fn coherent(&self, grade: &Grade, unsteered: &Grade) -> bool {
        grade.mean_logprob >= unsteered.mean_logprob - self.max_drop
            && grade.distinct >= self.min_distinct_ratio * unsteered.distinct
    }
}
