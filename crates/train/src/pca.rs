//! PCA of ft − base: the covariance in one pass (products of row blocks in float32, summed in float64 around a
//! shift taken from the first block, which keeps the cancellation of E[xxᵀ] − μμᵀ small), then a symmetric
//! eigendecomposition in float64 (nalgebra).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// Running sums for the covariance of rows of length `d`.
pub struct Covariance {
    d: usize,
    rows: u64,
    shift: Vec<f32>,
    sum: Vec<f64>,
    products: Vec<f64>,
}

/// Principal components, largest variance first.
#[derive(Debug, Clone)]
pub struct Components {
    pub mean: Vec<f64>,
    /// components × d, row-major, unit norm; each oriented so that the mean projects positively on it.
    pub vectors: Vec<f32>,
    /// Variance along each component (divided by rows − 1, as numpy and sklearn).
    pub variance: Vec<f64>,
    /// Variance along each component over the total variance.
    pub ratio: Vec<f64>,
    pub rows: u64,
}

impl Covariance {
    pub fn new(d: usize) -> Self {
        Self {
            d,
            rows: 0,
            shift: Vec::new(),
            sum: vec![0.0; d],
            products: vec![0.0; d * d],
        }
    }

    /// Adds rows (rows × d, row-major).
    pub fn add(&mut self, values: &[f32]) -> Result<()> {
        let d = self.d;
        let n = values.len() / d;
        if n == 0 {
            return Ok(());
        }
        if self.shift.is_empty() {
            self.shift = (0..d)
                .map(|j| (values.iter().skip(j).step_by(d).map(|&v| v as f64).sum::<f64>() / n as f64) as f32)
                .collect();
        }
        let mut shifted = values.to_vec();
        diffsql_kernels::dense::subtract_from_rows(&mut shifted, &self.shift);
        diffsql_kernels::dense::add_rows(&mut self.sum, &shifted);
        // Blocks of at most 4096 rows keep the float32 sums short.
        for block in shifted.chunks(4096 * d) {
            let rows = block.len() / d;
            let y = Tensor::from_slice(block, (rows, d), &Device::Cpu)?;
            let p = y.t()?.matmul(&y)?.flatten_all()?.to_vec1::<f32>()?;
            for (acc, v) in self.products.iter_mut().zip(p) {
                *acc += v as f64;
            }
        }
        self.rows += n as u64;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The sample mean and covariance (d × d, divided by rows − 1).
    pub fn finish(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        let d = self.d;
        if self.rows < 2 {
            bail!("PCA needs at least 2 rows, got {}", self.rows);
        }
        let n = self.rows as f64;
        let mean_shifted: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] = (self.products[i * d + j] - n * mean_shifted[i] * mean_shifted[j]) / (n - 1.0);
            }
        }
        let mean = mean_shifted
            .iter()
            .zip(&self.shift)
            .map(|(m, s)| m + *s as f64)
            .collect();
        Ok((mean, cov))
    }

    /// The top `keep` components (0: all).
    pub fn components(&self, keep: usize) -> Result<Components> {
        let d = self.d;
        let (mean, cov) = self.finish()?;
        let matrix = nalgebra::DMatrix::from_row_slice(d, d, &cov);
        let eigen = nalgebra::SymmetricEigen::new(matrix);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
        let total: f64 = eigen.eigenvalues.iter().map(|v| v.max(0.0)).sum();
        let keep = if keep == 0 { d } else { keep.min(d) };
        let mut vectors = Vec::with_capacity(keep * d);
        let mut variance = Vec::with_capacity(keep);
        for &c in order.iter().take(keep) {
            let column = eigen.eigenvectors.column(c);
            // Oriented the way the data moves on average (ft − base: the finetune's mean shift), or, when
            // the mean is orthogonal to it, so that its largest-magnitude coordinate is positive.
            let along_mean: f64 = column.iter().zip(&mean).map(|(v, m)| v * m).sum();
            let mean_size: f64 = mean.iter().map(|m| m.abs()).sum();
            let largest = column
                .iter()
                .copied()
                .max_by(|a, b| a.abs().total_cmp(&b.abs()))
                .unwrap_or(1.0);
            let key = if along_mean.abs() > 1e-9 * mean_size {
                along_mean
            } else {
                largest
            };
            let sign = if key < 0.0 { -1.0 } else { 1.0 };
            vectors.extend(column.iter().map(|v| (v * sign) as f32));
            variance.push(eigen.eigenvalues[c].max(0.0));
        }
        let ratio = variance
            .iter()
            .map(|v| if total > 0.0 { v / total } else { 0.0 })
            .collect();
        Ok(Components {
            mean,
            vectors,
            variance,
            ratio,
            rows: self.rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covariance_of_a_known_set_matches_the_closed_form() {
        // Rows (1, 2), (3, 6), (5, 10) plus a large shift: variance of x is 4, of y 16, covariance 8.
        let mut c = Covariance::new(2);
        c.add(&[1001.0, 2.0, 1003.0, 6.0]).unwrap();
        c.add(&[1005.0, 10.0]).unwrap();
        let (mean, cov) = c.finish().unwrap();
        assert!((mean[0] - 1003.0).abs() < 1e-9 && (mean[1] - 6.0).abs() < 1e-9);
        for (got, want) in cov.iter().zip([4.0, 8.0, 8.0, 16.0]) {
            assert!((got - want).abs() < 1e-9, "{cov:?}");
        }
        let p = c.components(0).unwrap();
        // All the variance lies along (1, 2)/√5.
        assert!((p.ratio[0] - 1.0).abs() < 1e-9);
        assert!((p.vectors[0] - 1.0 / 5f32.sqrt()).abs() < 1e-6 && (p.vectors[1] - 2.0 / 5f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn too_few_rows_is_an_error() {
        let mut c = Covariance::new(2);
        c.add(&[1.0, 2.0]).unwrap();
        assert!(c.components(1).unwrap_err().to_string().contains("at least 2 rows"));
    }
}
