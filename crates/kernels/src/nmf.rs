//! Non-negative matrix factorisation of a sparse matrix V (rows × columns, values ≥ 0) as V ≈ W·T, with W
//! (rows × rank) and T (rank × columns) non-negative, by the multiplicative updates that lower the Frobenius
//! loss ‖V − W·T‖² (β = 2, Lee & Seung 2001): the topics `diff_mining` finds among the tokens a finetune
//! promotes, with positions as rows, tokens as columns and each row's top-k logit differences as values
//! (the reference toolkit fits the same loss with torchnmf, 3 topics, 200 iterations).
//!
//! Every product touches only the stored entries (nnz · rank) or rank-sized matrices, so V is never dense:
//! 8192 samples × 64 tokens × top-100 is 52 M entries, 630 MB as (row, column, value).

use rayon::prelude::*;

/// What a factorisation refuses, as a one-line message.
pub type Result<T> = std::result::Result<T, String>;

/// Guards the updates' divisions (as scikit-learn's float32 machine epsilon).
const EPSILON: f64 = 1.1920929e-7;

/// A sparse non-negative matrix stored both by rows and by columns (each product is then parallel
/// without atomics: over rows for W's update, over columns for T's).
#[derive(Debug, Clone)]
pub struct SparseMatrix {
    rows: usize,
    columns: usize,
    row_start: Vec<usize>,
    row_entries: Vec<(u32, f32)>,
    column_start: Vec<usize>,
    column_entries: Vec<(u32, f32)>,
}

impl SparseMatrix {
    /// From (row, column, value) triplets; repeated positions are summed, zeros dropped. A value that is
    /// negative or not finite is an error.
    pub fn from_triplets(rows: usize, columns: usize, triplets: &[(u32, u32, f32)]) -> Result<Self> {
        let mut by_row: Vec<(u32, u32, f32)> = Vec::with_capacity(triplets.len());
        for &(r, c, v) in triplets {
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "NMF needs non-negative finite values, got {v} at row {r}, column {c}"
                ));
            }
            if r as usize >= rows || c as usize >= columns {
                return Err(format!("entry ({r}, {c}) is outside a {rows} × {columns} matrix"));
            }
            if v > 0.0 {
                by_row.push((r, c, v));
            }
        }
        by_row.sort_unstable_by_key(|&(r, c, _)| (r, c));
        by_row.dedup_by(|later, kept| {
            let same = later.0 == kept.0 && later.1 == kept.1;
            if same {
                kept.2 += later.2;
            }
            same
        });
        let start = |keys: &mut dyn Iterator<Item = u32>, n: usize| {
            let mut start = vec![0usize; n + 1];
            for k in keys {
                start[k as usize + 1] += 1;
            }
            for i in 0..n {
                start[i + 1] += start[i];
            }
            start
        };
        let row_start = start(&mut by_row.iter().map(|e| e.0), rows);
        let column_start = start(&mut by_row.iter().map(|e| e.1), columns);
        let mut column_entries = vec![(0u32, 0f32); by_row.len()];
        let mut next = column_start.clone();
        for &(r, c, v) in &by_row {
            column_entries[next[c as usize]] = (r, v);
            next[c as usize] += 1;
        }
        Ok(Self {
            rows,
            columns,
            row_start,
            row_entries: by_row.iter().map(|&(_, c, v)| (c, v)).collect(),
            column_start,
            column_entries,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Stored (non-zero) entries.
    pub fn nnz(&self) -> usize {
        self.row_entries.len()
    }

    fn row(&self, r: usize) -> &[(u32, f32)] {
        &self.row_entries[self.row_start[r]..self.row_start[r + 1]]
    }

    fn column(&self, c: usize) -> &[(u32, f32)] {
        &self.column_entries[self.column_start[c]..self.column_start[c + 1]]
    }

    /// ‖V‖² over the stored entries.
    fn squared_norm(&self) -> f64 {
        self.row_entries.iter().map(|&(_, v)| (v as f64) * (v as f64)).sum()
    }
}

/// V ≈ W·T.
#[derive(Debug, Clone)]
pub struct Factorisation {
    pub rank: usize,
    /// Rows × rank, row-major: each row's weight on each topic.
    pub w: Vec<f64>,
    /// Rank × columns, row-major: each topic's weight on each column.
    pub t: Vec<f64>,
    /// ‖V − W·T‖² after each iteration.
    pub loss: Vec<f64>,
}

/// The starting factors for a seed: uniform in [0, 2·√(mean(V)/rank)), the scale at which W·T has V's mean
/// (scikit-learn's "random" initialisation uses half-normal values at the same scale).
pub fn initial_factors(v: &SparseMatrix, rank: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let cells = (v.rows * v.columns).max(1) as f64;
    let mean: f64 = v.row_entries.iter().map(|&(_, x)| x as f64).sum::<f64>() / cells;
    let scale = 2.0 * (mean / rank.max(1) as f64).sqrt();
    let mut rng = SplitMix64(seed);
    let mut draw = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.unit() * scale).collect() };
    let w = draw(v.rows * rank);
    let t = draw(rank * v.columns);
    (w, t)
}

/// A small seeded generator (SplitMix64) for the starting factors.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Fits `rank` topics in `iterations` multiplicative updates from a seeded start.
pub fn fit(v: &SparseMatrix, rank: usize, iterations: usize, seed: u64) -> Result<Factorisation> {
    if rank == 0 {
        return Err("the number of topics must be at least 1".into());
    }
    if v.nnz() == 0 {
        return Err("the matrix has no positive entry to factorise".into());
    }
    let (w, t) = initial_factors(v, rank, seed);
    Ok(fit_from(v, rank, w, t, iterations))
}

/// The updates from given factors: per iteration T ← T ∘ (WᵀV) / (WᵀW·T + ε), then W ← W ∘ (V·Tᵀ) /
/// (W·T·Tᵀ + ε).
///
/// T is kept transposed (columns × rank) while fitting, so that the rank values of one column, which every
/// stored entry of W's update reads, share a cache line; scratch vectors are per rayon task, not per row. The
/// loss after each iteration comes almost free from W's update: its numerator V·Tᵀ is already the cross term's
/// factor (Σ_stored V·(W·T) = Σ_r W[r,:]·(V·Tᵀ)[r,:]), so no third pass over the entries is made.
pub fn fit_from(v: &SparseMatrix, rank: usize, mut w: Vec<f64>, t: Vec<f64>, iterations: usize) -> Factorisation {
    let (rows, columns) = (v.rows, v.columns);
    let norm = v.squared_norm();
    let mut loss = Vec::with_capacity(iterations);
    // Tᵀ: row c holds T[:, c].
    let mut tt = vec![0f64; columns * rank];
    for k in 0..rank {
        for c in 0..columns {
            tt[c * rank + k] = t[k * columns + c];
        }
    }
    let mut wtw = gram_of_rows(&w, rows, rank);
    for _ in 0..iterations {
        // T's update, column-parallel: numerator column c = Σ_r W[r,:]·V[r,c]; denominator = (WᵀW)·T[:,c].
        tt.par_chunks_mut(rank).enumerate().with_min_len(64).for_each_init(
            || vec![0f64; rank],
            |numerator, (c, tc)| {
                numerator.fill(0.0);
                for &(r, x) in v.column(c) {
                    let wr = &w[r as usize * rank..(r as usize + 1) * rank];
                    for (n, &wk) in numerator.iter_mut().zip(wr) {
                        *n += wk * x as f64;
                    }
                }
                let denominators: Vec<f64> = (0..rank)
                    .map(|k| (0..rank).map(|j| wtw[k * rank + j] * tc[j]).sum())
                    .collect();
                for ((tk, n), d) in tc.iter_mut().zip(numerator.iter()).zip(denominators) {
                    *tk *= n / (d + EPSILON);
                }
            },
        );
        // W's update, row-parallel: numerator row r = Σ_c V[r,c]·T[:,c]; denominator = W[r,:]·(T·Tᵀ).
        let ttt = gram_of_rows(&tt, columns, rank);
        let cross: f64 = w
            .par_chunks_mut(rank)
            .enumerate()
            .with_min_len(64)
            .map_init(
                || (vec![0f64; rank], vec![0f64; rank]),
                |(numerator, old), (r, wr)| {
                    numerator.fill(0.0);
                    for &(c, x) in v.row(r) {
                        let tc = &tt[c as usize * rank..(c as usize + 1) * rank];
                        for (n, &tk) in numerator.iter_mut().zip(tc) {
                            *n += x as f64 * tk;
                        }
                    }
                    old.copy_from_slice(wr);
                    let mut cross = 0f64;
                    for (k, wk) in wr.iter_mut().enumerate() {
                        let denominator: f64 = (0..rank).map(|j| old[j] * ttt[j * rank + k]).sum();
                        *wk *= numerator[k] / (denominator + EPSILON);
                        cross += *wk * numerator[k];
                    }
                    cross
                },
            )
            .sum();
        wtw = gram_of_rows(&w, rows, rank);
        let trace: f64 = (0..rank * rank).map(|i| wtw[i] * ttt[i]).sum();
        loss.push((norm - 2.0 * cross + trace).max(0.0));
    }
    let mut t = vec![0f64; rank * columns];
    for c in 0..columns {
        for k in 0..rank {
            t[k * columns + c] = tt[c * rank + k];
        }
    }
    Factorisation { rank, w, t, loss }
}

/// AᵀA of a row-major (n × rank) matrix.
fn gram_of_rows(a: &[f64], n: usize, rank: usize) -> Vec<f64> {
    let mut g = vec![0f64; rank * rank];
    for r in 0..n {
        let row = &a[r * rank..(r + 1) * rank];
        for i in 0..rank {
            for j in 0..rank {
                g[i * rank + j] += row[i] * row[j];
            }
        }
    }
    g
}

/// B·Bᵀ of a row-major (rank × n) matrix.
fn gram_of_columns(b: &[f64], rank: usize, n: usize) -> Vec<f64> {
    let mut g = vec![0f64; rank * rank];
    for i in 0..rank {
        for j in 0..rank {
            g[i * rank + j] = (0..n).map(|c| b[i * n + c] * b[j * n + c]).sum();
        }
    }
    g
}

/// ‖V − W·T‖² = ‖V‖² − 2 Σ_stored V·(W·T) + tr((WᵀW)(T·Tᵀ)), without forming W·T.
pub fn frobenius_loss(v: &SparseMatrix, w: &[f64], t: &[f64], rank: usize, v_norm: f64) -> f64 {
    let columns = v.columns;
    let cross: f64 = (0..v.rows)
        .into_par_iter()
        .map(|r| {
            let wr = &w[r * rank..(r + 1) * rank];
            v.row(r)
                .iter()
                .map(|&(c, x)| {
                    let wt: f64 = (0..rank).map(|k| wr[k] * t[k * columns + c as usize]).sum();
                    x as f64 * wt
                })
                .sum::<f64>()
        })
        .sum();
    let wtw = gram_of_rows(w, v.rows, rank);
    let ttt = gram_of_columns(t, rank, columns);
    let trace: f64 = (0..rank * rank).map(|i| wtw[i] * ttt[i]).sum();
    (v_norm - 2.0 * cross + trace).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three planted topics on disjoint columns: each row mixes them with random non-negative weights, so V
    /// has rank 3 exactly. The fit brings the loss near 0, never raises it, and each topic's heaviest
    /// columns are one planted group.
    #[test]
    fn recovers_planted_topics_and_the_loss_never_rises() {
        let (rows, groups, per_group) = (300usize, 3usize, 8usize);
        let columns = groups * per_group;
        let mut rng = SplitMix64(7);
        let mut triplets = Vec::new();
        for r in 0..rows {
            for g in 0..groups {
                let weight = if rng.unit() < 0.5 { rng.unit() as f32 * 3.0 } else { 0.0 };
                for i in 0..per_group {
                    let profile = 1.0 + i as f32 * 0.25;
                    if weight > 0.0 {
                        triplets.push((r as u32, (g * per_group + i) as u32, weight * profile));
                    }
                }
            }
        }
        let v = SparseMatrix::from_triplets(rows, columns, &triplets).unwrap();
        let f = fit(&v, groups, 300, 1).unwrap();
        let norm = v.squared_norm();
        assert!(f.loss.windows(2).all(|p| p[1] <= p[0] * (1.0 + 1e-9)), "the loss rose");
        assert!(
            f.loss.last().unwrap() / norm < 1e-3,
            "relative loss {}",
            f.loss.last().unwrap() / norm
        );
        let mut found = Vec::new();
        for k in 0..groups {
            let topic = &f.t[k * columns..(k + 1) * columns];
            let mut order: Vec<usize> = (0..columns).collect();
            order.sort_by(|&a, &b| topic[b].total_cmp(&topic[a]));
            let group = order[0] / per_group;
            assert!(
                order[..per_group].iter().all(|&c| c / per_group == group),
                "topic {k} mixes groups"
            );
            found.push(group);
        }
        found.sort_unstable();
        assert_eq!(found, vec![0, 1, 2]);
    }

    /// The loss from its closed form equals the dense computation.
    #[test]
    fn loss_equals_the_dense_residual() {
        let triplets = [(0, 0, 1.0), (0, 2, 2.0), (1, 1, 3.0), (2, 0, 0.5), (2, 2, 4.0)];
        let v = SparseMatrix::from_triplets(3, 3, &triplets).unwrap();
        let (w, t) = initial_factors(&v, 2, 3);
        let mut dense = 0f64;
        for r in 0..3 {
            for c in 0..3 {
                let x = triplets
                    .iter()
                    .find(|e| e.0 == r && e.1 == c)
                    .map_or(0.0, |e| e.2 as f64);
                let wt: f64 = (0..2).map(|k| w[r as usize * 2 + k] * t[k * 3 + c as usize]).sum();
                dense += (x - wt).powi(2);
            }
        }
        let closed = frobenius_loss(&v, &w, &t, 2, v.squared_norm());
        assert!((closed - dense).abs() < 1e-9, "{closed} vs {dense}");
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(SparseMatrix::from_triplets(2, 2, &[(0, 0, -1.0)]).is_err());
        assert!(SparseMatrix::from_triplets(2, 2, &[(0, 0, f32::NAN)]).is_err());
        assert!(SparseMatrix::from_triplets(2, 2, &[(2, 0, 1.0)]).is_err());
        let empty = SparseMatrix::from_triplets(2, 2, &[(0, 0, 0.0)]).unwrap();
        assert!(fit(&empty, 2, 10, 0).is_err());
        let v = SparseMatrix::from_triplets(2, 2, &[(0, 0, 1.0), (0, 0, 2.0)]).unwrap();
        assert_eq!(v.nnz(), 1);
        assert_eq!(v.row(0), &[(0, 3.0)]);
        assert!(fit(&v, 0, 10, 0).is_err());
    }
}

#[cfg(test)]
mod reference {
    use super::*;

    /// Equal to a dense numpy implementation of the same updates from the same start
    /// (`tools/nmf_reference.py`): factors within 1e-9 relative, loss per iteration within 1e-9 relative.
    #[test]
    fn updates_equal_numpy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/nmf/reference.json");
        let text = std::fs::read_to_string(path).expect("the fixture (python3 tools/nmf_reference.py)");
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let n = |k: &str| r[k].as_u64().unwrap() as usize;
        let floats = |k: &str| -> Vec<f64> { r[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        let triplets: Vec<(u32, u32, f32)> = r["triplets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e[0].as_u64().unwrap() as u32,
                    e[1].as_u64().unwrap() as u32,
                    e[2].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let v = SparseMatrix::from_triplets(n("rows"), n("columns"), &triplets).unwrap();
        let f = fit_from(&v, n("rank"), floats("w0"), floats("t0"), n("iterations"));
        let close = |got: &[f64], want: &[f64], what: &str| {
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{what}[{i}]: {a} vs {b}");
            }
        };
        close(&f.w, &floats("w"), "W");
        close(&f.t, &floats("t"), "T");
        close(&f.loss, &floats("loss"), "loss");
    }
}
