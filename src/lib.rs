//! Switchyard: an L7 HTTP reverse proxy and load balancer.
//!
//! # Layout
//! A request flows top to bottom through these modules:
//! - [`server`]: listeners, client connections, limits, timeouts, graceful shutdown. Plain
//!   HTTP/1.1 requests without a body are read by the lane ([`server::lane`], httparse);
//!   the lane hands a connection to hyper's server for anything else (bodies, upgrades,
//!   HTTP/1.0), and HTTP/2 goes to hyper from the start.
//! - [`proxy`]: the hot path. Reads the target, asks the [`router`], picks a backend from
//!   the [`pool`] (with [`balance`]), forwards through [`upstream`] with retries, and turns
//!   failures into responses ([`error`]) in one place. The lane's requests to plain
//!   HTTP/1.1 pools take [`proxy::fast`], which does the same on the request's bytes
//!   without building `http` types; whatever it does not decide goes to [`proxy::Proxy::handle`].
//! - [`upstream`]: backend connections and their pools: hyper's client, and for bodiless
//!   requests to plain HTTP/1.1 backends the cheaper inline client ([`upstream::h1`]).
//! - [`wire`]: the HTTP/1.1 byte helpers the lane, the fast path and the inline client share.
//! - [`snapshot`]: the compiled, immutable config every request reads (one `ArcSwap`).
//! - [`config`]: `routes.yaml` -> raw serde structs -> validated [`config::Config`].
//! - [`health`]: passive ejection of failing backends.
//! - [`access_log`], [`admin`], [`echo`] (the stand-in backend), [`cli`].
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
pub mod echo;
pub mod error;
pub mod explain;
pub mod health;
pub mod pool;
pub mod proxy;
pub mod record;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
pub mod wire;
