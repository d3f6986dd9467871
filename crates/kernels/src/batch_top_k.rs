//! One BatchTopK training step on the CPU, forward and backward, computed sparsely.
//!
//! Notation: a batch of `rows` inputs of `width` values (the sides side by side), `latents` latents. The
//! encoder is held transposed, `w_enc_t` latents × width, and the decoder `w_dec` latents × width (row l is
//! latent l's decoder vector over all sides), both row-major. With an SAE the decoder bias is subtracted before encoding.
//! Every parallel loop writes each output from one thread in a fixed order, so a step is deterministic.

use rayon::prelude::*;

/// The inputs of one step.
pub struct Step<'a> {
    pub x: &'a [f32],
    pub rows: usize,
    pub width: usize,
    pub latents: usize,
    /// Values per side (width = sides × d_model).
    pub d_model: usize,
    /// The encoder transposed: latents × width (row l reads latent l's input weights).
    pub w_enc_t: &'a [f32],
    pub b_enc: &'a [f32],
    pub w_dec: &'a [f32],
    pub b_dec: &'a [f32],
    pub sae: bool,
    /// Active latents per row on average.
    pub k: usize,
    /// Dead latents the auxiliary loss may use per row.
    pub k_aux: usize,
    pub dead: &'a [bool],
    pub auxk_alpha: f32,
}

/// What a step measured, and the gradients (same layouts as the parameters).
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    pub loss: f32,
    pub l2: f32,
    pub auxk: f32,
    pub fve: f32,
    pub l0: f32,
    pub fired: Vec<bool>,
    pub min_selected: Option<f32>,
    /// Gradient of the encoder in its transposed (latents × width) layout.
    pub grad_w_enc_t: Vec<f32>,
    pub grad_b_enc: Vec<f32>,
    pub grad_w_dec: Vec<f32>,
    pub grad_b_dec: Vec<f32>,
}

/// dst (m × n) = lhs (m × k) · rhsᵀ, with rhs stored n × k, all row-major, on every core.
fn matmul_transposed_rhs(lhs: &[f32], rhs: &[f32], dst: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n && dst.len() >= m * n);
    // SAFETY: the slices hold m × k, n × k and m × n values; rhsᵀ is read through strides (row stride 1,
    // column stride k), dst and lhs row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Sum over sides of the norm of each latent's decoder vector.
fn decoder_norms(w_dec: &[f32], width: usize, d: usize) -> Vec<f32> {
    w_dec
        .par_chunks(width)
        .map(|row| {
            row.chunks_exact(d)
                .map(|s| s.iter().map(|v| v * v).sum::<f32>().sqrt())
                .sum()
        })
        .collect()
}

/// The (row, latent) pairs a row selects, with their activations.
type Codes = Vec<Vec<(u32, f32)>>;

/// Σ over a row's pairs of value × decoder row, plus `bias` (if given), for every row.
fn decode(codes: &Codes, w_dec: &[f32], width: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; codes.len() * width];
    out.par_chunks_mut(width)
        .zip(codes.par_iter())
        .for_each(|(row, pairs)| {
            if let Some(b) = bias {
                row.copy_from_slice(b);
            }
            for &(l, v) in pairs {
                let dec = &w_dec[l as usize * width..(l as usize + 1) * width];
                row.iter_mut().zip(dec).for_each(|(o, w)| *o += v * w);
            }
        });
    out
}

/// For each row's pairs, ⟨g_row, decoder row of the latent⟩.
fn pair_gradients(codes: &Codes, g: &[f32], w_dec: &[f32], width: usize) -> Vec<Vec<f32>> {
    codes
        .par_iter()
        .zip(g.par_chunks(width))
        .map(|(pairs, gr)| {
            pairs
                .iter()
                .map(|&(l, _)| {
                    let dec = &w_dec[l as usize * width..(l as usize + 1) * width];
                    dec.iter().zip(gr).map(|(a, b)| a * b).sum()
                })
                .collect()
        })
        .collect()
}

/// Per latent, its (row, coefficient) pairs in row order: the transpose of per-row pair lists.
fn by_latent(latents: usize, pairs: impl Iterator<Item = (usize, u32, f32)>) -> Vec<Vec<(u32, f32)>> {
    let mut out: Vec<Vec<(u32, f32)>> = vec![Vec::new(); latents];
    for (row, l, c) in pairs {
        out[l as usize].push((row as u32, c));
    }
    out
}

/// rows_out[l] = Σ over latent l's (row, c) of c × src[row], for every latent (latents × width).
fn accumulate(per_latent: &[Vec<(u32, f32)>], src: &[f32], width: usize) -> Vec<f32> {
    let mut out = vec![0f32; per_latent.len() * width];
    out.par_chunks_mut(width)
        .zip(per_latent.par_iter())
        .for_each(|(row, list)| {
            for &(r, c) in list {
                let s = &src[r as usize * width..(r as usize + 1) * width];
                row.iter_mut().zip(s).for_each(|(o, v)| *o += c * v);
            }
        });
    out
}

/// The `n`-th largest positive value of `values[i] × weight[i % weight.len()]`, or None when at most `n`
/// are positive. A radix select: positive floats order like their bit patterns, so one parallel pass counts
/// values per top-16-bit bucket, and only the bucket holding the `n`-th value is sorted out.
fn nth_largest_positive_scaled(values: &[f32], weight: &[f32], n: usize) -> Option<f32> {
    let m = weight.len();
    let bucket = |v: f32| (v.to_bits() >> 16) as usize;
    let counts = values
        .par_chunks(m)
        .fold(
            || vec![0u32; 1 << 16],
            |mut h, row| {
                for (a, w) in row.iter().zip(weight) {
                    let v = a * w;
                    if v > 0.0 {
                        h[bucket(v)] += 1;
                    }
                }
                h
            },
        )
        .reduce(
            || vec![0u32; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let total: usize = counts.iter().map(|c| *c as usize).sum();
    if n == 0 || total <= n {
        return None;
    }
    let (mut above, mut target) = (0usize, 0usize);
    for b in (0..counts.len()).rev() {
        if above + counts[b] as usize >= n {
            target = b;
            break;
        }
        above += counts[b] as usize;
    }
    let mut in_bucket: Vec<f32> = values
        .par_chunks(m)
        .flat_map_iter(|row| {
            row.iter()
                .zip(weight)
                .map(|(a, w)| a * w)
                .filter(move |v| *v > 0.0 && bucket(*v) == target)
        })
        .collect();
    let rank = n - above; // 1-based within the bucket
    let (_, nth, _) = in_bucket.select_nth_unstable_by(rank - 1, |a, b| b.total_cmp(a));
    Some(*nth)
}

/// Buffers reused from step to step (a fresh batch-sized allocation costs page faults every step).
#[derive(Debug, Default)]
pub struct Workspace {
    act: Vec<f32>,
}

/// One step: loss, statistics and gradients.
pub fn batch_top_k(s: &Step, workspace: &mut Workspace) -> StepOutput {
    let (b, w, m, d) = (s.rows, s.width, s.latents, s.d_model);
    let x_in: Vec<f32> = if s.sae {
        s.x.chunks_exact(w)
            .flat_map(|r| r.iter().zip(s.b_dec).map(|(v, bd)| v - bd))
            .collect()
    } else {
        s.x[..b * w].to_vec()
    };
    let act = &mut workspace.act;
    act.resize(b * m, 0.0);
    matmul_transposed_rhs(&x_in, s.w_enc_t, act, b, w, m);
    act.par_chunks_mut(m).for_each(|row| {
        row.iter_mut().zip(s.b_enc).for_each(|(a, be)| *a = (*a + be).max(0.0));
    });
    let norms = decoder_norms(s.w_dec, w, d);
    let cut = nth_largest_positive_scaled(act, &norms, s.k * b);
    let codes: Codes = act
        .par_chunks(m)
        .map(|row| {
            row.iter()
                .zip(&norms)
                .enumerate()
                .filter(|(_, (a, n))| {
                    let v = **a * **n;
                    **a > 0.0 && v > 0.0 && cut.is_none_or(|c| v >= c)
                })
                .map(|(l, (a, _))| (l as u32, *a))
                .collect()
        })
        .collect();
    let x_hat = decode(&codes, s.w_dec, w, Some(s.b_dec));
    let err: Vec<f32> = s.x[..b * w].iter().zip(&x_hat).map(|(x, h)| x - h).collect();
    let row_sq: Vec<f32> = err.par_chunks(w).map(|r| r.iter().map(|e| e * e).sum()).collect();
    let l2 = row_sq.iter().sum::<f32>() / b as f32;
    // Auxiliary loss: each row's k_aux largest dead-latent activations predict the residual.
    let n_dead = s.dead.iter().filter(|x| **x).count();
    let k_aux = s.k_aux.min(n_dead);
    let (mut auxk, mut aux_codes, mut g_ehat) = (0f32, None, None);
    if n_dead > 0 && k_aux > 0 && s.auxk_alpha > 0.0 {
        let aux: Codes = act
            .par_chunks(m)
            .map(|row| {
                let mut dead: Vec<(u32, f32)> = row
                    .iter()
                    .enumerate()
                    .filter(|(l, a)| s.dead[*l] && **a > 0.0)
                    .map(|(l, a)| (l as u32, *a))
                    .collect();
                if dead.len() > k_aux {
                    dead.select_nth_unstable_by(k_aux - 1, |p, q| q.1.total_cmp(&p.1));
                    dead.truncate(k_aux);
                }
                dead.sort_unstable_by_key(|p| p.0);
                dead
            })
            .collect();
        let e_hat = decode(&aux, s.w_dec, w, None);
        let mut mean = vec![0f32; w];
        for r in err.chunks_exact(w) {
            mean.iter_mut().zip(r).for_each(|(m, e)| *m += e);
        }
        mean.iter_mut().for_each(|v| *v /= b as f32);
        let diff: Vec<f32> = err.iter().zip(&e_hat).map(|(r, e)| r - e).collect();
        let aux_l2 = diff
            .chunks_exact(w)
            .map(|r| r.iter().map(|v| v * v).sum::<f32>())
            .sum::<f32>()
            / b as f32;
        let denom = err
            .chunks_exact(w)
            .map(|r| r.iter().zip(&mean).map(|(e, m)| (e - m) * (e - m)).sum::<f32>())
            .sum::<f32>()
            / b as f32;
        if denom > 0.0 && denom.is_finite() {
            auxk = aux_l2 / denom;
            let scale = -2.0 * s.auxk_alpha / (b as f32 * denom);
            g_ehat = Some(diff.iter().map(|v| scale * v).collect::<Vec<f32>>());
            aux_codes = Some(aux);
        }
    }
    // Backward. d l2 / d x_hat = −2 err / rows.
    let g_xhat: Vec<f32> = err.iter().map(|e| -2.0 * e / b as f32).collect();
    let d_sel = pair_gradients(&codes, &g_xhat, s.w_dec, w);
    let d_aux = match (&aux_codes, &g_ehat) {
        (Some(a), Some(g)) => Some(pair_gradients(a, g, s.w_dec, w)),
        _ => None,
    };
    // Decoder: selected pairs against g_xhat, auxiliary pairs against g_ehat.
    let sel_by_latent = by_latent(
        m,
        codes
            .iter()
            .enumerate()
            .flat_map(|(r, p)| p.iter().map(move |&(l, v)| (r, l, v))),
    );
    let mut grad_w_dec = accumulate(&sel_by_latent, &g_xhat, w);
    if let (Some(a), Some(g)) = (&aux_codes, &g_ehat) {
        let aux_by_latent = by_latent(
            m,
            a.iter()
                .enumerate()
                .flat_map(|(r, p)| p.iter().map(move |&(l, v)| (r, l, v))),
        );
        let extra = accumulate(&aux_by_latent, g, w);
        grad_w_dec.iter_mut().zip(extra).for_each(|(o, e)| *o += e);
    }
    let mut grad_b_dec = vec![0f32; w];
    for r in g_xhat.chunks_exact(w) {
        grad_b_dec.iter_mut().zip(r).for_each(|(o, g)| *o += g);
    }
    // Encoder: d pre for every pair (activations are positive there), summed where a latent is both selected
    // and used by the auxiliary loss.
    let mut dpre_pairs: Vec<(usize, u32, f32)> = Vec::new();
    for (r, pairs) in codes.iter().enumerate() {
        for (i, &(l, _)) in pairs.iter().enumerate() {
            dpre_pairs.push((r, l, d_sel[r][i]));
        }
        if let (Some(a), Some(da)) = (&aux_codes, &d_aux) {
            for (i, &(l, _)) in a[r].iter().enumerate() {
                dpre_pairs.push((r, l, da[r][i]));
            }
        }
    }
    let dpre_by_latent = by_latent(m, dpre_pairs.into_iter());
    let grad_b_enc: Vec<f32> = dpre_by_latent
        .iter()
        .map(|list| list.iter().map(|p| p.1).sum())
        .collect();
    let grad_w_enc_t = accumulate(&dpre_by_latent, &x_in, w); // latents × width, like w_enc_t
    if s.sae {
        // x_in = x − b_dec: the encoder path adds −Σ_l (Σ_rows dpre) · w_enc_t[l] to the bias gradient.
        for (l, g) in grad_b_enc.iter().enumerate() {
            if *g != 0.0 {
                let enc = &s.w_enc_t[l * w..(l + 1) * w];
                grad_b_dec.iter_mut().zip(enc).for_each(|(o, e)| *o -= g * e);
            }
        }
    }
    let selected: usize = codes.iter().map(Vec::len).sum();
    let mut mean = vec![0f64; w];
    for r in s.x[..b * w].chunks_exact(w) {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += *v as f64);
    }
    mean.iter_mut().for_each(|v| *v /= b as f64);
    let centred: f64 = s.x[..b * w]
        .chunks_exact(w)
        .map(|r| r.iter().zip(&mean).map(|(v, m)| (*v as f64 - m).powi(2)).sum::<f64>())
        .sum();
    // The threshold learns from the cut of a full selection only (as the dense trainer does).
    let min_selected = cut.filter(|c| *c > 0.0);
    StepOutput {
        loss: l2 + s.auxk_alpha * auxk,
        l2,
        auxk,
        fve: if centred > 0.0 {
            1.0 - (l2 as f64 * b as f64 / centred) as f32
        } else {
            0.0
        },
        l0: selected as f32 / b as f32,
        fired: sel_by_latent.iter().map(|l| !l.is_empty()).collect(),
        min_selected,
        grad_w_enc_t,
        grad_b_enc,
        grad_w_dec,
        grad_b_dec,
    }
}
