//! The HTTP/2 wire path: hyper's server frames the streams, and each request runs the same
//! pipeline as the lane's: [`decide`], the request [`edit`](crate::proxy::edit)s (written as bytes for an
//! HTTP/1.1 backend, applied to the header map for an HTTP/2 one), `forward`, the response
//! edits. Streams are concurrent, so the response wait has a timer per stream.

use crate::body::{Body, RequestBody, Source, Stream};
use crate::error::ProxyError;
use crate::proxy::decide::{self, Decision, Target, View};
use crate::proxy::edit::{Scan, To, map_fields};
use crate::proxy::forward::{self, Outbound, Timer};
use crate::proxy::{self, ConnInfo, Proxy};
use crate::record::{Record, Text};
use http::header::{CONTENT_LENGTH, HOST, REFERER, USER_AGENT};
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::sync::Arc;

impl View for Parts {
    fn version(&self) -> Version {
        self.version
    }

    fn target(&self) -> Result<Target<'_>, ProxyError> {
        Ok(Target {
            authority: self.uri.authority().map(|a| a.as_str()),
            path: self.uri.path(),
            query: self.uri.query(),
        })
    }

    fn host_field(&self) -> (Option<&[u8]>, bool) {
        let mut hosts = self.headers.get_all(HOST).iter();
        (hosts.next().map(|h| h.as_bytes()), hosts.next().is_some())
    }

    fn content_length(&self) -> Option<u64> {
        self.headers
            .get(CONTENT_LENGTH)
            .and_then(|v| crate::wire::content_length(v.as_bytes()))
    }
}

/// Answer one HTTP/2 request.
pub async fn serve(proxy: &Proxy, info: &Arc<ConnInfo>, req: Request<Incoming>) -> Response<Body> {
    let mut record = Record::start(info);
    let (parts, body) = req.into_parts();
    record.method = Some(parts.method.clone());
    record.version = Version::HTTP_2;
    if record.wants_text() {
        record.text = Some(Box::new(text(&parts)));
    }
    let resp = match try_serve(proxy, info, parts, body, &mut record).await {
        Ok(Reply::Answer(answer, read_timeout)) => proxy::to_map(answer, read_timeout, &mut record),
        Ok(Reply::Redirect(location)) => proxy::redirect(location, &mut record),
        Err(e) => proxy::fail(e, &mut record),
    };
    with_record(resp, record)
}

/// How a request was answered, short of its response.
enum Reply {
    Redirect(http::HeaderValue),
    /// The backend's answer, and the pool's `timeouts.read` for its body.
    Answer(forward::Answer, std::time::Duration),
}

fn with_record(mut resp: Response<Body>, record: Record) -> Response<Body> {
    resp.body_mut().set_record(Box::new(record));
    resp
}

async fn try_serve(
    proxy: &Proxy,
    info: &Arc<ConnInfo>,
    parts: Parts,
    body: Incoming,
    record: &mut Record,
) -> Result<Reply, ProxyError> {
    let snap = proxy.snapshot();
    let mut routed = crate::router::Routed::default();
    let d = match decide::decide(&snap, info, &parts, &mut routed) {
        Ok(Decision::Redirect(location)) => return Ok(Reply::Redirect(location)),
        Ok(Decision::Forward(d)) => d,
        Err(e) => {
            record.refused(&snap, routed.0, &e);
            return Err(e);
        }
    };
    let scan = Scan::request(map_fields(&parts.headers));
    record.decided(&snap, &d, scan.client_id);
    let pool = &snap.pools[d.choice.pool];
    // The limits of the snapshot this request was decided on: a reload changes them for the
    // next request of a connection, not only for new connections.
    let mut stream = Stream::new(body, d.body_limit, snap.limits.client_body_timeout);
    let has_body = !stream.is_empty();
    let chunked = has_body && parts.content_length().is_none();
    let id = (!record.id_is_given()).then(|| record.id_bytes().to_vec());
    let edits = scan.edits(To {
        client_ip: info.client_ip.as_bytes(),
        tls: info.tls.is_some(),
        forwarded_host: d.raw_host,
        host: d.authority.map(str::as_bytes),
        request_id: id.as_deref(),
        chunked: chunked && !pool.connector.h2,
        length: parts.content_length(),
        upgrade: false,
        keep_forwarded_for: info.forwarded.keeps_list(),
        strip: d.strip(&snap),
        join_cookies: !pool.connector.h2,
    });
    let wait = Timer(pool.timeouts.response);
    let answer = if pool.connector.h2 {
        let map = edits.apply(&parts.headers);
        let mut req = Request::new(if has_body {
            RequestBody::Stream(stream)
        } else {
            RequestBody::Empty
        });
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = origin(&d)?;
        *req.headers_mut() = map;
        let replay = forward::Replay::of(&req);
        let out = Outbound::H2 {
            req: Some(Box::new(req)),
            replay,
        };
        forward::forward(pool, d.choice.backend, d.choice.key, out, wait, record).await?
    } else {
        let mut up = Vec::with_capacity(512);
        d.request_line(&parts.method, &mut up);
        edits.write(|| map_fields(&parts.headers), None, &mut up);
        let out = Outbound::H1 {
            head: &up,
            body: has_body.then_some(&mut stream as &mut dyn Source),
            chunked,
            method: &parts.method,
            upgrade: None,
            client: (info.peer, info.local),
        };
        forward::forward(pool, d.choice.backend, d.choice.key, out, wait, record).await?
    };
    Ok(Reply::Answer(answer, pool.timeouts.read))
}

/// The origin-form target for an HTTP/2 backend (`upstream::h2` makes it absolute).
fn origin(d: &decide::Forward<'_>) -> Result<Uri, ProxyError> {
    let pq = match d.query {
        Some(q) => format!("{}?{q}", d.path),
        None => d.path.to_string(),
    };
    Uri::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid request target"))
}

/// What the access log reads of a request.
fn text(parts: &Parts) -> Text {
    let value = |name| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    Text {
        host: parts
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| value(HOST))
            .unwrap_or_default(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string()),
        referer: value(REFERER),
        user_agent: value(USER_AGENT),
    }
}
