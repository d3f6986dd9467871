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
use crate::dictionaries::send_cache_location;
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
    Ok(distributed(send_cache_location(builder), workers))
}

/// Makes every session this process opens run on `workers`.
pub fn install(workers: Vec<Url>) -> Result<()> {
    WORKERS
        .set(workers)
        .map_err(|_| anyhow::anyhow!("the workers of this process are already set"))?;
    diffsql_model::error::set_error_rewriter(name_lost_workers);
    diffsql_sql::session::set_state_hook(hook)
}

/// A stream that broke mid-query does not say whose it was: when a query fails on a broken connection, the
/// workers that no longer accept one are named (each probed for up to a second).
fn name_lost_workers(line: &str) -> Option<String> {
    const BROKEN: [&str; 5] = [
        "h2 protocol error",
        "broken pipe",
        "connection reset",
        "stream closed",
        "transport error",
    ];
    let lower = line.to_lowercase();
    if !BROKEN.iter().any(|b| lower.contains(b)) {
        return None;
    }
    let lost: Vec<String> = WORKERS
        .get()?
        .iter()
        .filter(|url| !reachable(url))
        .map(|url| url.as_str().trim_end_matches('/').to_string())
        .collect();
    if lost.is_empty() {
        return None;
    }
    let (who, verb) = match lost.as_slice() {
        [one] => (format!("worker {one}"), "is"),
        many => (format!("workers {}", many.join(", ")), "are"),
    };
    Some(format!(
        "{who} stopped during the query and {verb} unreachable now; the query was abandoned and returned nothing: restart it with `diffsql worker --listen HOST:PORT`, or leave it out of --workers"
    ))
}

/// Whether a worker answers an HTTP/2 greeting within a second. A TCP connection alone proves nothing: the
/// kernel accepts connections into the listen backlog of a process that is still dying (writing a core).
fn reachable(url: &Url) -> bool {
    use std::io::{Read, Write};
    let Ok(addrs) = url.socket_addrs(|| None) else {
        return false;
    };
    let second = std::time::Duration::from_secs(1);
    addrs.iter().any(|a| {
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(a, second) else {
            return false;
        };
        // The client preface, then an empty SETTINGS frame; a live server answers with its SETTINGS.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let mut answer = [0u8; 9];
        stream.set_read_timeout(Some(second)).is_ok()
            && stream.write_all(&hello).is_ok()
            && stream.read(&mut answer).is_ok_and(|n| n > 0)
    })
}
