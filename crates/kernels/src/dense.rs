//! The arithmetic behind every diffsql function, preprocessing's next-token statistics and the trainers, over
//! plain `f32` slices, written so the compiler vectorises it.
//!
//! Sums run in 32 independent `f32` lanes (four 8-wide registers: no add-latency chain, and more accurate
//! than one running sum), folded into `f64` at the end. KL divergence sums in `f64` throughout, since vocabularies are large.

/// Defines a public kernel that runs an AVX2 build of `$body` when the CPU has it (checked once, cached
/// by std) and the portable build otherwise. Both builds are the same Rust code; the AVX2 one lets the
/// compiler use 8-wide vectors, which doubles the throughput of the reductions below on x86-64.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident;) => {
        $(#[$meta])*
        #[inline]
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    #[target_feature(enable = "avx2")]
                    unsafe fn avx2($($arg: $ty),*) -> $ret {
                        $body($($arg),*)
                    }
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

const LANES: usize = 32;

/// Sums `term(a[i], b[i])` over both slices, which must have the same length.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for k in 0..LANES {
            acc[k] += term(x[k], y[k]);
        }
    }
    let tail: f64 = a_rest.iter().zip(b_rest).map(|(&x, &y)| term(x, y) as f64).sum();
    acc.iter().map(|&s| s as f64).sum::<f64>() + tail
}

multiversion! {
    /// Σ aᵢbᵢ.
    pub fn dot(a: &[f32], b: &[f32]) -> f64 = dot_body;
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f64 {
    lane_sum(a, b, |x, y| x * y)
}

multiversion! {
    /// ‖v‖₂.
    pub fn norm(v: &[f32]) -> f64 = norm_body;
}

#[inline(always)]
fn norm_body(v: &[f32]) -> f64 {
    lane_sum(v, v, |x, _| x * x).sqrt()
}

multiversion! {
    /// ‖b − a‖₂.
    pub fn distance(a: &[f32], b: &[f32]) -> f64 = distance_body;
}

#[inline(always)]
fn distance_body(a: &[f32], b: &[f32]) -> f64 {
    lane_sum(a, b, |x, y| (y - x) * (y - x)).sqrt()
}

multiversion! {
    /// a·b / (‖a‖‖b‖) in one pass; `None` when either vector is all zeros.
    pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> = cosine_body;
}

#[inline(always)]
fn cosine_body(a: &[f32], b: &[f32]) -> Option<f64> {
    debug_assert_eq!(a.len(), b.len());
    let mut ab = [0f32; LANES];
    let mut aa = [0f32; LANES];
    let mut bb = [0f32; LANES];
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for k in 0..LANES {
            ab[k] += x[k] * y[k];
            aa[k] += x[k] * x[k];
            bb[k] += y[k] * y[k];
        }
    }
    let fold = |l: [f32; LANES]| l.iter().map(|&s| s as f64).sum::<f64>();
    let (mut sab, mut saa, mut sbb) = (fold(ab), fold(aa), fold(bb));
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        sab += (x * y) as f64;
        saa += (x * x) as f64;
        sbb += (y * y) as f64;
    }
    if saa == 0.0 || sbb == 0.0 {
        return None;
    }
    Some(sab / (saa.sqrt() * sbb.sqrt()))
}

multiversion! {
    /// (Σ(bᵢ − aᵢ)², Σaᵢbᵢ, Σaᵢ², Σbᵢ²) in one pass over both vectors: every per-token statistic of a pair
    /// (`pair_stats`) from one read instead of four.
    pub fn pair_sums(a: &[f32], b: &[f32]) -> [f64; 4] = pair_sums_body;
}

#[inline(always)]
fn pair_sums_body(a: &[f32], b: &[f32]) -> [f64; 4] {
    // Four accumulators of 16 lanes each fill half the AVX2 registers, leaving room for the loads.
    const L: usize = 16;
    debug_assert_eq!(a.len(), b.len());
    let (mut dd, mut ab, mut aa, mut bb) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
    let (a_chunks, a_rest) = a.as_chunks::<L>();
    let (b_chunks, b_rest) = b.as_chunks::<L>();
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for k in 0..L {
            let d = y[k] - x[k];
            dd[k] += d * d;
            ab[k] += x[k] * y[k];
            aa[k] += x[k] * x[k];
            bb[k] += y[k] * y[k];
        }
    }
    let fold = |l: [f32; L]| l.iter().map(|&s| s as f64).sum::<f64>();
    let mut sums = [fold(dd), fold(ab), fold(aa), fold(bb)];
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        sums[0] += ((y - x) * (y - x)) as f64;
        sums[1] += (x * y) as f64;
        sums[2] += (x * x) as f64;
        sums[3] += (y * y) as f64;
    }
    sums
}

/// KL(p‖q) = Σ pᵢ (log pᵢ − log qᵢ) from two vectors of log-probabilities.
///
/// Terms with pᵢ = 0 (log pᵢ = −∞) contribute 0; a term with pᵢ > 0 and qᵢ = 0 makes the result +∞.
#[inline]
pub fn kl(log_p: &[f32], log_q: &[f32]) -> f64 {
    let mut sum = 0f64;
    for (&lp, &lq) in log_p.iter().zip(log_q) {
        if lp == f32::NEG_INFINITY {
            continue;
        }
        let lp = lp as f64;
        sum += lp.exp() * (lp - lq as f64);
    }
    sum
}

/// eˣ in `f32` without a libm call, so loops over it vectorise: 2ⁿ·P(r) with n = round(x·log₂e) and a
/// degree-6 polynomial on r = x − n·ln 2 (Cephes' `expf`), within 2 ulp of the exact value for
/// x ∈ [−87.3, 88.7]; x is clamped to that range (below it, the smallest normal ~1.2e-38 comes out, which
/// callers that want 0 there select away).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer with plain adds (no roundps needed).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.722_83);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// e^d for d = x − max ≤ 0, and exactly 0 where e^d underflows f32 (d < −87).
#[inline(always)]
fn shifted_exp(d: f32) -> f32 {
    let e = exp_f32(d);
    if d < -87.0 {
        0.0
    } else {
        e
    }
}

multiversion! {
    /// Log-softmax of `logits` into `log_p` and, when given, the probabilities into `p` — one exp per element
    /// (in f32, vectorised; the normaliser is summed in 32 lanes folded into f64), so KL can reuse the
    /// probabilities instead of exponentiating again.
    pub fn log_softmax_probs(logits: &[f32], log_p: &mut [f32], p: Option<&mut [f32]>) -> () = log_softmax_body;
}

#[inline(always)]
fn log_softmax_body(logits: &[f32], log_p: &mut [f32], p: Option<&mut [f32]>) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = logits.as_chunks::<LANES>();
    for c in chunks {
        for k in 0..LANES {
            lanes[k] = lanes[k].max(c[k]);
        }
    }
    let max = lanes.iter().chain(rest).copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = match p {
        Some(p) => {
            for (e, &x) in p.iter_mut().zip(logits) {
                *e = shifted_exp(x - max);
            }
            let sum = lane_sum(p, p, |e, _| e);
            let inv = (1.0 / sum) as f32;
            for v in p.iter_mut() {
                *v *= inv;
            }
            sum
        }
        None => lane_sum(logits, logits, |x, _| shifted_exp(x - max)),
    };
    let log_sum = sum.ln() as f32;
    for (o, &x) in log_p.iter_mut().zip(logits) {
        *o = (x - max) - log_sum;
    }
}

/// Log-softmax of `logits` into `out`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    log_softmax_probs(logits, out, None);
}

/// KL(p‖q) = Σ pᵢ (log pᵢ − log qᵢ) with the probabilities of p given (no exp), accumulated in f64.
pub fn kl_with_probs(p: &[f32], log_p: &[f32], log_q: &[f32]) -> f64 {
    let mut sum = 0f64;
    for ((&pi, &lp), &lq) in p.iter().zip(log_p).zip(log_q) {
        if pi > 0.0 {
            sum += pi as f64 * (lp as f64 - lq as f64);
        }
    }
    sum
}

/// The `k` most probable tokens, most probable first (ties by lower id): one pass keeping the best k seen.
pub fn top_k(log_p: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(log_p.len());
    if k > 0 && log_p.len() < 64 * k {
        top_k_by_selection(log_p, k)
    } else {
        top_k_by_insertion(log_p, k)
    }
}

/// [`top_k`] when k is a small share of the values: one pass keeping the best k seen.
fn top_k_by_insertion(log_p: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in log_p.iter().enumerate() {
        // A later id never displaces an equal value: ties keep the lower id.
        if best.len() == k && v.partial_cmp(&best[k - 1].1) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

/// out[i] += (b[i] − a[i]) in f64, the running sum behind `mean_diff`.
#[inline]
pub fn add_diff(out: &mut [f64], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o += (y - x) as f64;
    }
}

/// [`top_k`] when k is a large share of the values: a linear-time selection of the k best, then a sort of
/// those k only (keeping the best k seen would insert too often). NaN ranks below every number.
fn top_k_by_selection(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let better = |a: &(u32, f32), b: &(u32, f32)| {
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0))
    };
    let mut all: Vec<(u32, f32)> = values.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, better);
        all.truncate(k);
    }
    all.sort_unstable_by(better);
    all
}

/// out[i] = b[i] − a[i]. (Not `#[inline]`, like the two below: a caller in a crate built without
/// optimisation still gets this crate's optimised loop.)
pub fn diff_into(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = y - x;
    }
}

/// sum[i] += b[i] − a[i] in f64, and positive[i] += 1 where b[i] > a[i].
pub fn accumulate_diff(sum: &mut [f64], positive: &mut [u64], a: &[f32], b: &[f32]) {
    for (((s, c), &x), &y) in sum.iter_mut().zip(positive.iter_mut()).zip(a).zip(b) {
        *s += (y - x) as f64;
        *c += u64::from(y > x);
    }
}

/// The k largest values of `ft − base` (id, value, largest first) and the ids of the k smallest (smallest
/// first), with `scratch` (as long as the rows) as working space.
pub fn diff_extremes(base: &[f32], ft: &[f32], scratch: &mut [f32], k: usize) -> (Vec<(u32, f32)>, Vec<u32>) {
    diff_into(scratch, base, ft);
    let top = top_k(scratch, k);
    scratch.iter_mut().for_each(|x| *x = -*x);
    let bottom = top_k(scratch, k).into_iter().map(|(id, _)| id).collect();
    (top, bottom)
}

/// out[i] += v[i] in f64, the running sum behind `mean_vec`.
#[inline]
pub fn add(out: &mut [f64], v: &[f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += x as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_of_the_exact_value() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - exact) / exact).abs();
            worst = worst.max(rel);
            x += 0.000_37;
        }
        // One f32 ulp is 2⁻²³ ≈ 1.19e-7 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(shifted_exp(-200.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn log_softmax_matches_f64_reference() {
        let logits: Vec<f32> = (0..50_001).map(|i| ((i * 7919) % 1000) as f32 * 0.031 - 12.0).collect();
        let mut lp = vec![0f32; logits.len()];
        let mut p = vec![0f32; logits.len()];
        log_softmax_probs(&logits, &mut lp, Some(&mut p));
        let max = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
        let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
        for (i, &x) in logits.iter().enumerate() {
            let expect = x as f64 - max - z.ln();
            // f32 holds log p to ~1e-7 relative; the subtraction of ln Z rounds once more.
            assert!(
                (lp[i] as f64 - expect).abs() < 4e-7 * expect.abs().max(1.0),
                "log p at {i}"
            );
            assert!(
                (p[i] as f64 - expect.exp()).abs() < 1e-6 * expect.exp().max(1e-12) + 1e-12,
                "p at {i}"
            );
        }
        let mut lp2 = vec![0f32; logits.len()];
        log_softmax(&logits, &mut lp2);
        assert_eq!(lp, lp2);
    }

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    #[test]
    fn lane_sums_match_a_plain_f64_sum_for_every_tail_length() {
        for n in [0usize, 1, 7, 8, 9, 31, 1152] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 3.0).collect();
            let expect = naive_dot(&a, &b);
            assert!((dot(&a, &b) - expect).abs() <= 1e-5 * expect.abs().max(1.0), "n={n}");
            let d: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (y as f64 - x as f64).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((distance(&a, &b) - d).abs() <= 1e-5 * d.max(1.0), "n={n}");
            let [dd, ab, aa, bb] = pair_sums(&a, &b);
            assert!((dd.sqrt() - d).abs() <= 1e-5 * d.max(1.0), "n={n}");
            assert!((ab - expect).abs() <= 1e-5 * expect.abs().max(1.0), "n={n}");
            assert!((aa.sqrt() - norm(&a)).abs() <= 1e-5 * aa.sqrt().max(1.0), "n={n}");
            assert!((bb.sqrt() - norm(&b)).abs() <= 1e-5 * bb.sqrt().max(1.0), "n={n}");
        }
    }

    #[test]
    fn cosine_of_zero_vector_is_undefined() {
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), None);
        assert_eq!(cosine(&[2.0, 0.0], &[0.0, 3.0]), Some(0.0));
        assert!((cosine(&[1.0; 9], &[-2.0; 9]).unwrap() + 1.0).abs() < 1e-12);
    }

    #[test]
    fn kl_handles_zero_probabilities() {
        let ln = |x: f32| x.ln();
        // p = (1, 0), q = (0.5, 0.5): KL = ln 2
        let p = [0.0, f32::NEG_INFINITY];
        let q = [ln(0.5), ln(0.5)];
        assert!((kl(&p, &q) - std::f64::consts::LN_2).abs() < 1e-6);
        // q gives zero mass where p has some: infinite
        assert_eq!(kl(&q, &p), f64::INFINITY);
        assert_eq!(kl(&q, &q), 0.0);
    }

    #[test]
    fn log_softmax_closed_form() {
        let mut out = [0f32; 3];
        log_softmax(&[1.0, 2.0, 3.0], &mut out);
        // log(e^x / (e + e^2 + e^3))
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (o, x) in out.iter().zip([1.0f64, 2.0, 3.0]) {
            assert!((*o as f64 - (x - z)).abs() < 1e-6);
        }
        // Large logits do not overflow.
        log_softmax(&[1000.0, 1000.0], &mut out[..2]);
        assert!((out[0] as f64 - 0.5f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_probs_and_kl_agree_with_the_exp_form() {
        let a = [0.3f32, -1.2, 2.5, 0.0, 7.0];
        let b = [1.0f32, 0.5, -0.5, 2.0, 6.0];
        let (mut la, mut pa, mut lb) = ([0f32; 5], [0f32; 5], [0f32; 5]);
        log_softmax_probs(&a, &mut la, Some(&mut pa));
        log_softmax(&b, &mut lb);
        assert!((pa.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-6);
        for (p, l) in pa.iter().zip(&la) {
            assert!((p.ln() - l).abs() < 1e-5);
        }
        assert!((kl_with_probs(&pa, &la, &lb) - kl(&la, &lb)).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_and_breaks_ties() {
        let lp = [-3.0, -1.0, -2.0, -1.0, -5.0];
        assert_eq!(top_k(&lp, 3), vec![(1, -1.0), (3, -1.0), (2, -2.0)]);
        assert_eq!(top_k(&lp, 10).len(), 5);
        assert!(top_k(&lp, 0).is_empty());
        // Both strategies agree, ties (values on a coarse grid) broken by the lower id.
        let values: Vec<f32> = (0..3000u32).map(|i| ((i * 7919) % 97) as f32 * 0.5).collect();
        for k in [1, 5, 47, 100, 2999, 3000] {
            assert_eq!(
                top_k_by_selection(&values, k),
                top_k_by_insertion(&values, k),
                "k = {k}"
            );
        }
    }
}

/// The `n`-th largest positive value of `values` (1-based), or None when at most `n` values are positive:
/// the cut of a batch-level top-k over activations (BatchTopK).
pub fn nth_largest_positive(values: &[f32], n: usize) -> Option<f32> {
    let mut positive: Vec<f32> = values.iter().copied().filter(|v| *v > 0.0).collect();
    if n == 0 || positive.len() <= n {
        return None;
    }
    let (_, nth, _) = positive.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
    Some(*nth)
}

/// For each row of `width` values, its `n`-th largest value (1-based, `n <= width`).
pub fn row_nth_largest(values: &[f32], width: usize, n: usize) -> Vec<f32> {
    let mut row = Vec::with_capacity(width);
    values
        .chunks_exact(width)
        .map(|r| {
            row.clear();
            row.extend_from_slice(r);
            *row.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a)).1
        })
        .collect()
}

/// Adds every row of `rows` (rows of `out.len()` values) to `out` in f64. Not inlined, so that callers in
/// unoptimised builds get this crate's optimised loop.
#[inline(never)]
pub fn add_rows(out: &mut [f64], rows: &[f32]) {
    for r in rows.chunks_exact(out.len()) {
        add(out, r);
    }
}

/// Subtracts `row` from every row of `rows` (rows of `row.len()` values).
pub fn subtract_from_rows(rows: &mut [f32], row: &[f32]) {
    for r in rows.chunks_exact_mut(row.len()) {
        r.iter_mut().zip(row).for_each(|(v, s)| *v -= s);
    }
}

/// Multiplies each `d`-long side of every row (rows of `scale.len() × d` values) by that side's scale.
pub fn scale_sides(rows: &mut [f32], d: usize, scale: &[f32]) {
    for row in rows.chunks_exact_mut(d * scale.len()) {
        for (side, s) in row.chunks_exact_mut(d).zip(scale) {
            side.iter_mut().for_each(|v| *v *= s);
        }
    }
}

#[cfg(test)]
mod selection_tests {
    use super::*;

    #[test]
    fn nth_largest_positive_ignores_zeros_and_small_sets() {
        assert_eq!(nth_largest_positive(&[0.0, 3.0, 1.0, 2.0, -1.0], 2), Some(2.0));
        assert_eq!(nth_largest_positive(&[0.0, 3.0, 1.0], 2), None);
        assert_eq!(row_nth_largest(&[1.0, 5.0, 3.0, 9.0, 7.0, 8.0], 3, 2), vec![3.0, 8.0]);
        let mut rows = vec![1.0, 1.0, 2.0, 2.0];
        scale_sides(&mut rows, 1, &[2.0, 3.0]);
        assert_eq!(rows, vec![2.0, 3.0, 4.0, 6.0]);
    }
}
