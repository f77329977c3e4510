//! The admin listener: `/healthz` (the process is up) and `/ready` (every listener is
//! bound and the proxy is not shutting down; 503 otherwise).
// TODO(#metrics): /metrics and /status.

use crate::body::Body;
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

/// Serve admin requests on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin listening");
    }
    loop {
        let (tcp, _) = crate::net::accept(&listener).await;
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let (status, text) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/ready" if shared.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ready\n"),
        "/ready" => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    crate::body::text(status, text)
}
