//! The dictionaries of one cache, loaded on first use (and again when one is retrained), checked against their
//! manifests: the weights the encoding functions apply and the tables `latents` and `training_curve` read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use diffsql_core::cache::CacheLayout;
use diffsql_core::config::DictionaryKind;
use diffsql_train::store::{self, DictionaryManifest};

/// A dictionary's weights, ready to encode.
pub struct LoadedDictionary {
    pub manifest: DictionaryManifest,
    pub latents: datafusion::arrow::array::RecordBatch,
    /// Encoder, width × latents, row-major (PCA: components × d).
    encoder: Vec<f32>,
    b_enc: Vec<f32>,
    /// Sum over sides of each latent's decoder norm, in training (normalised) units.
    decoder_norms: Vec<f32>,
}

/// The dictionaries of one cache, loaded on first use.
#[derive(Debug)]
pub struct DictionaryRegistry {
    layout: CacheLayout,
    loaded: Mutex<HashMap<String, Arc<LoadedDictionary>>>,
}

impl std::fmt::Debug for LoadedDictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedDictionary({})", self.manifest.id)
    }
}

impl DictionaryRegistry {
    pub fn new(layout: CacheLayout) -> Self {
        Self {
            layout,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// Where its cache is, as another process opens it (a worker, on this host or another): the store's
    /// URL, or the directory's absolute path.
    pub fn cache_location(&self) -> String {
        if self.layout.is_object() {
            return self.layout.location();
        }
        let root = self.layout.root();
        std::path::absolute(root)
            .unwrap_or_else(|_| root.to_path_buf())
            .display()
            .to_string()
    }

    /// Every complete dictionary of the cache.
    pub fn list(&self) -> anyhow::Result<Vec<DictionaryManifest>> {
        store::list(&self.layout)
    }

    /// The dictionary `spec` names (`model/organism/name`, `organism/name` or `name`), loaded.
    pub fn get(&self, spec: &str) -> anyhow::Result<Arc<LoadedDictionary>> {
        let manifest = store::resolve(&self.layout, spec)?;
        let key = format!("{}#{}", manifest.id, manifest.latents_xxh3);
        if let Some(d) = self.loaded.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(Arc::clone(d));
        }
        let latents = store::read_latents(&self.layout, &manifest)?;
        let (d, m) = (manifest.d_model, manifest.latents);
        let sides = store::side_names(manifest.kind);
        let (encoder, b_enc, decoder_norms) = match manifest.kind {
            DictionaryKind::Pca => (store::column_values(&latents, "dec")?, vec![0.0; m], vec![1.0; m]),
            _ => {
                let width = sides.len() * d;
                // Stored per side as latents × d; the encoder multiplies rows of width values.
                let mut encoder = vec![0f32; width * m];
                let mut norms = vec![0f32; m];
                for (s, side) in sides.iter().enumerate() {
                    let enc = store::column_values(&latents, &store::side_column("enc", side))?;
                    let dec = store::column_values(&latents, &store::side_column("dec", side))?;
                    for j in 0..m {
                        for i in 0..d {
                            encoder[(s * d + i) * m + j] = enc[j * d + i];
                        }
                        norms[j] += dec[j * d..(j + 1) * d].iter().map(|v| v * v).sum::<f32>().sqrt();
                    }
                }
                (encoder, store::scalar_values(&latents, "b_enc")?, norms)
            }
        };
        let loaded = Arc::new(LoadedDictionary {
            manifest,
            latents,
            encoder,
            b_enc,
            decoder_norms,
        });
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&loaded));
        Ok(loaded)
    }
}

impl LoadedDictionary {
    /// Sparse codes of `rows` (n × width values, width = sides × d_model, model units): each row's active
    /// latents and their activations, largest first.
    pub fn encode(&self, rows: &[f32]) -> anyhow::Result<Vec<Vec<(i32, f32)>>> {
        let m = &self.manifest;
        let (d, latents) = (m.d_model, m.latents);
        let width = m.scale.len() * d;
        let n = rows.len() / width;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut x: Vec<f32> = rows.to_vec();
        for row in x.chunks_exact_mut(width) {
            for (side, s) in row.chunks_exact_mut(d).zip(&m.scale) {
                side.iter_mut().for_each(|v| *v *= s);
            }
            if m.kind == DictionaryKind::SaeDifference {
                row.iter_mut().zip(&m.bias).for_each(|(v, b)| *v -= b);
            }
        }
        let device = candle_core::Device::Cpu;
        let xt = candle_core::Tensor::from_vec(x, (n, width), &device)?;
        let enc = candle_core::Tensor::from_slice(&self.encoder, (width, latents), &device)?;
        let pre = xt.matmul(&enc)?.flatten_all()?.to_vec1::<f32>()?;
        let threshold = m.threshold.unwrap_or(0.0).max(0.0);
        Ok(
            diffsql_kernels::active_codes(&pre, &self.b_enc, &self.decoder_norms, threshold)
                .into_iter()
                .map(|row| row.into_iter().map(|(l, a)| (l as i32, a)).collect())
                .collect(),
        )
    }

    /// Coordinates of `rows` (n × d) along the first `n_components` principal components, after removing
    /// the mean.
    pub fn project(&self, rows: &[f32], n_components: usize) -> anyhow::Result<Vec<f32>> {
        let d = self.manifest.d_model;
        let n = rows.len() / d;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mean: Vec<f32> = self.manifest.bias.clone();
        let mut centred = rows.to_vec();
        diffsql_kernels::dense::subtract_from_rows(&mut centred, &mean);
        let device = candle_core::Device::Cpu;
        let y = candle_core::Tensor::from_vec(centred, (n, d), &device)?;
        let c = candle_core::Tensor::from_slice(&self.encoder[..n_components * d], (n_components, d), &device)?;
        Ok(y.matmul(&c.t()?)?.flatten_all()?.to_vec1::<f32>()?)
    }
}
