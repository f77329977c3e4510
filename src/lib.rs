//! Switchyard: an L7 HTTP reverse proxy and load balancer.
//!
//! # The pipeline
//! Every request, whichever wire path it came on, takes the same steps:
//! 1. A wire path reads it: [`server::h1`] (the lane: HTTP/1.0 and 1.1 on their bytes,
//!    bodies and upgrades included) or [`server::h2`] (hyper's HTTP/2 server).
//! 2. [`proxy::decide`] decides it once: host, TLS guard, redirect, route (via [`router`]),
//!    limits, pool (a split's variant) and first backend (via [`proxy::choose`]: the
//!    [`sticky`] token, else [`pool`] and [`balance`]). 4xx and 503 start here.
//! 3. [`proxy::edit`] edits its fields, described as data and applied to bytes or to a
//!    header map; the response's edits likewise.
//! 4. [`proxy::forward`] sends it with the one retry policy, over [`upstream::h1`] (every
//!    HTTP/1.1 backend) or [`upstream::h2`] (hyper's client, for `protocol: h2`).
//! 5. Its [`record::Record`], filled in on the way, is finished where it is dropped, once
//!    the response is done: the [`access_log`] reads it. Errors become responses in one
//!    place, [`proxy::fail`].
//!
//! # Layout
//! Below the pipeline: [`wire`] (HTTP/1.1 byte helpers, the strict [`wire::chunked`]
//! codec), [`body`], [`clock`] (process and connection clocks), [`error`], [`health`]
//! (passive ejection), [`tls`] (SNI from the live snapshot; [`tls::certs`] loads files),
//! [`sni`] (a ClientHello's SNI read without terminating TLS, for passthrough),
//! [`proxy_protocol`] (the PROXY header an L4 balancer sends first), [`net`] (sockets).
//! Above it: [`snapshot`] (the compiled config every request reads, one `ArcSwap`),
//! [`config`] (`routes.yaml` -> raw serde -> validated [`config::Config`]),
//! [`dns`] (backend names looked up again every `dns_refresh`),
//! [`server`] (listeners, limits, timeouts, shutdown; `mode: tcp` relays), [`admin`], [`echo`] (the stand-in
//! backend), [`explain`], [`probe`] (`switchyard healthcheck`), [`cli`].
//!
//! Tests start the real thing in-process: [`server::Server::bind`] on `127.0.0.1:0`, then
//! [`server::Server::run`] with a shutdown future.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::print_stdout, clippy::dbg_macro)
)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dns;
pub mod echo;
pub mod error;
pub mod explain;
pub mod health;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod probe;
pub mod proxy;
pub mod proxy_protocol;
pub mod record;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod sni;
pub mod status;
pub mod sticky;
pub mod tls;
pub mod upstream;
pub mod wire;
