//! Forwarding: the one retry policy, over either upstream client.
//!
//! [`forward`] tries the decided backend, then the pool's next picks, while the request
//! could not be delivered, up to the pool's `retries` (SPEC "Health"): a connect failure
//! (refused, timed out) always goes on to another backend; a request that failed before any
//! byte of it was written likewise; an idempotent request whose whole message the proxy
//! still holds (GET, HEAD, OPTIONS without a streamed body) also goes again when the
//! connection broke before the response head. A failure on a pooled connection that only
//! met the backend's close of it is not the backend's fault: the request goes again, to
//! the same backend if need be, uncounted (as nginx does). Nothing else is replayed, and a
//! response timeout is final (504). A backend is never tried twice for one request, except
//! after such a stale close.
//!
//! The response wait is timed by whoever called: the lane's connection clock (one exchange
//! at a time, no timer per request), or a timer per HTTP/2 stream ([`Timer`]).

use crate::body::{RequestBody, Source};
use crate::clock::ConnClock;
use crate::config::Balance;
use crate::error::{ConnectError, ProxyError, UpstreamError};
use crate::health;
use crate::pool::{InFlight, Pick, Pool, Tried};
use crate::record::Record;
use crate::upstream::h1::{self, Exchange, Wait};
use crate::upstream::{Failure, h2};
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// A request as the chosen upstream client sends it.
pub enum Outbound<'a> {
    /// To an HTTP/1.1 backend: the head in wire form (with any body that came along) and
    /// the rest of the body, if any.
    H1 {
        head: &'a [u8],
        body: Option<&'a mut dyn Source>,
        chunked: bool,
        method: &'a Method,
        upgrade: Option<&'a [u8]>,
        /// Who the request is for, for a `proxy_protocol` pool's header.
        client: crate::upstream::ClientAddrs,
    },
    /// To an HTTP/2 backend, through hyper's client. Boxed: the common HTTP/1.1 case
    /// should not move a request head around for nothing.
    H2 {
        req: Option<Box<Request<RequestBody>>>,
        /// What it takes to send a bodiless request again.
        replay: Option<Box<Replay>>,
    },
}

/// The backend's answer.
pub enum Inbound {
    H1 {
        head: h1::Head,
        conn: Box<h1::Conn>,
    },
    /// Boxed, as [`Outbound::H2`].
    H2(Box<Response<Incoming>>),
}

/// A response, where it came from, and the in-flight count it holds.
pub struct Answer {
    pub inbound: Inbound,
    pub in_flight: InFlight,
}

/// The response wait timed by the lane's connection clock: its driver's timer sets the
/// late flag (see [`ConnClock::expect_response`]).
#[derive(Clone, Copy)]
pub struct Clocked<'a>(pub &'a ConnClock, pub Duration);

/// The response wait timed by a timer of its own.
#[derive(Clone, Copy)]
pub struct Timer(pub Duration);

impl Wait for Clocked<'_> {
    async fn head<F: Future>(self, head: F) -> Option<F::Output> {
        let Clocked(clock, timeout) = self;
        clock.expect_response(timeout);
        let _arrived = Arrived(clock);
        let mut head = pin!(head);
        poll_fn(|cx| match clock.response_late() {
            true => Poll::Ready(None),
            false => head.as_mut().poll(cx).map(Some),
        })
        .await
    }
}

impl Wait for Timer {
    async fn head<F: Future>(self, head: F) -> Option<F::Output> {
        tokio::time::timeout(self.0, head).await.ok()
    }
}

/// Ends the wait for a response head on the connection's clock, however the wait ends.
struct Arrived<'a>(&'a ConnClock);

impl Drop for Arrived<'_> {
    fn drop(&mut self) {
        self.0.response_arrived();
    }
}

/// What the policy says after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Again {
    /// A pooled connection the backend had closed: go again, uncounted.
    Stale,
    /// Go on to the next backend, counted against `retries`.
    Next,
    /// The request was delivered: never replayed.
    No,
}

/// The retry policy. `sent`: some of the request reached the wire; `replayable`: the proxy
/// holds the whole request and it is idempotent; `reused`: the connection came from the
/// pool.
fn again(sent: bool, replayable: bool, reused: bool, error: &UpstreamError) -> Again {
    if reused && (!sent || (replayable && matches!(error, UpstreamError::Closed))) {
        Again::Stale
    } else if !sent || replayable {
        Again::Next
    } else {
        Again::No
    }
}

/// GET, HEAD and OPTIONS may be sent again (SPEC "Health").
pub fn is_idempotent(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD || *m == Method::OPTIONS
}

/// Send the request to `first`, then to the pool's next picks (along the ring from `key`,
/// for a hash balancer) while it was not delivered.
pub async fn forward(
    pool: &Pool,
    first: usize,
    key: Option<u64>,
    mut out: Outbound<'_>,
    wait: impl Wait + Copy,
    record: &mut Record,
) -> Result<Answer, ProxyError> {
    let mut attempts = Attempts::new(pool, first, key);
    let timed = pool.balance == Balance::P2cEwma;
    loop {
        let i = attempts.next()?;
        record.backend = Some(i);
        record.attempts += 1;
        let backend = &pool.backends[i];
        let state = &backend.state;
        let in_flight = state.start_request();
        if backend.drain {
            state.touch();
        }
        let label = || backend.label.clone();
        let (failure, reused, replayable) = match &mut out {
            Outbound::H1 {
                head,
                body,
                chunked,
                method,
                upgrade,
                client,
            } => {
                let connect =
                    state
                        .endpoint
                        .h1(backend.addr, &backend.server_name, &pool.connector, *client);
                let Some((mut conn, reused)) = attempts.connect(i, connect).await? else {
                    continue;
                };
                let replayable = body.is_none() && is_idempotent(method);
                let sent_at = crate::clock::now();
                let x = Exchange {
                    head,
                    body: body.as_deref_mut(),
                    chunked: *chunked,
                    head_request: **method == Method::HEAD,
                    upgrade: *upgrade,
                    write_timeout: pool.timeouts.write,
                };
                match conn.exchange(x, wait).await {
                    Ok(head) => {
                        arrived(record, pool, i, head.status, sent_at, timed);
                        return Ok(Answer {
                            inbound: Inbound::H1 { head, conn },
                            in_flight,
                        });
                    }
                    Err(f) => (f, reused, replayable),
                }
            }
            Outbound::H2 { req, replay } => {
                let connect =
                    state
                        .endpoint
                        .h2(backend.addr, &backend.server_name, &pool.connector);
                let Some((mut sender, reused)) = attempts.connect(i, connect).await? else {
                    continue;
                };
                let mut r = match (req.take(), &replay) {
                    (Some(r), _) => *r,
                    (None, Some(replay)) => replay.request(),
                    (None, None) => unreachable!("a request that cannot go again is never retried"),
                };
                h2::absolute(&mut r, pool.connector.tls.is_some(), &backend.label);
                let sent_at = crate::clock::now();
                match wait.head(h2::send(&mut sender, r)).await {
                    None => (Failure::Late, reused, false),
                    Some(Ok(resp)) => {
                        arrived(record, pool, i, resp.status(), sent_at, timed);
                        return Ok(Answer {
                            inbound: Inbound::H2(Box::new(resp)),
                            in_flight,
                        });
                    }
                    Some(Err((failure, back))) => {
                        let replayable = replay.is_some();
                        *req = back.map(Box::new);
                        (failure, reused, replayable)
                    }
                }
            }
        };
        let (error, sent) = match failure {
            Failure::Backend { error, sent } => (error, sent),
            Failure::Late => {
                return Err(ProxyError::UpstreamTimeout {
                    backend: label(),
                    timeout: pool.timeouts.response,
                });
            }
            Failure::WriteStalled => {
                return Err(ProxyError::UpstreamWriteTimeout {
                    backend: label(),
                    timeout: pool.timeouts.write,
                });
            }
            Failure::Client(e) => return Err(e),
        };
        if let Some(e) = client_error(&error) {
            return Err(e);
        }
        let resend_h2 = matches!(
            &out,
            Outbound::H2 { req: Some(_), .. }
                | Outbound::H2 {
                    replay: Some(_),
                    ..
                }
        );
        let can_go_again = matches!(&out, Outbound::H1 { .. }) || resend_h2;
        match again(sent, replayable, reused, &error) {
            Again::Stale if can_go_again => attempts.stale(i),
            Again::Next if can_go_again => attempts.failed(i, error)?,
            _ => {
                return Err(ProxyError::UpstreamProtocol {
                    backend: label(),
                    source: error,
                });
            }
        }
    }
}

/// Backend `i`'s response head arrived: note it in the record, count it and its wait (since
/// `sent_at`) for `/metrics`, its status for passive health, and feed the wait to the
/// latency EWMA when the pool is `timed` (`p2c_ewma`).
fn arrived(
    record: &mut Record,
    pool: &Pool,
    i: usize,
    status: http::StatusCode,
    sent_at: std::time::Instant,
    timed: bool,
) {
    let now = crate::clock::now();
    record.answered(now);
    let backend = &pool.backends[i];
    let state = &backend.state;
    if let Some(d) = state.passive.responded(
        status.as_u16(),
        pool.eject_on_5xx,
        crate::clock::recent_ms(),
        || pool.may_eject(),
    ) {
        tracing::warn!(pool = %pool.name, backend = %backend.label, ejected_for = ?d,
            "backend ejected after {} 5xx responses in a row", pool.eject_on_5xx.unwrap_or(0));
    }
    let waited = now.saturating_duration_since(sent_at);
    if cfg!(feature = "metrics") {
        let code = status.as_u16();
        backend
            .stats
            .responses
            .with(|s| *s == code, || code, crate::metrics::series::Count::inc);
        backend.stats.latency.observe(waited);
    }
    if timed {
        state.latency.observe(waited, crate::clock::micros(now));
    }
}

/// A client-side failure that hyper's client reports for a request body it pulled (the
/// limit, a stall, a broken body): the client's fault, answered as such.
fn client_error(e: &UpstreamError) -> Option<ProxyError> {
    let UpstreamError::Hyper(e) = e else {
        return None;
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(p) = s.downcast_ref::<ProxyError>() {
            return Some(match p {
                ProxyError::BodyTooLarge(t) => {
                    ProxyError::BodyTooLarge(crate::body::TooLarge { limit: t.limit })
                }
                ProxyError::ClientTimeout => ProxyError::ClientTimeout,
                ProxyError::BadBody(c) => ProxyError::BadBody(*c),
                _ => ProxyError::ClientClosed,
            });
        }
        source = s.source();
    }
    None
}

/// The backends one request tries, and the failures that count against `retries`.
struct Attempts<'p> {
    pool: &'p Pool,
    first: Option<usize>,
    key: Option<u64>,
    /// A backend to try again after a stale pooled connection.
    again: Option<usize>,
    tried: Tried,
    failures: u32,
    last: Option<ProxyError>,
}

impl<'p> Attempts<'p> {
    fn new(pool: &'p Pool, first: usize, key: Option<u64>) -> Attempts<'p> {
        Attempts {
            pool,
            first: Some(first),
            key,
            again: None,
            tried: Tried::default(),
            failures: 0,
            last: None,
        }
    }

    /// The next backend to try.
    fn next(&mut self) -> Result<usize, ProxyError> {
        if let Some(i) = self.again.take().or(self.first.take()) {
            return Ok(i);
        }
        let pool = self.pool;
        match pool.pick(&self.tried, self.key) {
            Pick::Healthy(i) | Pick::FailOpen(i) => Ok(i),
            Pick::AllDown => Err(ProxyError::NoHealthyBackend {
                pool: pool.name.clone(),
            }),
            Pick::Exhausted => {
                Err(self
                    .last
                    .take()
                    .unwrap_or_else(|| ProxyError::NoHealthyBackend {
                        pool: pool.name.clone(),
                    }))
            }
        }
    }

    /// The connection `connect` makes to backend `i`, and whether it was pooled; `None`
    /// when it failed and the next backend is to be tried (passive health hears both).
    async fn connect<C>(
        &mut self,
        i: usize,
        connect: impl Future<Output = Result<(C, bool), ConnectError>>,
    ) -> Result<Option<(C, bool)>, ProxyError> {
        match connect.await {
            Ok((c, reused)) => {
                if !reused {
                    self.pool.backends[i].state.passive.connected();
                }
                Ok(Some((c, reused)))
            }
            Err(e) => self.connect_failed(i, e).map(|()| None),
        }
    }

    /// Backend `i` could not be connected to: `Ok` to try the next one.
    fn connect_failed(&mut self, i: usize, source: ConnectError) -> Result<(), ProxyError> {
        let backend = &self.pool.backends[i];
        let pool = self.pool;
        if let Some(d) = backend
            .state
            .passive
            .connect_failed(crate::clock::now_ms(), || pool.may_eject())
        {
            tracing::warn!(pool = %self.pool.name, backend = %backend.label, ejected_for = ?d,
                "backend ejected after {} connect failures in a row", health::EJECT_AFTER);
        }
        backend.stats.connect_errors.inc();
        tracing::debug!(backend = %backend.label, error = %source, "connect failed");
        self.count(
            i,
            ProxyError::Connect {
                backend: backend.label.clone(),
                source,
            },
        )
    }

    /// Backend `i` failed the exchange before a response: `Ok` to try the next one.
    fn failed(&mut self, i: usize, error: UpstreamError) -> Result<(), ProxyError> {
        let backend = self.pool.backends[i].label.clone();
        tracing::debug!(%backend, %error, "exchange failed before a response");
        self.count(
            i,
            ProxyError::UpstreamProtocol {
                backend,
                source: error,
            },
        )
    }

    /// Backend `i`'s pooled connection was stale: try it again, uncounted.
    fn stale(&mut self, i: usize) {
        self.again = Some(i);
    }

    fn count(&mut self, i: usize, e: ProxyError) -> Result<(), ProxyError> {
        self.tried.add(i);
        self.failures += 1;
        if self.failures > self.pool.retries {
            return Err(e);
        }
        self.last = Some(e);
        Ok(())
    }
}

/// What it takes to send a bodiless request again over HTTP/2.
pub struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// A copy of `req`'s head, when it is idempotent and has no body.
    pub fn of(req: &Request<RequestBody>) -> Option<Box<Replay>> {
        (is_idempotent(req.method()) && matches!(req.body(), RequestBody::Empty)).then(|| {
            Box::new(Replay {
                method: req.method().clone(),
                uri: req.uri().clone(),
                headers: req.headers().clone(),
            })
        })
    }

    fn request(&self) -> Request<RequestBody> {
        let mut r = Request::new(RequestBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_undelivered_or_replayable_requests_go_again() {
        let closed = UpstreamError::Closed;
        let reset = UpstreamError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        // A pooled connection that was dead before anything was sent: stale.
        assert_eq!(again(false, false, true, &reset), Again::Stale);
        // An idempotent request that met only the close: stale.
        assert_eq!(again(true, true, true, &closed), Again::Stale);
        // Never sent on a new connection: the next backend.
        assert_eq!(again(false, false, false, &reset), Again::Next);
        // An idempotent bodiless request broken before the response: the next backend.
        assert_eq!(again(true, true, false, &reset), Again::Next);
        assert_eq!(again(true, true, true, &reset), Again::Next);
        // A POST that was sent: never again.
        assert_eq!(again(true, false, false, &reset), Again::No);
        assert_eq!(again(true, false, true, &closed), Again::No);
    }
}
