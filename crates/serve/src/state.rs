//! What every request shares: the folders, the templates, a read-only SQL session per request, and the
//! vocabularies and chat models loaded once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int32Type;
use datafusion::prelude::SessionContext;

use super::server::ServeOptions;
use diffsql_core::config::ConfigDir;
use diffsql_sql::{open_session_with, SqlAccess};

/// The templates, compiled into the binary.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("method.html", include_str!("templates/method.html")),
    ("table.html", include_str!("templates/table.html")),
    ("tokens.html", include_str!("templates/tokens.html")),
    ("sequences.html", include_str!("templates/sequences.html")),
    ("sql.html", include_str!("templates/sql.html")),
    ("chat.html", include_str!("templates/chat.html")),
    ("agent.html", include_str!("templates/agent.html")),
];

/// Shared by all requests.
pub struct AppState {
    pub cache_dir: PathBuf,
    pub results_dir: PathBuf,
    pub configs: ConfigDir,
    pub model: String,
    pub overrides: Vec<diffsql_core::config::Override>,
    pub query_timeout: Duration,
    pub templates: minijinja::Environment<'static>,
    vocabularies: Mutex<HashMap<String, Arc<Vec<String>>>>,
    pub chat_models: super::chat::ChatModels,
    /// The models `/v1/chat/completions` answers with, by side (`MODEL/base`, `MODEL/ORGANISM`), loaded once.
    pub sides: Arc<diffsql_sql::intervene::Sides>,
    pub token_indexes: super::token_index::TokenIndexes,
}

impl AppState {
    pub fn new(options: ServeOptions) -> Result<Self> {
        let mut templates = minijinja::Environment::new();
        for (name, source) in TEMPLATES {
            templates
                .add_template(name, source)
                .with_context(|| format!("dashboard template {name}"))?;
        }
        templates.add_filter("num", format_number);
        templates.add_global("version", env!("CARGO_PKG_VERSION"));
        Ok(Self {
            cache_dir: options.cache_dir,
            results_dir: options.results_dir,
            configs: options.configs.clone(),
            sides: Arc::new(diffsql_sql::intervene::Sides::with_overrides(
                options.configs.clone(),
                options.overrides.clone(),
            )),
            model: options.model,
            overrides: options.overrides,
            query_timeout: options.query_timeout,
            templates,
            vocabularies: Mutex::new(HashMap::new()),
            chat_models: Default::default(),
            token_indexes: Default::default(),
        })
    }

    /// A read-only session over the cache (opened per request, so a cache rewritten while the server runs is
    /// read as it is now); the results folder is protected too.
    pub fn session(&self) -> Result<SessionContext> {
        open_session_with(
            &self.cache_dir,
            SqlAccess {
                read_only: true,
                protected: vec![self.results_dir.clone()],
            },
        )
    }

    /// The text of every token id of `model` (from the cache's `vocab` table), read once.
    pub async fn vocabulary(&self, ctx: &SessionContext, model: &str) -> Result<Arc<Vec<String>>> {
        if let Some(v) = self
            .vocabularies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(model)
        {
            return Ok(Arc::clone(v));
        }
        let df = ctx
            .table("vocab")
            .await?
            .filter(datafusion::prelude::col("model").eq(datafusion::prelude::lit(model)))?
            .select_columns(&["token_id", "token"])?;
        let mut texts: Vec<String> = Vec::new();
        for batch in df.collect().await? {
            let ids = batch.column(0).as_primitive::<Int32Type>();
            let tokens = batch.column(1).as_string::<i32>();
            for i in 0..batch.num_rows() {
                let id = ids.value(i).max(0) as usize;
                if texts.len() <= id {
                    texts.resize(id + 1, String::new());
                }
                if tokens.is_valid(i) {
                    texts[id] = tokens.value(i).to_string();
                }
            }
        }
        let texts = Arc::new(texts);
        self.vocabularies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(model.to_string(), Arc::clone(&texts));
        Ok(texts)
    }

    /// Reads in the background what first page loads would otherwise wait for: every cached model's vocabulary and
    /// the row index of every tokens and activations partition (building one checks the partition's files against
    /// its manifest, once per process). Failures are left for the pages to report.
    pub async fn warm_up(&self) {
        let Ok(ctx) = self.session() else { return };
        let layout = diffsql_core::cache::CacheLayout::new(&self.cache_dir);
        let partitions = layout
            .partitions(diffsql_core::cache::Table::Tokens)
            .unwrap_or_default();
        let mut models: Vec<&str> = partitions.iter().map(|(k, _)| k.model.as_str()).collect();
        models.dedup();
        for model in models {
            let _ = self.vocabulary(&ctx, model).await;
        }
        let activations = layout
            .partitions(diffsql_core::cache::Table::Activations)
            .unwrap_or_default();
        for (key, _) in partitions.iter().chain(&activations) {
            let _ = tokio::task::block_in_place(|| self.token_indexes.partition(&layout, key.clone()));
        }
    }

    /// Renders a template with `context`.
    pub fn render(&self, name: &str, context: minijinja::Value) -> Result<String> {
        let template = self.templates.get_template(name)?;
        template
            .render(context)
            .with_context(|| format!("rendering the dashboard page {name}"))
    }
}

/// Numbers as people read them in tables: integers whole, others with 4 significant digits.
fn format_number(value: minijinja::Value) -> String {
    match f64::try_from(value.clone()) {
        Ok(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Ok(x) => super::page::short_float(x),
        Err(_) => value.to_string(),
    }
}
