//! The logit-difference statistics `diff_mining` reads, computed where both models' logits already are:
//! per token the k vocabulary tokens whose logit the finetune raised most (ft − base, raw logits as in the
//! reference toolkit) and the k it lowered most, and per dataset running totals over every token (sum of the
//! difference, how often it is positive, how often in the top-k and the bottom-k) that the top-k lists alone
//! could not give.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Tensor};
use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, ListArray, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::arrow::record_batch::RecordBatch;
use diffsql_kernels::dense::accumulate_diff;
use rayon::prelude::*;

use diffsql_core::cache::layout::logit_diff_totals_file_schema;

/// One token's extremes of the logit difference.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffExtremes {
    /// The k largest differences (id, ft − base), largest first; ties: lower id first on the CPU.
    pub top: Vec<(u32, f32)>,
    /// The ids of the k smallest differences (counted in the totals, not stored per token).
    pub bottom: Vec<u32>,
}

/// Running totals of one dataset over its tokens, per vocabulary token.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffTotals {
    pub positions: u64,
    pub sum: Vec<f64>,
    pub positive: Vec<u64>,
    pub top: Vec<u64>,
    pub bottom: Vec<u64>,
}

impl DiffTotals {
    pub fn new(vocab: usize) -> Self {
        Self {
            positions: 0,
            sum: vec![0.0; vocab],
            positive: vec![0; vocab],
            top: vec![0; vocab],
            bottom: vec![0; vocab],
        }
    }

    /// Counts the tokens' top-k and bottom-k memberships (the sums are added by [`add_sums_cpu`] or
    /// [`add_sums_device`]).
    pub fn count_extremes(&mut self, rows: &[DiffExtremes]) {
        self.positions += rows.len() as u64;
        for r in rows {
            for &(id, _) in &r.top {
                self.top[id as usize] += 1;
            }
            for &id in &r.bottom {
                self.bottom[id as usize] += 1;
            }
        }
    }

    /// The totals as a `logit_diff_totals` batch, one row per vocabulary token.
    pub fn to_batch(&self, dataset: &str, split: &str) -> Result<RecordBatch> {
        let vocab = self.sum.len();
        let counts = |v: &[u64]| -> ArrayRef { Arc::new(Int64Array::from_iter_values(v.iter().map(|&c| c as i64))) };
        Ok(RecordBatch::try_new(
            logit_diff_totals_file_schema(),
            vec![
                Arc::new(StringArray::from(vec![dataset; vocab])),
                Arc::new(StringArray::from(vec![split; vocab])),
                Arc::new(Int32Array::from_iter_values(0..vocab as i32)),
                Arc::new(Int64Array::from(vec![self.positions as i64; vocab])),
                Arc::new(Float64Array::from(self.sum.clone())),
                counts(&self.positive),
                counts(&self.top),
                counts(&self.bottom),
            ],
        )?)
    }
}

/// Adds `lf − lb` summed over the rows, and the count of rows where it is positive, per vocabulary token:
/// parallel over blocks of the vocabulary so each thread owns its slice of the totals.
pub fn add_sums_cpu(lb: &[f32], lf: &[f32], vocab: usize, totals: &mut DiffTotals) {
    const COLUMNS: usize = 1024;
    let rows = lb.len() / vocab.max(1);
    totals
        .sum
        .par_chunks_mut(COLUMNS)
        .zip(totals.positive.par_chunks_mut(COLUMNS))
        .enumerate()
        .for_each(|(block, (sum, positive))| {
            let first = block * COLUMNS;
            for r in 0..rows {
                let at = r * vocab + first..r * vocab + first + sum.len();
                accumulate_diff(sum, positive, &lb[at.clone()], &lf[at]);
            }
        });
}

/// The extremes of `lf − lb` per row (on the CPU computed inside `next_token::row_stats`' row pass) and
/// [`add_sums_cpu`], with tensor ops on the logits' device: only the ids, k values and
/// the vocabulary-long sums come back to the host.
pub fn extremes_device(lb: &Tensor, lf: &Tensor, k: usize, totals: &mut DiffTotals) -> Result<Vec<DiffExtremes>> {
    let diff = (lf.to_dtype(DType::F32)? - lb.to_dtype(DType::F32)?)?;
    let (rows, vocab) = diff.dims2()?;
    let k = k.min(vocab);
    let sum: Vec<f32> = diff.sum(0)?.to_vec1()?;
    let positive: Vec<f32> = diff.gt(0f32)?.to_dtype(DType::F32)?.sum(0)?.to_vec1()?;
    for (v, (s, p)) in sum.into_iter().zip(positive).enumerate() {
        totals.sum[v] += s as f64;
        totals.positive[v] += p as u64;
    }
    if k == 0 {
        return Ok(vec![
            DiffExtremes {
                top: Vec::new(),
                bottom: Vec::new()
            };
            rows
        ]);
    }
    let (top_ids, top_values) = crate::top_k::top_k_on_device(&diff, k)?;
    let (bottom_ids, _) = crate::top_k::top_k_on_device(&diff.neg()?, k)?;
    let top_ids: Vec<Vec<u32>> = top_ids.to_vec2()?;
    let top_values: Vec<Vec<f32>> = top_values.to_vec2()?;
    let bottom_ids: Vec<Vec<u32>> = bottom_ids.to_vec2()?;
    Ok(top_ids
        .into_iter()
        .zip(top_values)
        .zip(bottom_ids)
        .map(|((ids, values), bottom)| DiffExtremes {
            top: ids.into_iter().zip(values).collect(),
            bottom,
        })
        .collect())
}

/// The `top_ids` and `top_values` columns of a `logit_diff` batch.
pub fn top_columns(rows: &[DiffExtremes]) -> (ArrayRef, ArrayRef) {
    let lens = || OffsetBuffer::from_lengths(rows.iter().map(|r| r.top.len()));
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    let ids = Int32Array::from_iter_values(rows.iter().flat_map(|r| r.top.iter().map(|p| p.0 as i32)));
    let values = Float32Array::from_iter_values(rows.iter().flat_map(|r| r.top.iter().map(|p| p.1)));
    (
        Arc::new(ListArray::new(item(DataType::Int32), lens(), Arc::new(ids), None)),
        Arc::new(ListArray::new(item(DataType::Float32), lens(), Arc::new(values), None)),
    )
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn logits(seed: u64, rows: usize, vocab: usize) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..rows * vocab).map(|_| rng.random_range(-8.0..8.0)).collect()
    }

    /// Against a naive reference: sort each row's differences; sums and counts by a plain loop over f64.
    #[test]
    fn cpu_and_device_paths_equal_a_sorted_reference() {
        let (rows, vocab, k) = (9, 5000, 7);
        let (lb, lf) = (logits(1, rows, vocab), logits(2, rows, vocab));
        let tensor = |v: &[f32]| Tensor::from_slice(v, (rows, vocab), &Device::Cpu).unwrap();
        let mut cpu_totals = DiffTotals::new(vocab);
        let next = vec![None; rows];
        let stats =
            crate::next_token::row_stats(&tensor(&lb), Some(&tensor(&lf)), &next, 3, Some((k, &mut cpu_totals)))
                .unwrap();
        let cpu: Vec<DiffExtremes> = stats.into_iter().map(|r| r.diff.unwrap()).collect();
        cpu_totals.count_extremes(&cpu);
        let mut device_totals = DiffTotals::new(vocab);
        let device = extremes_device(&tensor(&lb), &tensor(&lf), k, &mut device_totals).unwrap();
        device_totals.count_extremes(&device);
        let mut want = DiffTotals::new(vocab);
        want.positions = rows as u64;
        for r in 0..rows {
            let mut diff: Vec<(u32, f32)> = (0..vocab)
                .map(|v| (v as u32, lf[r * vocab + v] - lb[r * vocab + v]))
                .collect();
            for &(v, d) in &diff {
                want.sum[v as usize] += d as f64;
                want.positive[v as usize] += u64::from(d > 0.0);
            }
            diff.sort_by(|a, b| b.1.total_cmp(&a.1));
            assert_eq!(cpu[r].top, diff[..k].to_vec(), "row {r}");
            assert_eq!(
                cpu[r].bottom,
                diff[vocab - k..].iter().rev().map(|p| p.0).collect::<Vec<_>>()
            );
            for (c, d) in cpu[r].top.iter().zip(&device[r].top) {
                assert_eq!(c.0, d.0);
                assert!((c.1 - d.1).abs() < 1e-5);
            }
            assert_eq!(cpu[r].bottom, device[r].bottom);
            for &(v, _) in &diff[..k] {
                want.top[v as usize] += 1;
            }
            for &(v, _) in &diff[vocab - k..] {
                want.bottom[v as usize] += 1;
            }
        }
        for got in [&cpu_totals, &device_totals] {
            assert_eq!(got.positions, want.positions);
            assert_eq!(got.positive, want.positive);
            assert_eq!(got.top, want.top);
            assert_eq!(got.bottom, want.bottom);
            for (a, b) in got.sum.iter().zip(&want.sum) {
                assert!((a - b).abs() < 1e-3, "{a} vs {b}");
            }
        }
        let batch = cpu_totals.to_batch("d", "train").unwrap();
        assert_eq!(batch.num_rows(), vocab);
        let (ids, values) = top_columns(&cpu);
        assert_eq!(ids.len(), rows);
        assert_eq!(values.len(), rows);
    }

    /// Equal models: every difference is 0, never positive.
    #[test]
    fn identical_models_have_no_positive_difference() {
        let lb = logits(3, 4, 100);
        let mut totals = DiffTotals::new(100);
        add_sums_cpu(&lb, &lb, 100, &mut totals);
        assert!(totals.positive.iter().all(|&p| p == 0));
        assert!(totals.sum.iter().all(|&s| s == 0.0));
    }
}
