//! `generate(side, prompt, max_new_tokens)`: a greedy continuation of a prompt by the base model or an organism.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use diffsql_model::generate::{generate, Sampling};
use diffsql_model::generation::{decode, options_for, prompt_ids};
use diffsql_model::LoadedModel;

use super::args::{check_arity, side_arg, side_function, string_arg, usize_arg};
use super::table::{ids_column, InterventionTable};
use super::Sides;

const NAME: &str = "generate";
const USAGE: &str = "generate(side, prompt, max_new_tokens)";

side_function!(
    /// `generate(side, prompt, max_new_tokens)`.
    Generate
);

/// prompt, text, token_ids.
fn schema() -> SchemaRef {
    let ids = DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
    Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("token_ids", ids, false),
    ]))
}

impl TableFunctionImpl for Generate {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let e = args.exprs();
        check_arity(NAME, e, 3, 3, USAGE)?;
        let model = side_arg(&self.sides, NAME, &e[0])?;
        let prompt = string_arg(NAME, &e[1], "prompt")?;
        let max_new_tokens = usize_arg(NAME, &e[2], "max_new_tokens")?;
        Ok(Arc::new(InterventionTable {
            function: NAME,
            schema: schema(),
            model,
            vector: None,
            run: Box::new(move |m, _| run(m, &prompt, max_new_tokens)),
        }))
    }
}

fn run(m: &LoadedModel, prompt: &str, max_new_tokens: usize) -> anyhow::Result<RecordBatch> {
    let options = options_for(m, max_new_tokens, Sampling::Greedy, Vec::new());
    let out = generate(&m.decoder, &[prompt_ids(&m.files, prompt, false)?], &options)?;
    let text = decode(m, &out[0], &options)?;
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![prompt])),
            Arc::new(StringArray::from(vec![text])),
            ids_column(&out),
        ],
    )?)
}
