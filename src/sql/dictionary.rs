//! Trained dictionaries in SQL: `latents(name)` reads a dictionary's latents table, `training_curve(name)` its
//! training curve, and `crosscoder_encode`,
//! `sae_encode` and `pca_project` apply one to vectors. Dictionaries are loaded from the cache once per
//! session (and again if one is retrained), checked against their manifests.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::arrow::array::{ArrayRef, Float32Array, Float32Builder, Int32Builder, ListBuilder, StructBuilder};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{exec_err, plan_err, DataFusionError, Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::Expr;
use diffsql_udfs::vector::{coerce_vector_arg, float32_item, Vectors};

use crate::cache::CacheLayout;
use crate::config::DictionaryKind;
use crate::train::store::{self, DictionaryManifest};

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

    /// Every complete dictionary of the cache.
    pub fn list(&self) -> anyhow::Result<Vec<DictionaryManifest>> {
        store::list(&self.layout)
    }

    /// The dictionary `spec` names (`model/organism/name`, `organism/name` or `name`), loaded.
    pub fn get(&self, spec: &str) -> anyhow::Result<Arc<LoadedDictionary>> {
        let manifest = store::resolve(&self.layout, spec)?;
        let key = format!("{}#{}", manifest.id, manifest.latents_xxh3);
        if let Some(d) = self.loaded.lock().expect("not poisoned").get(&key) {
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
            .expect("not poisoned")
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
        diffsql_udfs::kernels::subtract_from_rows(&mut centred, &mean);
        let device = candle_core::Device::Cpu;
        let y = candle_core::Tensor::from_vec(centred, (n, d), &device)?;
        let c = candle_core::Tensor::from_slice(&self.encoder[..n_components * d], (n_components, d), &device)?;
        Ok(y.matmul(&c.t()?)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// What a dictionary table function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictionaryTable {
    /// `latents(name)`: one row per latent or component.
    Latents,
    /// `training_curve(name)`: the training curve from the manifest.
    TrainingCurve,
}

impl DictionaryTable {
    fn name(self) -> &'static str {
        match self {
            Self::Latents => "latents",
            Self::TrainingCurve => "training_curve",
        }
    }
}

/// `latents(name)` and `training_curve(name)`.
#[derive(Debug)]
pub struct LatentsFunction {
    registry: Arc<DictionaryRegistry>,
    table: DictionaryTable,
}

impl LatentsFunction {
    pub fn new(registry: Arc<DictionaryRegistry>, table: DictionaryTable) -> Self {
        Self { registry, table }
    }
}

/// A training curve as a record batch.
fn curve_batch(m: &DictionaryManifest) -> Result<datafusion::arrow::array::RecordBatch> {
    use datafusion::arrow::array::UInt64Array;
    let c = &m.curve;
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        Field::new("step", DataType::UInt64, false),
        Field::new("tokens", DataType::UInt64, false),
        Field::new("loss", DataType::Float32, false),
        Field::new("fve", DataType::Float32, false),
        Field::new("l0", DataType::Float32, false),
        Field::new("dead", DataType::UInt64, false),
        Field::new("validation_fve", DataType::Float32, true),
    ]));
    Ok(datafusion::arrow::array::RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from_iter_values(c.iter().map(|p| p.step))),
            Arc::new(UInt64Array::from_iter_values(c.iter().map(|p| p.tokens))),
            Arc::new(Float32Array::from_iter_values(c.iter().map(|p| p.loss))),
            Arc::new(Float32Array::from_iter_values(c.iter().map(|p| p.fve))),
            Arc::new(Float32Array::from_iter_values(c.iter().map(|p| p.l0))),
            Arc::new(UInt64Array::from_iter_values(c.iter().map(|p| p.dead as u64))),
            Arc::new(Float32Array::from_iter(c.iter().map(|p| p.validation_fve))),
        ],
    )?)
}

fn literal_string(function: &str, e: &Expr) -> Result<String> {
    match super::args::literal_str(e) {
        Some(s) => Ok(s.to_string()),
        None => plan_err!("{function}: the dictionary name must be a string literal, got {e}"),
    }
}

impl TableFunctionImpl for LatentsFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let function = self.table.name();
        let exprs = args.exprs();
        if exprs.len() != 1 {
            return plan_err!(
                "{function}(name) takes 1 argument, got {}: e.g. {function}('crosscoder_L2')",
                exprs.len()
            );
        }
        let name = literal_string(function, &exprs[0])?;
        let d = self
            .registry
            .get(&name)
            .map_err(|e| DataFusionError::Plan(format!("{function}: {e:#}")))?;
        let batch = match self.table {
            DictionaryTable::Latents => d.latents.clone(),
            DictionaryTable::TrainingCurve => curve_batch(&d.manifest)?,
        };
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
    }
}

/// Which encoding function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncodeKind {
    Crosscoder,
    Sae,
    Pca,
}

impl EncodeKind {
    fn name(self) -> &'static str {
        match self {
            Self::Crosscoder => "crosscoder_encode",
            Self::Sae => "sae_encode",
            Self::Pca => "pca_project",
        }
    }
    fn dictionary(self) -> DictionaryKind {
        match self {
            Self::Crosscoder => DictionaryKind::Crosscoder,
            Self::Sae => DictionaryKind::SaeDifference,
            Self::Pca => DictionaryKind::Pca,
        }
    }
    /// Vector arguments before the name.
    fn vectors(self) -> usize {
        match self {
            Self::Crosscoder => 2,
            _ => 1,
        }
    }
}

/// `crosscoder_encode(base, ft, name)`, `sae_encode(v, name)`, `pca_project(v, name, n)`.
#[derive(Debug)]
pub struct EncodeFunction {
    kind: EncodeKind,
    registry: Arc<DictionaryRegistry>,
    signature: Signature,
}

impl EncodeFunction {
    pub fn new(kind: EncodeKind, registry: Arc<DictionaryRegistry>) -> Self {
        Self {
            kind,
            registry,
            signature: Signature::user_defined(Volatility::Stable),
        }
    }
}

impl PartialEq for EncodeFunction {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.registry, &other.registry)
    }
}
impl Eq for EncodeFunction {}
impl Hash for EncodeFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

/// The element of what the sparse encoders return: `{latent, value}`.
fn code_fields() -> Fields {
    Fields::from(vec![
        Field::new("latent", DataType::Int32, false),
        Field::new("value", DataType::Float32, false),
    ])
}

fn code_list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Struct(code_fields()), true)))
}

static DOCS: LazyLock<[Documentation; 3]> = LazyLock::new(|| {
    let section = || datafusion::logical_expr::DocSection {
        include: true,
        label: "Dictionary functions",
        description: Some(
            "Functions that apply a dictionary trained on the cache (diffing/method=crosscoder, sae_difference, pca).",
        ),
    };
    [
        Documentation::builder(
            section(),
            "The active latents of a crosscoder for a (base, ft) pair of vectors, largest first, as a list of \
             {latent, value}. Inputs are in the model's units; the dictionary's normalisation is applied.",
            "crosscoder_encode(base, ft, name)",
        )
        .with_sql_example(
            "```sql\n> SELECT pos, crosscoder_encode(base, ft, 'crosscoder_L2') FROM acts WHERE layer = 2 LIMIT 3;\n```",
        )
        .with_argument("base", "The base model's vector.")
        .with_argument("ft", "The organism's vector for the same token.")
        .with_argument("name", "A dictionary: 'name', 'organism/name' or 'model/organism/name'.")
        .build(),
        Documentation::builder(
            section(),
            "The active latents of an SAE trained on ft − base for a difference vector, largest first, as a \
             list of {latent, value}.",
            "sae_encode(v, name)",
        )
        .with_sql_example(
            "```sql\n> SELECT unnest(sae_encode(vec_sub(ft, base), 'sae_difference_L2')) FROM acts LIMIT 5;\n```",
        )
        .with_argument("v", "A difference vector ft − base.")
        .with_argument("name", "A dictionary: 'name', 'organism/name' or 'model/organism/name'.")
        .build(),
        Documentation::builder(
            section(),
            "Coordinates of a difference vector along the first n principal components of ft − base (mean removed).",
            "pca_project(v, name, n)",
        )
        .with_sql_example("```sql\n> SELECT pca_project(vec_sub(ft, base), 'pca_L2', 3) FROM acts LIMIT 5;\n```")
        .with_argument("v", "A difference vector ft − base.")
        .with_argument("name", "A PCA dictionary.")
        .with_argument("n", "How many components (at most those kept).")
        .build(),
    ]
});

impl ScalarUDFImpl for EncodeFunction {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let vectors = self.kind.vectors();
        let expected = vectors + if self.kind == EncodeKind::Pca { 2 } else { 1 };
        if arg_types.len() != expected {
            return plan_err!(
                "{} takes {expected} arguments, got {}: {}",
                self.name(),
                arg_types.len(),
                self.documentation().map_or("", |d| d.syntax_example.as_str())
            );
        }
        let mut out = Vec::with_capacity(expected);
        for (i, t) in arg_types[..vectors].iter().enumerate() {
            out.push(coerce_vector_arg(self.name(), i + 1, t)?);
        }
        out.push(DataType::Utf8);
        if self.kind == EncodeKind::Pca {
            out.push(DataType::Int64);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            EncodeKind::Pca => DataType::List(float32_item()),
            _ => code_list_type(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let function = self.name();
        let vectors = self.kind.vectors();
        let name = match &args.args[vectors] {
            ColumnarValue::Scalar(s) => match s {
                ScalarValue::Utf8(Some(n)) | ScalarValue::Utf8View(Some(n)) | ScalarValue::LargeUtf8(Some(n)) => {
                    n.clone()
                }
                _ => return exec_err!("{function}: the dictionary name must be a string, got {s}"),
            },
            ColumnarValue::Array(_) => {
                return exec_err!("{function}: the dictionary name must be a constant string, not a column")
            }
        };
        let dict = self
            .registry
            .get(&name)
            .map_err(|e| DataFusionError::Execution(format!("{function}: {e:#}")))?;
        let m = &dict.manifest;
        if m.kind != self.kind.dictionary() {
            return exec_err!(
                "{function}: dictionary {} is a {} dictionary; use {}",
                m.id,
                m.kind.name(),
                match m.kind {
                    DictionaryKind::Crosscoder => "crosscoder_encode(base, ft, name)",
                    DictionaryKind::SaeDifference => "sae_encode(v, name)",
                    DictionaryKind::Pca => "pca_project(v, name, n)",
                }
            );
        }
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args.args[..vectors]
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<_>>()?;
        let views: Vec<Vectors> = arrays
            .iter()
            .map(|a| Vectors::try_new(function, a.as_ref()))
            .collect::<Result<_>>()?;
        let d = m.d_model;
        let mut flat = Vec::with_capacity(rows * d * vectors);
        let mut valid = Vec::with_capacity(rows);
        let mut scratch = Vec::new();
        for i in 0..rows {
            let mut row_ok = true;
            let start = flat.len();
            for v in &views {
                match v.row(i, &mut scratch) {
                    Some(values) if values.len() == d => flat.extend_from_slice(values),
                    Some(values) => {
                        return exec_err!(
                            "{function}: a vector of length {} but dictionary {} reads vectors of length {d} (layer {} of model {})",
                            values.len(),
                            m.id,
                            m.layer,
                            m.id.model
                        )
                    }
                    None => row_ok = false,
                }
            }
            if !row_ok {
                flat.truncate(start);
            }
            valid.push(row_ok);
        }
        let result: ArrayRef = if self.kind == EncodeKind::Pca {
            let n = match &args.args[vectors + 1] {
                ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
                    ScalarValue::Int64(Some(n)) if n >= 1 && n as usize <= m.latents => n as usize,
                    other => {
                        return exec_err!(
                            "{function}: n must be between 1 and the {} components kept by {}, got {other}",
                            m.latents,
                            m.id
                        )
                    }
                },
                ColumnarValue::Array(_) => return exec_err!("{function}: n must be a constant"),
            };
            let values = dict
                .project(&flat, n)
                .map_err(|e| DataFusionError::Execution(format!("{function}: {e:#}")))?;
            let lengths: Vec<usize> = valid.iter().map(|ok| if *ok { n } else { 0 }).collect();
            Arc::new(datafusion::arrow::array::ListArray::try_new(
                float32_item(),
                OffsetBuffer::from_lengths(lengths),
                Arc::new(Float32Array::from(values)),
                Some(valid.iter().copied().collect()),
            )?)
        } else {
            let codes = dict
                .encode(&flat)
                .map_err(|e| DataFusionError::Execution(format!("{function}: {e:#}")))?;
            let mut builder = ListBuilder::new(StructBuilder::new(
                code_fields(),
                vec![Box::new(Int32Builder::new()), Box::new(Float32Builder::new())],
            ));
            let mut it = codes.into_iter();
            for ok in &valid {
                if !*ok {
                    builder.append(false);
                    continue;
                }
                let s = builder.values();
                for (latent, value) in it.next().expect("one per valid row") {
                    s.field_builder::<Int32Builder>(0).expect("latent").append_value(latent);
                    s.field_builder::<Float32Builder>(1).expect("value").append_value(value);
                    s.append(true);
                }
                builder.append(true);
            }
            Arc::new(builder.finish())
        };
        if args
            .args
            .iter()
            .take(vectors)
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?));
        }
        Ok(ColumnarValue::Array(result))
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(
            &DOCS[match self.kind {
                EncodeKind::Crosscoder => 0,
                EncodeKind::Sae => 1,
                EncodeKind::Pca => 2,
            }],
        )
    }
}

/// Registers `latents` and the encoding functions over `registry`'s cache.
pub fn register(ctx: &datafusion::prelude::SessionContext, registry: Arc<DictionaryRegistry>) {
    for table in [DictionaryTable::Latents, DictionaryTable::TrainingCurve] {
        ctx.register_udtf(
            table.name(),
            Arc::new(LatentsFunction::new(Arc::clone(&registry), table)),
        );
    }
    for kind in [EncodeKind::Crosscoder, EncodeKind::Sae, EncodeKind::Pca] {
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(EncodeFunction::new(
            kind,
            Arc::clone(&registry),
        )));
    }
}

/// The documentation of the dictionary functions, for `\df`.
pub fn documentation() -> Vec<&'static Documentation> {
    DOCS.iter().collect()
}
