//! `diffsql worker`: an Arrow Flight server that executes the stages sessions send it, with every diffsql
//! function registered (the vector functions and aggregates, and the dictionary functions over the sending
//! session's cache) and diffsql's scans decodable.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext};

use crate::codec::DiffsqlCodec;
use crate::dictionaries::{register_for_stage, SessionCache};

/// The session a worker runs one stage in.
async fn worker_session(ctx: WorkerQueryContext) -> Result<SessionState, datafusion::error::DataFusionError> {
    let state = ctx
        .builder
        .with_distributed_user_codec(DiffsqlCodec)
        .with_distributed_option_extension_from_headers::<SessionCache>(&ctx.headers)?
        .build();
    let ctx = SessionContext::new_with_state(state);
    diffsql_udfs::register_all(&ctx);
    register_for_stage(&ctx);
    Ok(ctx.state())
}

/// Serves a worker on `listen` until `shutdown` resolves.
pub async fn serve_worker(listen: SocketAddr, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let worker = Worker::from_session_builder(worker_session);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: is the port in use? pick another with --listen"))?;
    let local = listener.local_addr()?;
    eprintln!("diffsql worker listening on http://{local}");
    tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
        .with_context(|| format!("the worker on {local} stopped"))
}
