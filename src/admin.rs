//! The admin listener: `/healthz` (the process is up), `/ready` (every listener is bound
//! and the proxy is not shutting down; 503 otherwise), `/metrics` (Prometheus text),
//! `/status` (JSON) and `/`, the live dashboard: one self-contained HTML page compiled
//! into the binary (no external assets), which polls `/status`.

use crate::body::Body;
use crate::metrics::Metrics;
use crate::snapshot::Shared;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

/// The dashboard page.
const DASHBOARD: &str = include_str!("admin/dashboard.html");

/// Serve admin requests on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, metrics: Arc<Metrics>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        let (tcp, _) = crate::net::accept(&listener).await;
        let (shared, metrics) = (shared.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (shared, metrics) = (shared.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(answer(&shared, &metrics, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(shared: &Shared, metrics: &Metrics, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/metrics" {
        let mut resp = crate::body::text(StatusCode::OK, metrics.render());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return resp;
    }
    if req.uri().path() == "/" {
        let mut resp = crate::body::text(StatusCode::OK, DASHBOARD);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return resp;
    }
    if req.uri().path() == "/status" {
        let mut resp = crate::body::text(StatusCode::OK, crate::status::status(shared).to_string());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    let (status, text) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/ready" if shared.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n"),
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    crate::body::text(status, text)
}
