//! Adam (no weight decay) on a flat parameter buffer.

use rayon::prelude::*;

/// One Adam update of `param` with `grad`, step `t` (1-based), moments `m` and `v` updated in place. The
/// arithmetic is that of torch.optim.Adam: m̂ / (√v̂ + ε) with bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ.
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: u64,
) {
    let c1 = (1.0 - beta1.powi(t as i32)) as f32;
    let c2 = (1.0 - beta2.powi(t as i32)) as f32;
    let (b1, b2, eps, lr) = (beta1 as f32, beta2 as f32, eps as f32, lr as f32);
    param
        .par_chunks_mut(4096)
        .zip(grad.par_chunks(4096))
        .zip(m.par_chunks_mut(4096))
        .zip(v.par_chunks_mut(4096))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = (v[i] / c2).sqrt() + eps;
                p[i] -= (m[i] / c1) / denom * lr;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_the_learning_rate_against_its_gradient() {
        // At t = 1, m̂ = g and v̂ = g², so the step is lr · g / (|g| + ε).
        let mut p = vec![1.0f32, 1.0, 1.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adam_update(&mut p, &[2.0, -0.5, 0.0], &mut m, &mut v, 0.1, 0.9, 0.999, 1e-8, 1);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] - 1.1).abs() < 1e-6 && p[2] == 1.0,
            "{p:?}"
        );
    }
}
