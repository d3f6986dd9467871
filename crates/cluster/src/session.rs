//! A session that runs its queries' heavy stages on workers: the worker list (`--workers`, `DIFFSQL_WORKERS`
//! or the config key `workers`) is parsed once, and every session this process opens gets datafusion-
//! distributed's planner, diffsql's codec and its task handlers.

use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use datafusion::common::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, WorkerResolver};
use url::Url;

use crate::codec::DiffsqlCodec;
use crate::tasks::{desired_task_count, scale_up_leaf_node};

/// The workers of this process's sessions.
static WORKERS: OnceLock<Vec<Url>> = OnceLock::new();

/// Parses a comma-separated worker list (`http://host:port`, or `host:port`), checking each is a URL with a
/// host and a port.
pub fn workers_from(list: &str) -> Result<Vec<Url>> {
    let mut urls = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_scheme = if item.contains("://") {
            item.to_string()
        } else {
            format!("http://{item}")
        };
        let url = Url::parse(&with_scheme)
            .with_context(|| format!("worker {item:?} is not host:port or http://host:port"))?;
        if url.host_str().is_none() || url.port().is_none() {
            bail!("worker {item:?} needs a host and a port, as in 127.0.0.1:50051");
        }
        urls.push(url);
    }
    if urls.is_empty() {
        bail!("--workers names no worker: give host:port,host:port");
    }
    Ok(urls)
}

/// The fixed worker list of a session.
#[derive(Clone)]
struct FixedWorkers(Vec<Url>);

impl WorkerResolver for FixedWorkers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.clone())
    }
}

/// A session state that runs its heavy stages on `workers`.
pub fn distributed(builder: SessionStateBuilder, workers: Vec<Url>) -> SessionStateBuilder {
    builder
        .with_distributed_worker_resolver(FixedWorkers(workers))
        .with_distributed_planner()
        .with_distributed_user_codec(DiffsqlCodec)
        .with_distributed_desired_task_count_handler(desired_task_count)
        .with_distributed_scale_up_leaf_node_handler(scale_up_leaf_node)
}

fn hook(builder: SessionStateBuilder) -> Result<SessionStateBuilder> {
    let workers = WORKERS.get().cloned().unwrap_or_default();
    Ok(distributed(builder, workers))
}

/// Makes every session this process opens run on `workers`.
pub fn install(workers: Vec<Url>) -> Result<()> {
    WORKERS
        .set(workers)
        .map_err(|_| anyhow::anyhow!("the workers of this process are already set"))?;
    diffsql_sql::session::set_state_hook(hook)
}
