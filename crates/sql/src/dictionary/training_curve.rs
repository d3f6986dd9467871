//! `training_curve(name)`: the training curve a dictionary's manifest records (loss, FVE, L0 and dead latents
//! per step, held-out FVE).

use std::sync::Arc;

use datafusion::arrow::array::Float32Array;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::MemTable;
use diffsql_train::store::DictionaryManifest;

use super::encode::dictionary_arg;
use super::DictionaryRegistry;

/// `training_curve(name)`.
#[derive(Debug)]
pub struct TrainingCurve {
    registry: Arc<DictionaryRegistry>,
}

impl TrainingCurve {
    pub fn new(registry: Arc<DictionaryRegistry>) -> Self {
        Self { registry }
    }
}

impl TableFunctionImpl for TrainingCurve {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let d = dictionary_arg(&self.registry, "training_curve", args.exprs())?;
        let batch = curve_batch(&d.manifest)?;
        Ok(Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]])?))
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
