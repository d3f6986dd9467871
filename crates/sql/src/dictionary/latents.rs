//! `latents(name)`: one row per latent (or principal component) of a trained dictionary, with its
//! decoder and encoder directions and statistics.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;

use super::encode::dictionary_arg;
use super::DictionaryRegistry;

/// `latents(name)`.
#[derive(Debug)]
pub struct Latents {
    registry: Arc<DictionaryRegistry>,
}

impl Latents {
    pub fn new(registry: Arc<DictionaryRegistry>) -> Self {
        Self { registry }
    }
}

impl TableFunctionImpl for Latents {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let d = dictionary_arg(&self.registry, "latents", args.exprs())?;
        let batch = d.latents.clone();
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
    }
}
