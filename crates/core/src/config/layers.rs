//! Which layers a run caches or a dictionary reads: indices (negative from the end) or fractions of the depth,
//! resolved against a model's number of layers once it is known.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A layer to cache: an index (negative counts from the end) or a fraction of the depth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerSpec {
    Index(i64),
    Fraction(f64),
}

/// Resolves layer specs against a model's depth: fractions are `int(f * (num_layers - 1))` as in the seed,
/// negative indices count from the end. The result is sorted and without repeats.
pub fn resolve_layers(specs: &[LayerSpec], num_layers: usize) -> Result<Vec<i32>> {
    if specs.is_empty() {
        bail!("preprocessing.layers is empty: give layer indices or fractions, e.g. [0.5]");
    }
    let n = num_layers as i64;
    let mut out = Vec::new();
    for s in specs {
        let layer = match *s {
            LayerSpec::Index(i) if (-n..n).contains(&i) => i.rem_euclid(n),
            LayerSpec::Index(i) => bail!("layer {i} does not exist: the model has {num_layers} layers (0..{n})"),
            LayerSpec::Fraction(f) if (0.0..=1.0).contains(&f) => (f * (n - 1) as f64) as i64,
            LayerSpec::Fraction(f) => bail!("layer fraction {f} is outside [0, 1]"),
        };
        out.push(layer as i32);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_like_the_seed() {
        use LayerSpec::*;
        assert_eq!(resolve_layers(&[Fraction(0.5)], 26).unwrap(), vec![12]);
        assert_eq!(
            resolve_layers(&[Fraction(0.25), Fraction(0.5), Fraction(0.75), Fraction(1.0)], 4).unwrap(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(resolve_layers(&[Index(-1), Index(0), Index(0)], 4).unwrap(), vec![0, 3]);
        assert!(resolve_layers(&[Index(4)], 4)
            .unwrap_err()
            .to_string()
            .contains("has 4 layers"));
        assert!(resolve_layers(&[Fraction(1.5)], 4).is_err());
        assert!(resolve_layers(&[], 4).is_err());
    }
}
