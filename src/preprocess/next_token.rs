//! The `tokens` table's next-token statistics — each model's log-prob of the actual next token and its top-k,
//! and KL(ft‖base) over the full vocabulary — from a chunk of logits, computed where the logits are: on the
//! CPU with the vector kernels, row-parallel; on a GPU with tensor ops, so that only k + 2 numbers per token
//! come back to the host instead of the vocabulary.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Tensor, D};
use datafusion::arrow::array::{ArrayRef, Float32Array, Int32Array, ListArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use diffsql_udfs::kernels::{kl_with_probs, log_softmax, log_softmax_probs, top_k};
use rayon::prelude::*;

/// One model's next-token statistics at one token.
#[derive(Debug, Clone, PartialEq)]
pub struct NextToken {
    /// Log-prob of the actual next token (none at a sequence's last token).
    pub logprob: Option<f32>,
    /// The k most likely next tokens, most likely first (ties: lower id first on the CPU).
    pub top: Vec<(u32, f32)>,
}

/// Both models' statistics at one token, with KL(ft‖base) when the organism ran.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStats {
    pub base: NextToken,
    pub organism: Option<(NextToken, f32)>,
}

/// Statistics of every row of `base` (rows × vocab logits) and, when given, `organism` (same shape), on the
/// logits' device. `next[r]` is row r's actual next token.
pub fn row_stats(base: &Tensor, organism: Option<&Tensor>, next: &[Option<u32>], k: usize) -> Result<Vec<RowStats>> {
    if base.device().is_cpu() {
        let (rows, vocab) = base.dims2()?;
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        let lb = flat(base)?;
        let lf = organism.map(flat).transpose()?;
        Ok(on_cpu(&lb, lf.as_deref(), &next[..rows], vocab, k))
    } else {
        on_device(base, organism, next, k)
    }
}

/// Row-parallel on rayon's pool — the pool candle's matmuls use, so the two share the cores instead of
/// spinning against each other.
fn on_cpu(lb: &[f32], lf: Option<&[f32]>, next: &[Option<u32>], vocab: usize, k: usize) -> Vec<RowStats> {
    (0..next.len())
        .into_par_iter()
        .map_init(
            || (vec![0f32; vocab], vec![0f32; vocab], vec![0f32; vocab]),
            |(lp_base, lp_ft, p_ft), r| {
                let row = r * vocab..(r + 1) * vocab;
                log_softmax(&lb[row.clone()], lp_base);
                let of = |lp: &[f32]| NextToken {
                    logprob: next[r].map(|t| lp[t as usize]),
                    top: top_k(lp, k),
                };
                let base = of(lp_base);
                let organism = lf.map(|lf| {
                    log_softmax_probs(&lf[row], lp_ft, Some(p_ft));
                    let kl = kl_with_probs(p_ft, lp_ft, lp_base).max(0.0) as f32;
                    (of(lp_ft), kl)
                });
                RowStats { base, organism }
            },
        )
        .collect()
}

/// With tensor ops on the logits' device: log-softmax, a gather for the next token, k rounds of argmax (each
/// masking the winner) for the top-k, and KL as Σ p_ft (log p_ft − log p_base).
fn on_device(base: &Tensor, organism: Option<&Tensor>, next: &[Option<u32>], k: usize) -> Result<Vec<RowStats>> {
    let (rows, vocab) = base.dims2()?;
    let device = base.device();
    let k = k.min(vocab);
    let next_ids: Vec<u32> = next[..rows].iter().map(|t| t.unwrap_or(0)).collect();
    let next_ids = Tensor::from_vec(next_ids, (rows, 1), device)?;
    let columns = Tensor::arange(0u32, vocab as u32, device)?.unsqueeze(0)?;
    let masked = Tensor::full(f32::NEG_INFINITY, (rows, vocab), device)?;
    let stats = |lp: &Tensor| -> Result<Vec<NextToken>> {
        let next_lp: Vec<f32> = lp.gather(&next_ids, D::Minus1)?.flatten_all()?.to_vec1()?;
        let (mut ids, mut values) = (Vec::with_capacity(k), Vec::with_capacity(k));
        let mut remaining = lp.clone();
        for round in 0..k {
            let id = remaining.argmax_keepdim(D::Minus1)?;
            values.push(remaining.gather(&id, D::Minus1)?);
            if round + 1 < k {
                remaining = columns.broadcast_eq(&id)?.where_cond(&masked, &remaining)?;
            }
            ids.push(id);
        }
        let ids: Vec<Vec<u32>> = Tensor::cat(&ids, 1)?.to_vec2()?;
        let values: Vec<Vec<f32>> = Tensor::cat(&values, 1)?.to_vec2()?;
        Ok((0..rows)
            .map(|r| NextToken {
                logprob: next[r].map(|_| next_lp[r]),
                top: ids[r].iter().copied().zip(values[r].iter().copied()).collect(),
            })
            .collect())
    };
    let lp_base = candle_nn::ops::log_softmax(&base.to_dtype(DType::F32)?, D::Minus1)?;
    let base_rows = stats(&lp_base)?;
    let organism_rows = match organism {
        Some(ft) => {
            let lp_ft = candle_nn::ops::log_softmax(&ft.to_dtype(DType::F32)?, D::Minus1)?;
            let kl: Vec<f32> = (lp_ft.exp()? * (&lp_ft - &lp_base)?)?.sum(D::Minus1)?.to_vec1()?;
            Some(stats(&lp_ft)?.into_iter().zip(kl).map(|(t, kl)| (t, kl.max(0.0))))
        }
        None => None,
    };
    Ok(match organism_rows {
        Some(ft) => base_rows
            .into_iter()
            .zip(ft)
            .map(|(base, o)| RowStats {
                base,
                organism: Some(o),
            })
            .collect(),
        None => base_rows
            .into_iter()
            .map(|base| RowStats { base, organism: None })
            .collect(),
    })
}

/// One model's next-token columns of the `tokens` table.
pub struct NextTokenArrays {
    pub logprob: ArrayRef,
    pub topk_ids: ArrayRef,
    pub topk_logprobs: ArrayRef,
}

/// Collects [`NextToken`]s into Arrow columns.
#[derive(Default)]
pub struct ColumnBuilder {
    logprob: Vec<Option<f32>>,
    ids: Vec<i32>,
    lps: Vec<f32>,
    lens: Vec<usize>,
}

impl ColumnBuilder {
    pub fn push(&mut self, t: NextToken) {
        self.logprob.push(t.logprob);
        self.lens.push(t.top.len());
        for (id, l) in t.top {
            self.ids.push(id as i32);
            self.lps.push(l);
        }
    }

    pub fn finish(self) -> NextTokenArrays {
        let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
        NextTokenArrays {
            logprob: Arc::new(Float32Array::from(self.logprob)),
            topk_ids: Arc::new(ListArray::new(
                item(DataType::Int32),
                OffsetBuffer::from_lengths(self.lens.iter().copied()),
                Arc::new(Int32Array::from(self.ids)),
                None,
            )),
            topk_logprobs: Arc::new(ListArray::new(
                item(DataType::Float32),
                OffsetBuffer::from_lengths(self.lens),
                Arc::new(Float32Array::from(self.lps)),
                None,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn logits(seed: u64, rows: usize, vocab: usize) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * vocab).map(|_| rng.random_range(-8.0..8.0)).collect();
        Tensor::from_vec(v, (rows, vocab), &Device::Cpu).unwrap()
    }

    /// The tensor-op path (what runs on a GPU), run here on the CPU, agrees with the kernel path: same top-k ids
    /// in the same order, log-probs and KL within 1e-5 (random logits have no ties).
    #[test]
    fn device_path_matches_the_cpu_kernels() {
        let (rows, vocab, k) = (7, 300, 5);
        let (base, ft) = (logits(1, rows, vocab), logits(2, rows, vocab));
        let next: Vec<Option<u32>> = (0..rows)
            .map(|r| (r + 1 < rows).then_some((r * 37 % vocab) as u32))
            .collect();
        let lb: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
        let lf: Vec<f32> = ft.flatten_all().unwrap().to_vec1().unwrap();
        let cpu = on_cpu(&lb, Some(&lf), &next, vocab, k);
        let tensor = on_device(&base, Some(&ft), &next, k).unwrap();
        assert_eq!(cpu.len(), rows);
        for (c, t) in cpu.iter().zip(&tensor) {
            for (a, b) in [
                (&c.base, &t.base),
                (&c.organism.as_ref().unwrap().0, &t.organism.as_ref().unwrap().0),
            ] {
                assert_eq!(a.logprob.is_some(), b.logprob.is_some());
                if let (Some(x), Some(y)) = (a.logprob, b.logprob) {
                    assert!((x - y).abs() < 1e-5, "{x} vs {y}");
                }
                let ids = |t: &NextToken| t.top.iter().map(|p| p.0).collect::<Vec<_>>();
                assert_eq!(ids(a), ids(b));
                for (p, q) in a.top.iter().zip(&b.top) {
                    assert!((p.1 - q.1).abs() < 1e-5);
                }
            }
            let (kc, kt) = (c.organism.as_ref().unwrap().1, t.organism.as_ref().unwrap().1);
            assert!((kc - kt).abs() < 1e-5 && kc > 0.0, "{kc} vs {kt}");
        }
        assert_eq!(cpu[rows - 1].base.logprob, None);
        // Without an organism: base statistics only.
        let base_only = on_device(&base, None, &next, k).unwrap();
        assert!(base_only.iter().all(|r| r.organism.is_none()));
        assert_eq!(base_only[0].base, tensor[0].base);
    }

    #[test]
    fn identical_models_have_zero_kl_and_k_is_capped_by_the_vocabulary() {
        let base = logits(3, 3, 4);
        let rows = on_device(&base, Some(&base), &[Some(1), Some(2), None], 10).unwrap();
        for r in &rows {
            assert_eq!(r.base.top.len(), 4);
            assert!(r.organism.as_ref().unwrap().1.abs() < 1e-6);
        }
    }
}
