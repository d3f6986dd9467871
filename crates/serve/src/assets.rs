//! The dashboard's stylesheet and scripts, compiled into the binary so the pages work offline: uPlot (MIT,
//! vendored from the npm package uplot 1.6.32 with its licence) for charts, and our own small script.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::page::PageError;

/// (name, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("assets/uPlot.LICENSE"),
    ),
];

/// `GET /assets/{name}`.
pub async fn file(Path(name): Path<String>) -> Result<Response, PageError> {
    let (_, content_type, bytes) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| PageError::not_found(format!("there is no asset {name:?}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        *bytes,
    )
        .into_response())
}
