//! Opens a DataFusion session on a cache directory and runs SQL text that may hold several statements.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use super::cache_info::CacheInfo;
use crate::cache::tables::{listing_table, VectorTable, VectorTableKind};
use crate::cache::{CacheLayout, Table};

/// A session with every diffsql function and the cache's tables registered.
pub fn open_session(cache_dir: &Path) -> Result<SessionContext> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let config = SessionConfig::new()
        .with_target_partitions(threads)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    diffsql_udfs::register_all(&ctx);
    let layout = CacheLayout::new(cache_dir);
    let open = |kind| {
        VectorTable::open(layout.clone(), kind)
            .with_context(|| format!("cannot open the cache at {}", cache_dir.display()))
    };
    ctx.register_table("activations", Arc::new(open(VectorTableKind::Activations)?))?;
    ctx.register_table("acts", Arc::new(open(VectorTableKind::Acts)?))?;
    ctx.register_table("tokens", listing_table(&layout, Table::Tokens)?)?;
    ctx.register_table("sequences", listing_table(&layout, Table::Sequences)?)?;
    ctx.register_table("vocab", listing_table(&layout, Table::Vocab)?)?;
    ctx.register_udtf("cache_info", Arc::new(CacheInfo::new(layout)));
    Ok(ctx)
}

/// Registers the functions that need model weights (`logit_lens`), finding models through `configs`.
pub fn register_model_functions(ctx: &SessionContext, configs: crate::config::ConfigDir) {
    ctx.register_udtf("logit_lens", Arc::new(super::logit_lens::LogitLens::new(configs)));
}

/// The result of one statement.
#[derive(Debug)]
pub struct StatementResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl StatementResult {
    /// Rows over all batches.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Splits SQL text into statements and runs them in order, stopping at the first error.
/// `each` sees every result as soon as its statement finishes.
pub async fn run_statements(
    ctx: &SessionContext,
    sql: &str,
    mut each: impl FnMut(StatementResult) -> Result<()>,
) -> Result<usize> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    let mut count = 0;
    for statement in statements {
        let state = ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        each(StatementResult { schema, batches })?;
        count += 1;
    }
    Ok(count)
}
