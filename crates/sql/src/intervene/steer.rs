//! `steer(side, prompt, vector, layer, alpha, max_new_tokens)`: greedy continuations with alpha × vector added
//! to the residual stream after `layer` at every position, one row per alpha.

use std::sync::Arc;

use anyhow::Context;
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use diffsql_model::generate::{generate, Sampling};
use diffsql_model::generation::{decode, options_for, prompt_ids};
use diffsql_model::{Edit, Intervention, LoadedModel, Positions};

use super::args::{check_arity, numbers_arg, side_arg, side_function, string_arg, usize_arg, vector_plan};
use super::table::{ids_column, InterventionTable};
use super::Sides;

const NAME: &str = "steer";
const USAGE: &str = "steer(side, prompt, vector, layer, alpha, max_new_tokens)";

side_function!(
    /// `steer(side, prompt, vector, layer, alpha, max_new_tokens)`.
    Steer
);

/// alpha, prompt, text, token_ids.
fn schema() -> SchemaRef {
    let ids = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
    Arc::new(Schema::new(vec![
        Field::new("alpha", DataType::Float64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("token_ids", ids, false),
    ]))
}

impl TableFunctionImpl for Steer {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let e = args.exprs();
        check_arity(NAME, e, 6, 6, USAGE)?;
        let model = side_arg(&self.sides, NAME, &e[0])?;
        let prompt = string_arg(NAME, &e[1], "prompt")?;
        let vector = vector_plan(NAME, &e[2])?;
        let layer = usize_arg(NAME, &e[3], "layer")?;
        let alphas = numbers_arg(NAME, &e[4], "alpha")?;
        let max_new_tokens = usize_arg(NAME, &e[5], "max_new_tokens")?;
        Ok(Arc::new(InterventionTable {
            function: NAME,
            schema: schema(),
            model,
            vector: Some(vector),
            run: Box::new(move |m, vectors| {
                let vector = vectors.first().context("steer has a vector")?;
                run(m, &prompt, vector, layer, &alphas, max_new_tokens)
            }),
        }))
    }
}

fn run(
    m: &LoadedModel,
    prompt: &str,
    vector: &[f32],
    layer: usize,
    alphas: &[f64],
    max_new_tokens: usize,
) -> anyhow::Result<RecordBatch> {
    let ids = prompt_ids(&m.files, prompt, false)?;
    let (mut texts, mut rows) = (Vec::new(), Vec::new());
    for alpha in alphas {
        let iv = Intervention {
            layer,
            vector: vector.to_vec(),
            scale: *alpha as f32,
            edit: Edit::Add,
            positions: Positions::All,
        };
        let options = options_for(m, max_new_tokens, Sampling::Greedy, vec![iv]);
        let out = generate(&m.decoder, std::slice::from_ref(&ids), &options)?;
        let row = out.into_iter().next().context("generation returned no sequence")?;
        texts.push(decode(m, &row, &options)?);
        rows.push(row);
    }
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Float64Array::from(alphas.to_vec())),
            Arc::new(StringArray::from(vec![prompt; alphas.len()])),
            Arc::new(StringArray::from(texts)),
            ids_column(&rows),
        ],
    )?)
}
