//! The table an intervention call returns: its rows are computed when it is scanned (after the vector
//! argument's subquery runs), by the calling function's own run on the side's loaded model.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Array, ListArray, RecordBatch};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use diffsql_model::{one_line, LoadedModel};

/// What a call computes from the model and its vector argument's rows (none without a vector argument).
pub(super) type RunCall = Box<dyn Fn(&LoadedModel, &[Vec<f32>]) -> anyhow::Result<RecordBatch> + Send + Sync>;

/// One call's table.
pub(super) struct InterventionTable {
    pub function: &'static str,
    pub schema: SchemaRef,
    pub model: Arc<LoadedModel>,
    /// The vector argument, when the function takes one.
    pub vector: Option<LogicalPlan>,
    pub run: RunCall,
}

impl fmt::Debug for InterventionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterventionTable")
            .field("function", &self.function)
            .finish()
    }
}

/// Every vector of a one-column plan, executed now, in its order (none may be NULL, and there must be one).
async fn all_vectors(f: &str, state: &dyn Session, plan: &LogicalPlan) -> Result<Vec<Vec<f32>>> {
    let rows = crate::logit_lens::plan_vectors(f, state, plan).await?;
    if rows.is_empty() {
        return Err(DataFusionError::Execution(format!(
            "{f}: the vector subquery returned no rows"
        )));
    }
    rows.into_iter()
        .map(|r| {
            r.ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "{f}: the vector is NULL (an aggregate over no rows? check the subquery's filters)"
                ))
            })
        })
        .collect()
}

/// Token ids per row, as a list column.
pub(super) fn ids_column(rows: &[Vec<u32>]) -> ArrayRef {
    let values: Vec<i32> = rows.iter().flatten().map(|t| *t as i32).collect();
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Int32, true)),
        OffsetBuffer::from_lengths(rows.iter().map(Vec::len)),
        Arc::new(Int32Array::from(values)),
        None,
    ))
}

#[async_trait]
impl TableProvider for InterventionTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let f = self.function;
        let vectors = match &self.vector {
            Some(plan) => all_vectors(f, state, plan).await?,
            None => Vec::new(),
        };
        let batch = (self.run)(&self.model, &vectors)
            .map_err(|e| DataFusionError::Execution(format!("{f}: {}", one_line(&e))))?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}
