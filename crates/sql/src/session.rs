//! Opens a DataFusion session on a cache directory and runs SQL text that may hold several statements.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use super::cache_info::CacheInfo;
use crate::tables::{RowTable, VectorTable, VectorTableKind};
use diffsql_core::cache::{CacheLayout, Table};

/// What SQL in a session may do beyond reading the cache's tables.
#[derive(Debug, Clone, Default)]
pub struct SqlAccess {
    /// No `COPY`, no external tables, no `INSERT`/`UPDATE`/`DELETE`: the session reads the cache and
    /// nothing else (the mode for servers and the dashboard's console).
    pub read_only: bool,
    /// Directories no statement may write into or define tables over, in any mode (the cache, results).
    pub protected: Vec<PathBuf>,
}

/// A session with every diffsql function and the cache's tables registered; `COPY` and external tables
/// work anywhere outside the cache directory.
pub fn open_session(cache_dir: &Path) -> Result<SessionContext> {
    open_session_with(
        cache_dir,
        SqlAccess {
            read_only: false,
            protected: vec![cache_dir.to_path_buf()],
        },
    )
}

/// A change every session's state gets before it is built: the cluster layer (`diffsql-cluster`) installs
/// one that runs the heavy stages of each query on workers. Sessions built before it is set keep running in
/// this process.
pub type StateHook = fn(SessionStateBuilder) -> Result<SessionStateBuilder>;

static STATE_HOOK: std::sync::OnceLock<StateHook> = std::sync::OnceLock::new();

/// Installs the [`StateHook`] of this process (once: a second call is an error).
pub fn set_state_hook(hook: StateHook) -> Result<()> {
    STATE_HOOK
        .set(hook)
        .map_err(|_| anyhow::anyhow!("the session hook of this process is already set"))
}

/// [`open_session`] with the given access rules (the cache directory is always protected).
pub fn open_session_with(cache_dir: &Path, mut access: SqlAccess) -> Result<SessionContext> {
    let layout = CacheLayout::new(cache_dir);
    if !layout.exists()? {
        bail!(
            "the cache {} does not exist: run `diffsql preprocess` to make it, or pass --cache DIR (or set DIFFSQL_CACHE)",
            cache_dir.display()
        );
    }
    access.protected.push(cache_dir.to_path_buf());
    access.protected = access.protected.iter().map(|p| absolute(p)).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dictionaries = Arc::new(super::dictionary::DictionaryRegistry::new(layout.clone()));
    let config = SessionConfig::new()
        .with_target_partitions(threads)
        .with_information_schema(true)
        .with_extension(Arc::new(access))
        .with_extension(Arc::clone(&dictionaries));
    let mut state = SessionStateBuilder::new().with_config(config).with_default_features();
    if let Some(hook) = STATE_HOOK.get() {
        state = hook(state)?;
    }
    let ctx = SessionContext::new_with_state(state.build());
    diffsql_udfs::register_all(&ctx);
    super::dictionary::register(&ctx, dictionaries);
    let open = |kind| {
        VectorTable::open(layout.clone(), kind)
            .with_context(|| format!("cannot open the cache at {}", cache_dir.display()))
    };
    ctx.register_table("activations", Arc::new(open(VectorTableKind::Activations)?))?;
    ctx.register_table("acts", Arc::new(open(VectorTableKind::Acts)?))?;
    for table in [
        Table::Tokens,
        Table::Sequences,
        Table::Vocab,
        Table::LogitDiff,
        Table::LogitDiffTotals,
    ] {
        ctx.register_table(table.name(), Arc::new(RowTable::open(&layout, table)?))?;
    }
    ctx.register_udtf("cache_info", Arc::new(CacheInfo::new(layout)));
    ctx.register_udtf("nmf", Arc::new(super::nmf::NmfFunction));
    Ok(ctx)
}

/// Registers the functions that need model weights (`logit_lens`, `generate`, `steer`, `patchscope`,
/// `steer_search`), finding models through `configs` (on the device its `preprocessing.device` names).
pub fn register_model_functions(ctx: &SessionContext, configs: diffsql_core::config::ConfigDir) {
    register_model_functions_with(ctx, configs, Vec::new());
}

/// [`register_model_functions`] with `overrides` applied to every model's config (a run's or a server's:
/// `preprocessing.device=cuda`, `model.dtype=bfloat16`); their model and organism choices are the functions'.
pub fn register_model_functions_with(
    ctx: &SessionContext,
    configs: diffsql_core::config::ConfigDir,
    overrides: Vec<diffsql_core::config::Override>,
) {
    let sides = Arc::new(super::intervene::Sides::with_overrides(configs, overrides));
    super::intervene::register(ctx, &sides);
    ctx.register_udtf("logit_lens", Arc::new(super::logit_lens::LogitLens::with_sides(sides)));
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
        each(execute_statement(ctx, statement).await?)?;
        count += 1;
    }
    Ok(count)
}

/// Plans one parsed statement, checks it against the session's access rules, and runs it to the end: the one
/// path by which the shell, saved queries and diffing methods execute SQL.
pub async fn execute_statement(ctx: &SessionContext, statement: DFStatement) -> Result<StatementResult> {
    let plan = ctx.state().statement_to_plan(statement).await?;
    check_access(ctx, &plan)?;
    let df = ctx.execute_logical_plan(plan).await?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok(StatementResult { schema, batches })
}

/// `path` made absolute and free of `..`/symlinks as far as it exists (a path being created is resolved
/// through its nearest existing ancestor).
fn absolute(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path,
        }
    }
    let mut out = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.iter().rev() {
        out.push(name);
    }
    out
}

/// Refuses a planned statement the session's [`SqlAccess`] does not allow, naming what and why.
pub fn check_access(ctx: &SessionContext, plan: &LogicalPlan) -> Result<()> {
    // Read under the session's lock rather than cloning the whole session state per statement.
    let access = ctx
        .state_ref()
        .read()
        .config()
        .get_extension::<SqlAccess>()
        .unwrap_or_default();
    let protected_target = |url: &str| -> Option<PathBuf> {
        let path = absolute(Path::new(url.strip_prefix("file://").unwrap_or(url)));
        access.protected.iter().find(|p| path.starts_with(p)).map(|_| path)
    };
    let mut refusal: Option<String> = None;
    plan.apply(|node| {
        refusal = match node {
            LogicalPlan::Copy(copy) if access.read_only => Some(format!(
                "COPY ... TO '{}' is not allowed: this session is read-only",
                copy.output_url
            )),
            LogicalPlan::Copy(copy) => protected_target(&copy.output_url).map(|p| {
                format!(
                    "COPY ... TO '{}' would write into {} (the cache or results, which only diffsql writes); copy to a path outside it",
                    copy.output_url,
                    p.display()
                )
            }),
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(t)) if access.read_only => Some(format!(
                "CREATE EXTERNAL TABLE {} is not allowed: this session is read-only and reads only the cache's tables",
                t.name
            )),
            LogicalPlan::Ddl(DdlStatement::CreateExternalTable(t)) => t
                .locations
                .iter()
                .find_map(|l| protected_target(l))
                .map(|p| {
                    format!(
                        "CREATE EXTERNAL TABLE {} over {} is not allowed: the cache is read through its own tables (\\d lists them)",
                        t.name,
                        p.display()
                    )
                }),
            LogicalPlan::Dml(dml) if access.read_only => Some(format!(
                "{} on {} is not allowed: this session is read-only",
                dml.op, dml.table_name
            )),
            _ => None,
        };
        Ok(if refusal.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match refusal {
        Some(r) => bail!(r),
        None => Ok(()),
    }
}
