//! The HTTP server: binding (loopback unless asked otherwise), the routes, and the time each response took to
//! build (a `Server-Timing` header, which `bench/serve_bench.py` reads).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::state::AppState;
use diffsql_core::config::ConfigDir;

/// What `diffsql serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub address: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    pub cache_dir: PathBuf,
    pub results_dir: PathBuf,
    pub configs: ConfigDir,
    /// The model the pages start with (the configured one).
    pub model: String,
    /// The overrides `diffsql serve` was given (model=…), applied when the chat loads an organism.
    pub overrides: Vec<diffsql_core::config::Override>,
    /// Longest a console statement may run.
    pub query_timeout: Duration,
    /// Open the dashboard in the desktop's browser once it listens.
    pub open: bool,
}

/// The routes of the dashboard over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(super::overview::page))
        .route("/results/{model}/{organism}/{method}", get(super::results::method_page))
        .route(
            "/results/{model}/{organism}/{method}/table/{table}",
            get(super::results::table_page),
        )
        .route(
            "/results/{model}/{organism}/{method}/plot/{file}",
            get(super::results::plot_file),
        )
        .route("/tokens", get(super::tokens::page))
        .route("/api/token", get(super::tokens::token_detail))
        .route("/sql", get(super::console::page).post(super::console::run))
        .route("/chat", get(super::chat::page))
        .route("/chat/stream", get(super::chat::stream))
        .route("/assets/{name}", get(super::assets::file))
        .route("/agent/{model}/{organism}/{method}", get(super::agents::page))
        .route("/v1/models", get(super::openai::models))
        .route(
            "/v1/chat/completions",
            axum::routing::post(super::openai::chat_completions),
        )
        .fallback(super::page::not_found)
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(state)
}

/// Adds `Server-Timing: app;dur=<ms>`: the time from the request to the response's headers.
async fn server_timing(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// Serves the dashboard until Ctrl-C. Prints the address it listens on (`listening on http://…`) first.
pub async fn serve(options: ServeOptions) -> Result<()> {
    if !options.address.is_loopback() {
        eprintln!(
            "warning: serving on {} makes the dashboard, its SQL console and the models reachable from other machines; it has no authentication",
            options.address
        );
    }
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(options.address, options.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{}: is another server using the port? pick another with --port N (0: any free port)",
                options.address, options.port
            )
        })?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}/");
    let open = options.open;
    let state = Arc::new(AppState::new(options)?);
    let warm = Arc::clone(&state);
    tokio::spawn(async move {
        let started = Instant::now();
        warm.warm_up().await;
        println!(
            "warmed up in {:.1} s (vocabulary, token indexes, cache files checked)",
            started.elapsed().as_secs_f64()
        );
    });
    println!("listening on {url} (Ctrl-C stops)");
    if open {
        open_browser(&url);
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the dashboard server stopped")?;
    Ok(())
}

/// Asks the desktop to open `url`; says how to open it by hand when it cannot.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let opened = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok();
    if !opened {
        eprintln!("could not start {opener}: open {url} in a browser");
    }
}
