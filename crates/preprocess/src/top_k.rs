//! The exact top-k of each row of a tensor with tensor ops on its device (a GPU has no sort that candle
//! exposes): the next-token statistics' top tokens and the logit difference's extremes both use it.

use anyhow::Result;
use candle_core::{Tensor, D};

/// Width of the blocks [`top_k_on_device`] first ranks by their maximum.
pub const BLOCK: usize = 1024;

/// The k largest values of each row of `x` (rows × n, f32) and their column ids, largest first, by k rounds of
/// argmax, each masking its winner: k passes over `x`, so only for narrow `x`.
fn top_k_by_rounds(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (rows, n) = x.dims2()?;
    let columns = Tensor::arange(0u32, n as u32, x.device())?.unsqueeze(0)?;
    let masked = Tensor::full(f32::NEG_INFINITY, (rows, n), x.device())?;
    let (mut ids, mut values) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let mut remaining = x.clone();
    for round in 0..k {
        let id = remaining.argmax_keepdim(D::Minus1)?;
        values.push(remaining.gather(&id, D::Minus1)?);
        if round + 1 < k {
            remaining = columns.broadcast_eq(&id)?.where_cond(&masked, &remaining)?;
        }
        ids.push(id);
    }
    Ok((Tensor::cat(&ids, 1)?, Tensor::cat(&values, 1)?))
}

/// The k largest values of each row of `lp` (rows × vocab) and their ids. Exact without sorting the
/// vocabulary: the k blocks of [`BLOCK`] columns with the largest maxima hold the k largest values (a block
/// holding one of them has a maximum at least the k-th largest value, and at most k blocks can), so the
/// rounds run over k·BLOCK candidates instead of the whole vocabulary.
pub fn top_k_on_device(lp: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (rows, vocab) = lp.dims2()?;
    let blocks = vocab.div_ceil(BLOCK);
    if blocks <= k {
        return top_k_by_rounds(lp, k);
    }
    let device = lp.device();
    let padded = match blocks * BLOCK - vocab {
        0 => lp.clone(),
        pad => Tensor::cat(&[lp, &Tensor::full(f32::NEG_INFINITY, (rows, pad), device)?], 1)?,
    };
    let grid = padded.reshape((rows, blocks, BLOCK))?;
    let (top_blocks, _) = top_k_by_rounds(&grid.max(D::Minus1)?, k)?;
    let index = top_blocks.unsqueeze(2)?.broadcast_as((rows, k, BLOCK))?.contiguous()?;
    let candidates = grid.gather(&index, 1)?.reshape((rows, k * BLOCK))?;
    let first_ids = top_blocks.broadcast_mul(&Tensor::new(&[BLOCK as u32], device)?)?;
    let offsets = Tensor::arange(0u32, BLOCK as u32, device)?.reshape((1, 1, BLOCK))?;
    let candidate_ids = first_ids
        .unsqueeze(2)?
        .broadcast_add(&offsets)?
        .reshape((rows, k * BLOCK))?;
    let (at, values) = top_k_by_rounds(&candidates, k)?;
    Ok((candidate_ids.gather(&at, D::Minus1)?, values))
}
