//! What a trained dictionary is measured by: its fraction of variance explained on held-out rows, and per latent
//! the activation frequency and size, decoder norms and cosine, and the latent scaling β of arXiv 2504.02922.

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::data::{RowKind, Split, TrainingSource};
use super::sparse_coder::{host_values, SparseCoder};
use super::store::{self, LatentColumns, Validation};
use diffsql_core::config::DictionaryKind;
use diffsql_kernels::dense::scale_sides;

/// FVE of inference codes on a held-out sample (None when the sample is empty).
pub(super) fn validation_fve(
    coder: &SparseCoder,
    sample: &[f32],
    width: usize,
    device: &Device,
) -> Result<Option<f32>> {
    let n = sample.len() / width;
    if n < 2 {
        return Ok(None);
    }
    let x = Tensor::from_slice(sample, (n, width), device)?;
    let x_hat = coder.decode(&coder.encode(&x)?)?;
    let err = (&x - x_hat)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
    let total = x
        .broadcast_sub(&x.mean_keepdim(0)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((total > 0.0).then(|| 1.0 - err / total))
}

/// The latents table and the validation figures, from one pass over the held-out rows: activation
/// frequency and size per latent, and for a crosscoder the decoder norms, their cosine and the latent
/// scaling β (closed form, arXiv 2504.02922) of every latent's ft decoder vector against each side's
/// reconstruction and error.
pub(super) fn latent_table(
    coder: &SparseCoder,
    source: &TrainingSource,
    kind: RowKind,
    scale: &[f32],
    max_tokens: usize,
) -> Result<(datafusion::arrow::array::RecordBatch, Validation)> {
    let spec = coder.spec;
    let (m, d, w) = (spec.latents, spec.d_model, spec.width());
    let device = coder.w_enc.device().clone();
    let mut count = vec![0u64; m];
    let mut sum = vec![0f64; m];
    let mut max = vec![0f32; m];
    let (mut err_sq, mut x_sq, mut tokens, mut active) = (0f64, 0f64, 0u64, 0f64);
    let mut x_sum = vec![0f64; w];
    // Latent scaling sums (crosscoder): Fᵀ·reconstruction and Fᵀ·error per side, and Σ f².
    let mut ft_recon: Vec<Option<Tensor>> = vec![None; spec.sides];
    let mut ft_error: Vec<Option<Tensor>> = vec![None; spec.sides];
    let mut f_sq = vec![0f64; m];
    // Held-out rows; with none held out (validation_fraction = 0), the training rows, so that the statistics
    // still describe the dictionary (the manifest's validation figures then say how many tokens they cover).
    let split = if source.rows(Split::Validation) > 0 {
        Split::Validation
    } else {
        Split::Train
    };
    let mut stream = source.stream(split, kind, None);
    let add = |acc: &mut Option<Tensor>, t: Tensor| -> Result<()> {
        *acc = Some(match acc.take() {
            None => t,
            Some(a) => (a + t)?,
        });
        Ok(())
    };
    while (tokens as usize) < max_tokens {
        let mut rows = stream.next_batch(4096.min(max_tokens - tokens as usize))?;
        if rows.is_empty() {
            break;
        }
        scale_sides(&mut rows, d, scale);
        let n = rows.len() / w;
        for row in rows.chunks_exact(w) {
            for (s, v) in x_sum.iter_mut().zip(row) {
                *s += *v as f64;
            }
            x_sq += row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        }
        let x = Tensor::from_vec(rows, (n, w), &device)?;
        let codes = coder.encode(&x)?;
        let x_hat = coder.decode(&codes)?;
        let err = (&x - &x_hat)?;
        err_sq += err.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        let values = codes.to_vec2::<f32>()?;
        for row in &values {
            for (j, &v) in row.iter().enumerate() {
                if v > 0.0 {
                    count[j] += 1;
                    sum[j] += v as f64;
                    max[j] = max[j].max(v);
                    f_sq[j] += (v as f64) * (v as f64);
                    active += 1.0;
                }
            }
        }
        if spec.sides == 2 {
            let codes_t = codes.t()?;
            let recon = codes.matmul(coder.w_dec.as_tensor())?;
            for s in 0..2 {
                add(
                    &mut ft_recon[s],
                    codes_t.matmul(&recon.narrow(1, s * d, d)?.contiguous()?)?,
                )?;
                add(
                    &mut ft_error[s],
                    codes_t.matmul(&err.narrow(1, s * d, d)?.contiguous()?)?,
                )?;
            }
        }
        tokens += n as u64;
    }
    let centred = x_sq - x_sum.iter().map(|s| s * s).sum::<f64>() / tokens.max(1) as f64;
    let validation = Validation {
        tokens,
        fve: if centred > 0.0 { 1.0 - err_sq / centred } else { 0.0 },
        l0: active / tokens.max(1) as f64,
        dead_fraction: count.iter().filter(|c| **c == 0).count() as f64 / m as f64,
    };
    let frequency: Vec<f64> = count.iter().map(|c| *c as f64 / tokens.max(1) as f64).collect();
    let mean_activation: Vec<f32> = count
        .iter()
        .zip(&sum)
        .map(|(c, s)| if *c > 0 { (*s / *c as f64) as f32 } else { 0.0 })
        .collect();
    let enc_t = host_values(&coder.w_enc.as_tensor().t()?.contiguous()?)?; // m × w
    let dec = host_values(coder.w_dec.as_tensor())?; // m × w
    let b_enc = host_values(coder.b_enc.as_tensor())?;
    let side_slice = |values: &[f32], s: usize| -> Vec<f32> {
        values
            .chunks_exact(w)
            .flat_map(|row| row[s * d..(s + 1) * d].to_vec())
            .collect()
    };
    let names = store::side_names(if spec.sides == 2 {
        DictionaryKind::Crosscoder
    } else {
        DictionaryKind::SaeDifference
    });
    let mut columns = LatentColumns::default().ids(m);
    for (s, side) in names.iter().enumerate() {
        columns = columns.vectors(&store::side_column("enc", side), side_slice(&enc_t, s), d)?;
    }
    for (s, side) in names.iter().enumerate() {
        columns = columns.vectors(&store::side_column("dec", side), side_slice(&dec, s), d)?;
    }
    columns = columns.f32("b_enc", b_enc);
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    // Decoder norms in the model's units (the decoder maps normalised codes to inputs multiplied by each
    // side's scale), so that a feature of the same size in both models has equal norms.
    let norms: Vec<Vec<f32>> = (0..spec.sides)
        .map(|s| {
            dec.chunks_exact(w)
                .map(|row| norm(&row[s * d..(s + 1) * d]) / scale[s])
                .collect()
        })
        .collect();
    if spec.sides == 2 {
        let (nb, nf) = (&norms[0], &norms[1]);
        let rel: Vec<f32> = nb
            .iter()
            .zip(nf)
            .map(|(b, f)| {
                let top = b.max(*f);
                if top > 0.0 {
                    ((b - f) / top + 1.0) / 2.0
                } else {
                    0.5
                }
            })
            .collect();
        let cosine: Vec<f32> = dec
            .chunks_exact(w)
            .zip(nb.iter().zip(nf))
            .map(|(row, (b, f))| {
                let dot: f32 = row[..d].iter().zip(&row[d..]).map(|(x, y)| x * y).sum();
                if *b > 0.0 && *f > 0.0 {
                    dot / (b * f)
                } else {
                    0.0
                }
            })
            .collect();
        columns = columns
            .f32("dec_norm_base", nb.clone())
            .f32("dec_norm_ft", nf.clone())
            .f32("rel_norm", rel)
            .f32("dec_cosine", cosine);
    } else {
        columns = columns.f32("dec_norm", norms[0].clone());
    }
    columns = columns
        .f64("frequency", frequency)
        .f32("mean_activation", mean_activation)
        .f32("max_activation", max);
    if spec.sides == 2 {
        let beta = |acc: &Option<Tensor>, s: usize, with_self: bool| -> Result<Vec<Option<f32>>> {
            let Some(acc) = acc else {
                return Ok(vec![None; m]);
            };
            let acc = host_values(acc)?; // m × d
            Ok((0..m)
                .map(|j| {
                    let dj = &dec[j * w + d..j * w + 2 * d]; // the ft decoder vector
                    let dj_side = &dec[j * w + s * d..j * w + (s + 1) * d];
                    let dd: f64 = dj.iter().map(|v| (*v as f64).powi(2)).sum();
                    let denom = dd * f_sq[j];
                    if denom <= 0.0 {
                        return None;
                    }
                    let mut num: f64 = acc[j * d..(j + 1) * d]
                        .iter()
                        .zip(dj)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum();
                    if with_self {
                        let own: f64 = dj_side.iter().zip(dj).map(|(a, b)| *a as f64 * *b as f64).sum();
                        num += f_sq[j] * own;
                    }
                    Some((num / denom) as f32)
                })
                .collect())
        };
        let recon_base = beta(&ft_recon[0], 0, false)?;
        let recon_ft = beta(&ft_recon[1], 1, false)?;
        let error_base = beta(&ft_error[0], 0, true)?;
        let error_ft = beta(&ft_error[1], 1, true)?;
        let ratio = |a: &[Option<f32>], b: &[Option<f32>]| -> Vec<Option<f32>> {
            a.iter()
                .zip(b)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) if *b != 0.0 => Some(a / b),
                    _ => None,
                })
                .collect()
        };
        let nu_recon = ratio(&recon_base, &recon_ft);
        let nu_error = ratio(&error_base, &error_ft);
        columns = columns
            .f32_opt("beta_recon_base", recon_base)
            .f32_opt("beta_recon_ft", recon_ft)
            .f32_opt("beta_error_base", error_base)
            .f32_opt("beta_error_ft", error_ft)
            .f32_opt("nu_recon", nu_recon)
            .f32_opt("nu_error", nu_error);
    }
    Ok((columns.batch()?, validation))
}
