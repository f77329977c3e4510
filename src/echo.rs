//! A small echo backend, for `switchyard echo`, the demo and the tests.
//!
//! Every request gets 200, an `x-backend: NAME` header and a JSON body
//! `{"backend", "method", "path", "headers"}` (path with query; repeated headers joined by
//! ", "). `/healthz` answers 200 `ok`. The request body is read and discarded.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Answer requests on `listener` as backend `name`, forever.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let (tcp, _) = crate::net::accept(&listener).await;
        let _ = tcp.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, name.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// The echo answer to `req`, as backend `name`.
pub async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let mut resp = if parts.uri.path() == "/healthz" {
        Response::new(Full::new(Bytes::from_static(b"ok\n")))
    } else {
        let mut headers: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in &parts.headers {
            let v = String::from_utf8_lossy(v.as_bytes());
            headers
                .entry(k.as_str())
                .and_modify(|all| {
                    all.push_str(", ");
                    all.push_str(&v);
                })
                .or_insert_with(|| v.into_owned());
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let body = serde_json::json!({
            "backend": &*name,
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
        });
        let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    *resp.status_mut() = StatusCode::OK;
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-backend", v);
    }
    Ok(resp)
}
