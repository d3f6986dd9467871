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
use diffsql_kernels::dense::{diff_extremes, kl_with_probs, log_softmax, log_softmax_probs, top_k};
use rayon::prelude::*;

use crate::logit_diff::{add_sums_cpu, extremes_device, DiffExtremes, DiffTotals};
use crate::top_k::top_k_on_device;

/// One model's next-token statistics at one token.
#[derive(Debug, Clone, PartialEq)]
pub struct NextToken {
    /// Log-prob of the actual next token (none at a sequence's last token).
    pub logprob: Option<f32>,
    /// The k most likely next tokens, most likely first (ties: lower id first on the CPU).
    pub top: Vec<(u32, f32)>,
}

/// Both models' statistics at one token, with KL(ft‖base) when the organism ran, and the extremes of the
/// logit difference when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RowStats {
    pub base: NextToken,
    pub organism: Option<(NextToken, f32)>,
    pub diff: Option<DiffExtremes>,
}

/// Statistics of every row of `base` (rows × vocab logits) and, when given, `organism` (same shape), on the
/// logits' device. `next[r]` is row r's actual next token. With `diff` (k, totals) and an organism, also the
/// k largest and smallest ft − base logit differences per row, and the differences added to `totals`.
pub fn row_stats(
    base: &Tensor,
    organism: Option<&Tensor>,
    next: &[Option<u32>],
    k: usize,
    diff: Option<(usize, &mut DiffTotals)>,
) -> Result<Vec<RowStats>> {
    let diff = diff.filter(|_| organism.is_some());
    if base.device().is_cpu() {
        let (rows, vocab) = base.dims2()?;
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        let lb = flat(base)?;
        let lf = organism.map(flat).transpose()?;
        let diff_k = match (diff, lf.as_deref()) {
            (Some((diff_k, totals)), Some(lf)) => {
                add_sums_cpu(&lb, lf, vocab, totals);
                Some(diff_k)
            }
            _ => None,
        };
        Ok(on_cpu(&lb, lf.as_deref(), &next[..rows], vocab, k, diff_k))
    } else {
        let mut stats = on_device(base, organism, next, k)?;
        if let (Some((diff_k, totals)), Some(ft)) = (diff, organism) {
            for (row, extremes) in stats.iter_mut().zip(extremes_device(base, ft, diff_k, totals)?) {
                row.diff = Some(extremes);
            }
        }
        Ok(stats)
    }
}

/// Row-parallel on rayon's pool — the pool candle's matmuls use, so the two share the cores instead of
/// spinning against each other. The logit difference's extremes are taken while a row is in cache.
fn on_cpu(
    lb: &[f32],
    lf: Option<&[f32]>,
    next: &[Option<u32>],
    vocab: usize,
    k: usize,
    diff_k: Option<usize>,
) -> Vec<RowStats> {
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
                    log_softmax_probs(&lf[row.clone()], lp_ft, Some(p_ft));
                    let kl = kl_with_probs(p_ft, lp_ft, lp_base).max(0.0) as f32;
                    (of(lp_ft), kl)
                });
                // p_ft is free again: the working space of the difference.
                let diff = lf.zip(diff_k).map(|(lf, diff_k)| {
                    let (top, bottom) = diff_extremes(&lb[row.clone()], &lf[row], p_ft, diff_k);
                    DiffExtremes { top, bottom }
                });
                RowStats { base, organism, diff }
            },
        )
        .collect()
}

/// With tensor ops on the logits' device: log-softmax, a gather for the next token, the top-k by
/// [`top_k_on_device`](crate::top_k::top_k_on_device), and KL as Σ p_ft (log p_ft − log p_base).
fn on_device(base: &Tensor, organism: Option<&Tensor>, next: &[Option<u32>], k: usize) -> Result<Vec<RowStats>> {
    let (rows, vocab) = base.dims2()?;
    let device = base.device();
    let k = k.min(vocab);
    let next_ids: Vec<u32> = next[..rows].iter().map(|t| t.unwrap_or(0)).collect();
    let next_ids = Tensor::from_vec(next_ids, (rows, 1), device)?;
    let stats = |lp: &Tensor| -> Result<Vec<NextToken>> {
        let next_lp: Vec<f32> = lp.gather(&next_ids, D::Minus1)?.flatten_all()?.to_vec1()?;
        let (ids, values): (Vec<Vec<u32>>, Vec<Vec<f32>>) = if k == 0 {
            (vec![Vec::new(); rows], vec![Vec::new(); rows])
        } else {
            let (ids, values) = top_k_on_device(lp, k)?;
            (ids.to_vec2()?, values.to_vec2()?)
        };
        Ok((0..rows)
            .map(|r| NextToken {
                logprob: next[r].map(|_| next_lp[r]),
                top: ids[r].iter().copied().zip(values[r].iter().copied()).collect(),
            })
            .collect())
    };
    let lp_base = candle_nn::ops::log_softmax(&base.to_dtype(DType::F32)?, D::Minus1)?;
    let base_rows = stats(&lp_base)?;
    let mut organism_rows = match organism {
        Some(ft) => {
            let lp_ft = candle_nn::ops::log_softmax(&ft.to_dtype(DType::F32)?, D::Minus1)?;
            let kl: Vec<f32> = (lp_ft.exp()? * (&lp_ft - &lp_base)?)?.sum(D::Minus1)?.to_vec1()?;
            Some(stats(&lp_ft)?.into_iter().zip(kl.into_iter().map(|kl| kl.max(0.0))))
        }
        None => None,
    };
    Ok(base_rows
        .into_iter()
        .map(|base| RowStats {
            base,
            organism: organism_rows.as_mut().and_then(Iterator::next),
            diff: None,
        })
        .collect())
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
    use crate::top_k::BLOCK;

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
        let cpu = on_cpu(&lb, Some(&lf), &next, vocab, k, None);
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

    /// The block-wise top-k on a vocabulary wider than k blocks, with a padded last block: equal to the kernel.
    #[test]
    fn block_top_k_matches_the_kernel_on_a_wide_vocabulary() {
        let (rows, k) = (3, 4);
        let vocab = BLOCK * (k + 2) + 77;
        let lp = logits(4, rows, vocab);
        let (ids, values) = top_k_on_device(&lp, k).unwrap();
        let (ids, values): (Vec<Vec<u32>>, Vec<Vec<f32>>) = (ids.to_vec2().unwrap(), values.to_vec2().unwrap());
        let flat: Vec<f32> = lp.flatten_all().unwrap().to_vec1().unwrap();
        for r in 0..rows {
            let want = top_k(&flat[r * vocab..(r + 1) * vocab], k);
            assert_eq!(ids[r], want.iter().map(|p| p.0).collect::<Vec<_>>());
            assert_eq!(values[r], want.iter().map(|p| p.1).collect::<Vec<_>>());
        }
        // The largest values sit in the padded last block and in one block only: still found.
        let mut row: Vec<f32> = vec![0.0; vocab];
        row[vocab - 1] = 9.0;
        row[vocab - 2] = 8.0;
        row[5] = 7.0;
        let lp = Tensor::from_vec(row, (1, vocab), &Device::Cpu).unwrap();
        let (ids, _) = top_k_on_device(&lp, 3).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap()[0],
            [vocab as u32 - 1, vocab as u32 - 2, 5]
        );
    }

    #[test]
    fn identical_models_have_zero_kl_and_k_is_capped_by_the_vocabulary() {
        let base = logits(3, 3, 4);
        let rows = on_device(&base, Some(&base), &[Some(1), Some(2), None], 10).unwrap();
        for r in &rows {
            assert_eq!(r.base.top.len(), 4);
            assert!(r.organism.as_ref().unwrap().1.abs() < 1e-6);
        }
        let none = on_device(&base, None, &[Some(1), Some(2), None], 0).unwrap();
        assert!(none.iter().all(|r| r.base.top.is_empty()) && none[0].base.logprob.is_some());
    }
}
