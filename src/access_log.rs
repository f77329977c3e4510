//! The access log: one line per request on stdout, written by a thread of its own.
//!
//! Requests never wait for stdout: an entry is handed over a bounded channel when the
//! response body is done, and dropped (and counted) if the writer falls that far behind.
//! The writer formats and batches lines, flushing whenever the channel runs dry.

use crate::config::AccessLogFormat;
use http::{HeaderValue, Method, Version};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime};

const QUEUE: usize = 16 * 1024;

/// Hands finished entries to the writer thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<Box<Entry>>>,
    dropped: Arc<AtomicU64>,
}

/// One request, filled in as it goes and written when its response body is done.
pub struct Entry {
    pub time: SystemTime,
    pub start: Instant,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: Method,
    pub version: Version,
    pub host: String,
    /// Path with query, as received.
    pub path: String,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub request_id: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    bytes: u64,
    duration: f64,
    log: Option<AccessLog>,
}

impl AccessLog {
    /// Start the writer thread for `format` (none for `off`).
    pub fn start(format: AccessLogFormat) -> AccessLog {
        let dropped = Arc::new(AtomicU64::new(0));
        if format == AccessLogFormat::Off {
            return AccessLog { tx: None, dropped };
        }
        let (tx, rx) = sync_channel(QUEUE);
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, format, &d))
            .expect("cannot start the access log thread");
        AccessLog {
            tx: Some(tx),
            dropped,
        }
    }

    /// Whether entries are wanted at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// A new entry for a request that started now.
    pub fn entry(
        &self,
        listener: Arc<str>,
        client: SocketAddr,
        req: &http::request::Parts,
        host: String,
    ) -> Box<Entry> {
        let path = req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string());
        let mut e = self.begin(
            listener,
            client,
            req.method.clone(),
            req.version,
            host,
            path,
        );
        e.referer = req.headers.get(http::header::REFERER).cloned();
        e.user_agent = req.headers.get(http::header::USER_AGENT).cloned();
        e
    }

    /// A new entry for a request that started now, from its parts; `path` with its query.
    pub fn begin(
        &self,
        listener: Arc<str>,
        client: SocketAddr,
        method: Method,
        version: Version,
        host: String,
        path: String,
    ) -> Box<Entry> {
        Box::new(Entry {
            time: SystemTime::now(),
            start: Instant::now(),
            listener,
            client,
            method,
            version,
            host,
            path,
            status: 0,
            route: None,
            pool: None,
            backend: None,
            request_id: None,
            referer: None,
            user_agent: None,
            bytes: 0,
            duration: 0.0,
            log: Some(self.clone()),
        })
    }
}

impl Entry {
    /// The response body is done after `bytes` bytes: queue the line.
    pub fn finish(mut self: Box<Self>, bytes: u64) {
        self.bytes = bytes;
        self.duration = self.start.elapsed().as_secs_f64() * 1000.0;
        // The entry travels without its handle: move it out rather than clone it.
        let Some(AccessLog {
            tx: Some(tx),
            dropped,
        }) = self.log.take()
        else {
            return;
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(self) {
            dropped.fetch_add(1, Relaxed);
        }
    }
}

fn write_loop(rx: Receiver<Box<Entry>>, format: AccessLogFormat, dropped: &AtomicU64) {
    // Not `stdout().lock()`: holding the lock while waiting would block everyone else
    // who prints (the demo's tour, for one).
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let mut line = Vec::with_capacity(512);
    let mut reported = 0;
    let mut next = rx.recv().ok();
    while let Some(e) = next {
        line.clear();
        match format {
            AccessLogFormat::Common => common(&e, &mut line),
            _ => json(&e, &mut line),
        }
        let _ = out.write_all(&line);
        next = match rx.try_recv() {
            Ok(e) => Some(e),
            Err(_) => {
                let _ = out.flush();
                let n = dropped.load(Relaxed);
                if n != reported {
                    tracing::warn!(
                        dropped = n - reported,
                        "access log fell behind; entries dropped"
                    );
                    reported = n;
                }
                rx.recv().ok()
            }
        };
    }
    let _ = out.flush();
}

fn header_str(v: &Option<HeaderValue>) -> &str {
    v.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-")
}

fn json(e: &Entry, out: &mut Vec<u8>) {
    let line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "listener": &*e.listener,
        "client": e.client.to_string(),
        "method": e.method.as_str(),
        "host": e.host,
        "path": e.path,
        "status": e.status,
        "bytes": e.bytes,
        "duration_ms": (e.duration * 1000.0).round() / 1000.0,
        "route": e.route.as_deref().unwrap_or("-"),
        "pool": e.pool.as_deref().unwrap_or("-"),
        "backend": e.backend.as_deref().unwrap_or("-"),
        "request_id": header_str(&e.request_id),
    });
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

/// The combined log format: `%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"`.
fn common(e: &Entry, out: &mut Vec<u8>) {
    let t = time::OffsetDateTime::from(e.time).format(time::macros::format_description!(
        "[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000"
    ));
    let bytes = if e.bytes == 0 {
        "-".to_string()
    } else {
        e.bytes.to_string()
    };
    let _ = writeln!(
        out,
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\"",
        e.client.ip(),
        t.unwrap_or_default(),
        e.method,
        e.path,
        e.version,
        e.status,
        bytes,
        header_str(&e.referer).replace('"', "\\\""),
        header_str(&e.user_agent).replace('"', "\\\""),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Box<Entry> {
        let req = http::Request::get("/a?b=1")
            .header("user-agent", "curl/8 \"x\"")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let mut e = AccessLog {
            tx: None,
            dropped: Arc::default(),
        }
        .entry(
            "web".into(),
            "10.0.0.1:5555".parse().unwrap(),
            &req,
            "shop.test".into(),
        );
        e.time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        e.status = 200;
        e.bytes = 42;
        e.route = Some("r".into());
        e
    }

    #[test]
    fn json_line_has_every_spec_field() {
        let mut out = Vec::new();
        json(&entry(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["client"], "10.0.0.1:5555");
        assert_eq!(v["path"], "/a?b=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["route"], "r");
        assert_eq!(v["backend"], "-");
        for k in [
            "listener",
            "method",
            "host",
            "duration_ms",
            "pool",
            "request_id",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
    }

    #[test]
    fn common_line_is_combined_log_format() {
        let mut out = Vec::new();
        common(&entry(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"GET /a?b=1 HTTP/1.1\" 200 42 \"-\" \"curl/8 \\\"x\\\"\"\n"
        );
    }
}
