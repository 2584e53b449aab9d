//! The web UI's files: a single page of plain ES modules, compiled into the binary so the one
//! `devgem` executable serves it with no build step. `DEVGEM_UI_DIR` serves the same names from a
//! directory instead, for working on the UI without rebuilding.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::sync::Arc;

/// Every file the UI has: its name, its built-in content and its media type.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", include_str!("../ui/index.html"), "text/html; charset=utf-8"),
    ("app.js", include_str!("../ui/app.js"), "text/javascript; charset=utf-8"),
    ("markdown.js", include_str!("../ui/markdown.js"), "text/javascript; charset=utf-8"),
    ("style.css", include_str!("../ui/style.css"), "text/css; charset=utf-8"),
    ("favicon.svg", include_str!("../ui/favicon.svg"), "image/svg+xml"),
];

/// Where the UI's files come from.
#[derive(Debug, Clone, Default)]
pub struct UiFiles {
    /// A directory to read them from at each request, instead of the built-in copies.
    dir: Option<Arc<PathBuf>>,
}

impl UiFiles {
    /// The built-in files, or `DEVGEM_UI_DIR`'s when that is set.
    pub fn from_env() -> Self {
        Self { dir: std::env::var_os("DEVGEM_UI_DIR").map(|d| Arc::new(PathBuf::from(d))) }
    }

    async fn read(&self, name: &str) -> Option<(String, &'static str)> {
        let (_, built_in, media_type) = FILES.iter().find(|(n, _, _)| *n == name)?;
        match &self.dir {
            // Only the names above are served, so a request can never leave the directory.
            Some(dir) => tokio::fs::read_to_string(dir.join(name)).await.ok().map(|text| (text, *media_type)),
            None => Some(((*built_in).to_owned(), *media_type)),
        }
    }
}

/// A strict policy: scripts and styles only from the page's own origin, no inline script, no
/// plugins, no framing. Replies and logs are rendered as text, and this is the second line.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn respond(file: Option<(String, &'static str)>) -> Response {
    let Some((body, media_type)) = file else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The page is small and changes with the binary: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`: the page.
pub async fn index(State(files): State<UiFiles>) -> Response {
    respond(files.read("index.html").await)
}

/// `GET /ui/{name}`: the page's scripts, styles and icon.
pub async fn asset(State(files): State<UiFiles>, Path(name): Path<String>) -> Response {
    respond(files.read(&name).await)
}
