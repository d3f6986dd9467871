//! `patchscope(side, vector, layer, scales [, k])`: what the model reads in a vector: the top-k next tokens of
//! an identity prompt whose last position is patched with the vector, at each scale, for every row of the
//! vector argument.

use std::sync::Arc;

use datafusion::arrow::array::{Float32Array, Float64Array, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use diffsql_kernels::dense::{log_softmax, top_k};
use diffsql_model::generation::prompt_ids;
use diffsql_model::{Edit, Intervention, KvCache, LoadedModel, Positions};

use super::args::{check_arity, numbers_arg, side_arg, side_function, usize_arg, vector_plan};
use super::table::InterventionTable;
use super::Sides;

const NAME: &str = "patchscope";
const USAGE: &str = "patchscope(side, vector, layer, scales [, k])";

/// The prompt patchscope reads a vector with: the model continues an identity pattern at the patched `?`.
pub const PATCHSCOPE_PROMPT: &str = "cat -> cat\n1135 -> 1135\nhello -> hello\n?";

side_function!(
    /// `patchscope(side, vector, layer, scales [, k])`.
    Patchscope
);

/// item (the vector's row), scale, rank, token_id, token, prob.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item", DataType::Int64, false),
        Field::new("scale", DataType::Float64, false),
        Field::new("rank", DataType::Int32, false),
        Field::new("token_id", DataType::Int32, false),
        Field::new("token", DataType::Utf8, false),
        Field::new("prob", DataType::Float32, false),
    ]))
}

impl TableFunctionImpl for Patchscope {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let e = args.exprs();
        check_arity(NAME, e, 4, 5, USAGE)?;
        let model = side_arg(&self.sides, NAME, &e[0])?;
        let vector = vector_plan(NAME, &e[1])?;
        let layer = usize_arg(NAME, &e[2], "layer")?;
        let scales = numbers_arg(NAME, &e[3], "scales")?;
        let k = match e.get(4) {
            Some(k) => usize_arg(NAME, k, "k")?.clamp(1, 1000),
            None => 10,
        };
        Ok(Arc::new(InterventionTable {
            function: NAME,
            schema: schema(),
            model,
            vector: Some(vector),
            run: Box::new(move |m, vectors| {
                let batches = vectors
                    .iter()
                    .enumerate()
                    .map(|(item, v)| run(m, item as i64, v, layer, &scales, k))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(datafusion::arrow::compute::concat_batches(&schema(), &batches)?)
            }),
        }))
    }
}

/// For each scale, the top-k next tokens (as `item`'s rows) after [`PATCHSCOPE_PROMPT`] with its last token's residual stream
/// after `layer` replaced by the unit vector × scale × the prompt's mean residual norm there (BOS excluded).
fn run(
    m: &LoadedModel,
    item: i64,
    vector: &[f32],
    layer: usize,
    scales: &[f64],
    k: usize,
) -> anyhow::Result<RecordBatch> {
    use candle_core::{DType, Tensor};
    let d = &m.decoder;
    let hidden = d.spec().hidden;
    if vector.len() != hidden {
        anyhow::bail!(
            "the vector has {} values but the model's d_model is {hidden}",
            vector.len()
        );
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 {
        anyhow::bail!("the vector is zero: it has no direction to read");
    }
    let ids = prompt_ids(&m.files, PATCHSCOPE_PROMPT, false)?;
    let n = ids.len();
    let input = Tensor::from_vec(ids.clone(), (1, n), d.device())?;
    let mask = Tensor::ones((1, n), DType::U32, d.device())?;
    let x = d.forward(&input, &mask, &[layer], false)?.layers.remove(0);
    let skip = usize::from(m.files.special.bos_to_add().is_some());
    let norms: Vec<f32> = x.squeeze(0)?.sqr()?.sum(1)?.sqrt()?.to_dtype(DType::F32)?.to_vec1()?;
    let typical = norms[skip..].iter().sum::<f32>() / (n - skip).max(1) as f32;
    let unit: Vec<f32> = vector.iter().map(|v| v / norm).collect();
    let vocab = d.spec().vocab;
    let mut lp = vec![0f32; vocab];
    let (mut scale_col, mut rank, mut token_ids, mut tokens, mut probs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &scale in scales {
        let iv = Intervention {
            layer,
            vector: unit.clone(),
            scale: scale as f32 * typical,
            edit: Edit::Replace,
            positions: Positions::At(vec![n - 1]),
        };
        let h = d.forward_intervened(&input, &mask, &mut KvCache::new(d.num_layers()), &[iv])?;
        let logits: Vec<f32> = d
            .logits(&h.narrow(1, n - 1, 1)?)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        log_softmax(&logits, &mut lp);
        for (r, (id, l)) in top_k(&lp, k).into_iter().enumerate() {
            scale_col.push(scale);
            rank.push(r as i32 + 1);
            token_ids.push(id as i32);
            tokens.push(diffsql_model::data::token_text::token_text(&m.files.tokenizer, id));
            probs.push(l.exp());
        }
    }
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![item; scale_col.len()])),
            Arc::new(Float64Array::from(scale_col)),
            Arc::new(Int32Array::from(rank)),
            Arc::new(Int32Array::from(token_ids)),
            Arc::new(StringArray::from(tokens)),
            Arc::new(Float32Array::from(probs)),
        ],
    )?)
}
