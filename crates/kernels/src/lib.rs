//! diffsql's numeric loops over `f32` slices (the SQL functions' reductions, next-token statistics, transposes,
//! dictionary training steps, NMF), in their own crate so that dev builds compile them optimised
//! (`[profile.dev.package.diffsql-kernels]`) while the rest of diffsql builds quickly.
//!
//! [`batch_top_k`] is one BatchTopK step (crosscoder or SAE) computed sparsely: the encoder product is the
//! only dense one; the decoder, its gradient and the encoder's gradient touch only the active latents
//! (about k of every row's latents), where a dense framework multiplies by every latent.
//!
//! The bottom of the workspace: uses nothing of diffsql, and no Arrow or DataFusion.

pub mod adam;
pub mod batch_top_k;
pub mod dense;
pub mod nmf;
pub mod transpose;

pub use adam::adam_update;
pub use batch_top_k::{batch_top_k, Step, StepOutput, Workspace};
pub use transpose::{transpose, transpose_rows};

/// Appends the kept rows of a (base, ft) pair of row-major matrices (rows of `d` values) to `out`: each as
/// base followed by ft (`difference` false) or as ft − base (`difference` true).
pub fn gather_rows(base: &[f32], ft: &[f32], keep: &[bool], d: usize, difference: bool, out: &mut Vec<f32>) {
    let kept = keep.iter().filter(|k| **k).count();
    out.reserve(kept * if difference { d } else { 2 * d });
    for (i, _) in keep.iter().enumerate().filter(|(_, k)| **k) {
        let (b, f) = (&base[i * d..(i + 1) * d], &ft[i * d..(i + 1) * d]);
        if difference {
            out.extend(f.iter().zip(b).map(|(f, b)| f - b));
        } else {
            out.extend_from_slice(b);
            out.extend_from_slice(f);
        }
    }
}

/// Sparse codes from pre-activations (rows × latents, bias not yet added): for every row the latents whose
/// ReLU activation `a` is positive and whose `a × norm` exceeds `threshold`, as (latent, a), largest first.
pub fn active_codes(pre: &[f32], bias: &[f32], norms: &[f32], threshold: f32) -> Vec<Vec<(u32, f32)>> {
    use rayon::prelude::*;
    pre.par_chunks(bias.len())
        .map(|row| {
            let mut active: Vec<(u32, f32)> = row
                .iter()
                .zip(bias)
                .zip(norms)
                .enumerate()
                .filter_map(|(j, ((p, b), n))| {
                    let a = (p + b).max(0.0);
                    (a > 0.0 && a * n > threshold).then_some((j as u32, a))
                })
                .collect();
            active.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
            active
        })
        .collect()
}
