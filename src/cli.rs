//! The command line: `run` (the default), `check`, `demo`, `echo`, `explain` and
//! `healthcheck`.
//!
//! Exit codes: 0 ok, 1 bad config or runtime failure, 2 usage (clap's own).

use crate::config::{self, Config, HostMatch, PathMatch};
use crate::server::Server;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Switchyard: an L7 HTTP reverse proxy and load balancer.
#[derive(Parser)]
#[command(name = "switchyard", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log verbosity: error, warn, info, debug or trace (RUST_LOG, if set, wins).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Run(RunArgs),
    /// Validate the config: print a summary and exit 0, or every error as
    /// PATH:LINE:COL: message and exit 1.
    Check(ConfigArg),
    /// Start an echo backend for every loopback backend address in the config, then run
    /// the proxy and print a few curl lines to try.
    Demo(RunArgs),
    /// Show what the proxy would decide for one request, and why, without sending it:
    /// the route candidates in the order tried, the route and pool, or the status the proxy
    /// would answer itself (400, 404, 421, 308).
    Explain(ExplainArgs),
    /// A small echo backend: answers every request with 200 and a JSON description of it.
    Echo {
        /// Address to listen on, like 127.0.0.1:9001.
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Name reported in the body and the x-backend header.
        #[arg(long, default_value = "echo")]
        name: String,
    },
    /// Probe a URL for a container HEALTHCHECK (no curl needed): GET it over plain
    /// HTTP/1.1 and exit 0 on a 2xx answer within the timeout, or 1 with the reason on
    /// stderr (refused, timed out, the status). Only http:// URLs whose host is an IP
    /// address or localhost.
    Healthcheck(HealthcheckArgs),
}

#[derive(Args)]
struct HealthcheckArgs {
    /// The URL to GET.
    #[arg(value_name = "URL", default_value = crate::probe::DEFAULT_URL, value_parser = crate::probe::parse_url)]
    url: crate::probe::Target,
    /// How long to wait for the answer, connect included, like 500ms or 2s.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Worker threads, each with its own runtime (overrides `workers:`; default: one per
    /// core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The request method, like GET.
    method: String,
    /// The absolute URL: http://host/path?query, or https://... for a TLS listener's view.
    url: String,
    /// A request header, as 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,
    /// A cookie, as 'name=value' (repeatable).
    #[arg(long = "cookie", value_name = "COOKIE")]
    cookies: Vec<String>,
    /// The client's address, for ip_hash.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    client: std::net::IpAddr,
}

#[derive(Args)]
struct ConfigArg {
    /// Path of the config file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = "routes.yaml")]
    config: PathBuf,
}

/// Parse the command line, run the command, and map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_tracing(cli.log_level.as_deref());
    let result = match cli.command {
        None => run(&cli.run, false),
        Some(Command::Run(a)) => run(&a, false),
        Some(Command::Demo(a)) => run(&a, true),
        Some(Command::Check(a)) => return check(&a.config),
        Some(Command::Explain(a)) => return explain(&a),
        Some(Command::Echo { listen, name }) => echo(listen, name),
        Some(Command::Healthcheck(a)) => return healthcheck(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Load `path`, printing warnings, or every error.
fn load(path: &Path) -> Option<Config> {
    load_text(path).map(|(c, _)| c)
}

/// [`load`], and the text it loaded.
fn load_text(path: &Path) -> Option<(Config, String)> {
    match config::load_text(path) {
        Ok((loaded, text)) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            Some((loaded.config, text))
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            None
        }
    }
}

fn explain(a: &ExplainArgs) -> ExitCode {
    let Some(config) = load(&a.config.config) else {
        return ExitCode::FAILURE;
    };
    let Ok(method) = http::Method::from_bytes(a.method.as_bytes()) else {
        eprintln!("switchyard explain: {:?} is not an HTTP method", a.method);
        return ExitCode::from(2);
    };
    let ask = crate::explain::Ask {
        method,
        url: a.url.clone(),
        headers: a.headers.clone(),
        cookies: a.cookies.clone(),
        client: a.client,
    };
    // Names are looked up as the proxy would, once: the backend shown is one it could pick.
    let dns = crate::dns::Dns::default();
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        let prepared = rt.block_on(dns.prepare(None, &config));
        dns.adopt(prepared);
    }
    match crate::explain::explain(config, &ask, &dns.answers()) {
        Ok(e) => {
            let mut out = std::io::stdout().lock();
            let _ = if a.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&e).expect("explanations serialize")
                )
            } else {
                write!(out, "{}", crate::explain::text(&e))
            };
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard explain: {e}");
            ExitCode::from(2)
        }
    }
}

fn healthcheck(a: &HealthcheckArgs) -> ExitCode {
    let url = format!("http://{}{}", a.url.authority, a.url.path);
    match crate::probe::run(&a.url, a.timeout) {
        Ok(status) => {
            let _ = writeln!(std::io::stdout().lock(), "{url}: {status}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("switchyard healthcheck: {url}: {why}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", summary(path, &config));
    ExitCode::SUCCESS
}

/// The one-screen summary `check` prints for a good config.
fn summary(path: &Path, c: &Config) -> String {
    let mut s = format!("{}: ok\n", path.display());
    s += &format!("listeners ({}):\n", c.listeners.len());
    for l in &c.listeners {
        let mut extra = l
            .redirect_https
            .map(|p| format!("  (redirects to https port {p})"))
            .unwrap_or_default();
        if l.accept_proxy {
            extra += "  (PROXY protocol header required)";
        }
        if let Some(t) = &l.tcp {
            let mut to = c.pools[t.pool].name.to_string();
            for (sni, p) in &t.sni_routes {
                to = format!("{sni} -> {}; {to}", c.pools[*p].name);
            }
            if let Some(v) = t.proxy_protocol {
                extra += &format!("  (sends PROXY protocol {})", v.as_str());
            }
            s += &format!("  {:<12} tcp://{} -> {to}{extra}\n", l.name, l.bind);
            continue;
        }
        match &l.tls {
            Some(certs) => {
                let names: Vec<String> =
                    (0..certs.len()).map(|i| certs.names(i).join(" ")).collect();
                s += &format!(
                    "  {:<12} https://{}  certificates: {}\n",
                    l.name,
                    l.bind,
                    names.join("; ")
                );
            }
            None => s += &format!("  {:<12} http://{}{extra}\n", l.name, l.bind),
        }
    }
    if let Some(a) = c.admin {
        s += &format!("admin: http://{a}\n");
    }
    if let Some(r) = c.resolver {
        s += &format!("resolver: {r} (backend names)\n");
    }
    s += &format!("pools ({}):\n", c.pools.len());
    for p in &c.pools {
        let backends: Vec<String> = p
            .backends
            .iter()
            .map(|b| {
                let mut x = format!("{} w{}", b.addr, b.weight);
                if b.drain {
                    x += " draining";
                }
                if b.addr.host().is_some() {
                    x += &format!(
                        " (DNS, every {})",
                        humantime::format_duration(p.dns_refresh)
                    );
                }
                x
            })
            .collect();
        let proto = match (p.protocol, &p.tls) {
            (config::Protocol::Http1, None) => "http/1.1",
            (config::Protocol::Http1, Some(_)) => "http/1.1 over TLS",
            (config::Protocol::H2, None) => "h2c",
            (config::Protocol::H2, Some(_)) => "h2 over TLS",
        };
        let mut health = String::new();
        if let Some(h) = &p.health_check {
            health += &match h.kind {
                config::CheckKind::Http => format!(", checks GET {}", h.path),
                config::CheckKind::Tcp => ", checks tcp".to_string(),
            };
            health += &format!(
                " every {:?} (down after {}, up after {})",
                h.interval, h.unhealthy_threshold, h.healthy_threshold
            );
        }
        if let Some(n) = p.eject_on_5xx {
            health += &format!(", ejects after {n} 5xx");
        }
        let tcp = c.listeners.iter().filter_map(|l| l.tcp.as_ref()).any(|t| {
            c.pools[t.pool].name == p.name
                || t.sni_routes.iter().any(|(_, i)| c.pools[*i].name == p.name)
        });
        let wait = if tcp {
            format!("idle {}", humantime::format_duration(p.timeouts.idle))
        } else {
            format!("response {:?}", p.timeouts.response)
        };
        let proto = if tcp { "tcp" } else { proto };
        if let Some(v) = p.proxy_protocol {
            health += &format!(", sends PROXY protocol {}", v.as_str());
        }
        s += &format!(
            "  {:<12} {proto}, {}, retries {}, connect {:?}, {wait}{health}: {}\n",
            p.name,
            p.balance.as_str(),
            p.retries,
            p.timeouts.connect,
            backends.join(", ")
        );
    }
    s += &format!("routes ({}), in file order:\n", c.routes.len());
    for r in &c.routes {
        let host = match &r.host {
            HostMatch::Any => "*".to_string(),
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Wildcard(h) => format!("*.{h}"),
        };
        let path = match &r.path {
            PathMatch::Prefix(p) => format!("prefix {p}"),
            PathMatch::Pattern(p) => format!("path {p}"),
        };
        let mut cond = String::new();
        if !r.methods.is_empty() {
            let m: Vec<&str> = r.methods.iter().map(|m| m.as_str()).collect();
            cond += &format!(" methods {}", m.join(","));
        }
        for (k, v) in &r.headers {
            cond += &format!(" header {k}={}", v.to_str().unwrap_or("?"));
        }
        for (k, v) in &r.cookies {
            cond += &format!(" cookie {k}={v}");
        }
        s += &format!(
            "  {:<12} host {host} {path}{cond} -> {}\n",
            r.name,
            c.destination(r)
        );
    }
    s
}

/// The runtime layout, chosen by measurement (bench/README.md): one current-thread runtime
/// per worker, each with its own SO_REUSEPORT sockets. Worker 0 runs on this runtime.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn workers(args: &RunArgs, config: &Config) -> usize {
    args.workers
        .map(usize::from)
        .or(config.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn run(args: &RunArgs, demo: bool) -> anyhow::Result<()> {
    let path = &args.config.config;
    if demo {
        for (cert, key) in config::missing_certificates(path) {
            crate::tls::certs::generate_self_signed(
                &cert,
                &key,
                &["localhost", "127.0.0.1", "::1"],
            )
            .map_err(|e| anyhow::anyhow!("cannot generate a demo certificate: {e}"))?;
            tracing::info!(cert = %cert.display(), key = %key.display(), "generated a self-signed localhost certificate");
        }
    }
    let (config, text) =
        load_text(path).ok_or_else(|| anyhow::anyhow!("{} is not valid", path.display()))?;
    let workers = workers(args, &config);
    let rt = runtime()?;
    rt.block_on(async move {
        if demo {
            start_echo_backends(&config).await?;
        }
        let server = Server::bind_workers(config.clone(), workers).await?;
        if demo {
            print_tour(&server, &config);
        }
        let reloader =
            crate::reload::Reloader::new(path.clone(), text, server.control(), server.shared());
        tokio::spawn(reloader.run());
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// One echo backend per loopback backend address, named `POOL-N`; not for the proxy's
/// own listeners (the demo's L4 tier sends to its L7 one).
async fn start_echo_backends(config: &Config) -> anyhow::Result<()> {
    let mut names: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for p in &config.pools {
        for (i, b) in p.backends.iter().enumerate() {
            if let config::Addr::Ip(addr) = b.addr
                && addr.ip().is_loopback()
                && !config.listeners.iter().any(|l| l.bind == addr)
            {
                names
                    .entry(addr)
                    .or_insert_with(|| format!("{}-{}", p.name, i + 1));
            }
        }
    }
    for (addr, name) in names {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot start the echo backend {name} on {addr}"))?;
        tracing::info!(%addr, %name, "demo echo backend");
        tokio::spawn(crate::echo::serve(listener, Arc::from(name)));
    }
    Ok(())
}

fn print_tour(server: &Server, config: &Config) {
    let mut out = std::io::stdout().lock();
    // The tour's requests go to the first plain HTTP listener that takes them directly.
    let Some(l) = config
        .listeners
        .iter()
        .find(|l| l.tcp.is_none() && l.tls.is_none() && !l.accept_proxy)
        .or(config.listeners.first())
    else {
        return;
    };
    let Some(addr) = server.listener_addr(&l.name) else {
        return;
    };
    let base = format!("http://{addr}");
    let _ = writeln!(out, "\nSwitchyard demo is running. Try:\n");
    for r in config.routes.iter().take(4) {
        let path = sample_path(r);
        let _ = writeln!(
            out,
            "  curl -si {base}{path}          # route {} -> pool {}",
            r.name,
            config.destination(r)
        );
    }
    // The stickiness tour, for the routes whose pools have something to show.
    for r in &config.routes {
        let path = sample_path(r);
        let pools: Vec<&crate::config::Pool> = r.to.pools().map(|p| &config.pools[p]).collect();
        if let Some(st) = pools.iter().find_map(|p| p.sticky.as_ref()) {
            let _ = writeln!(
                out,
                "  curl -si -c /tmp/sy.jar -b /tmp/sy.jar {base}{path}   # sticky ({}): run it twice, same backend",
                st.cookie
            );
        }
        if let crate::config::RouteTo::Split(s) = &r.to
            && let Some(&(p, _)) = s.pools.last()
        {
            let _ = writeln!(
                out,
                "  curl -si -b {}={} {base}{path}   # split: the cookie forces a variant",
                s.cookie, config.pools[p].name
            );
        }
        if let Some(key) = pools
            .iter()
            .find(|p| p.balance == crate::config::Balance::CookieHash)
            .and_then(|p| p.hash_key.as_deref())
        {
            let _ = writeln!(
                out,
                "  curl -si -b {key}=alice {base}{path}   # cookie_hash: alice always gets the same backend"
            );
        }
    }
    let _ = writeln!(
        out,
        "  curl -si {base}/nope                    # no route: 404"
    );
    for l in config.listeners.iter().filter(|l| l.tcp.is_some()) {
        if let Some(a) = server.listener_addr(&l.name) {
            let _ = writeln!(
                out,
                "  curl -s --interface 127.0.0.2 http://{a}/api/users/1   # L4 listener {} -> L7 -> pool: x-forwarded-for is 127.0.0.2",
                l.name
            );
        }
    }
    for l in config.listeners.iter().filter(|l| l.tls.is_some()) {
        if let Some(a) = server.listener_addr(&l.name) {
            let _ = writeln!(
                out,
                "  curl -sk --http2 https://localhost:{}/api/products/1   # TLS listener {}, HTTP/2 by ALPN",
                a.port(),
                l.name
            );
        }
    }
    if let Some(a) = server.admin_addr() {
        let _ = writeln!(out, "  curl -s http://{a}/ready                 # admin");
    }
    if let Some(r) = config.routes.first() {
        let path = sample_path(r);
        let _ = writeln!(
            out,
            "  switchyard explain GET {base}{path}   # which route and pool, and why"
        );
    }
    let _ = writeln!(
        out,
        "\nRepeat a request to watch round robin move between backends (x-backend header)."
    );
    let _ = writeln!(
        out,
        "Edit the config (or kill -HUP {}) and the proxy reloads it; a bad edit is refused\n\
         with its line and column, and the running config stays.",
        std::process::id()
    );
    let _ = writeln!(out, "Ctrl-C stops it.\n");
}

/// A path the route takes, for the tour.
fn sample_path(r: &config::Route) -> String {
    match &r.path {
        PathMatch::Prefix(p) if p == "/" => "/".to_string(),
        PathMatch::Prefix(p) => format!("{p}/1"),
        PathMatch::Pattern(p) => p.replace("{p0}", "1"),
    }
}

fn echo(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, %name, "echo backend");
        tokio::select! {
            _ = crate::echo::serve(listener, Arc::from(name)) => {}
            _ = shutdown_signal() => {}
        }
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
