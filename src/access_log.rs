//! The access log: one line per request on stdout, written by a thread of its own.
//!
//! Requests never wait for stdout: a finished [`Record`] becomes an entry handed over a
//! bounded channel, dropped (and counted) if the writer falls that far behind.
//! The writer formats and batches lines, flushing whenever the channel runs dry.

use crate::config::AccessLogFormat;
use crate::record::{Record, Text};
use http::{Method, Version};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

const QUEUE: usize = 16 * 1024;

/// Hands finished entries to the writer thread.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Box<Entry>>,
    /// The format now (a reload may change it): `off` sends nothing.
    format: Arc<AtomicU8>,
    dropped: Arc<AtomicU64>,
}

/// One finished request, as the writer thread formats it.
pub struct Entry {
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: Option<Method>,
    pub version: Version,
    pub text: Box<Text>,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub backend: Option<Arc<str>>,
    pub request_id: String,
    pub bytes: u64,
    /// Milliseconds, until the response body was done.
    pub duration: f64,
}

impl AccessLog {
    /// Start the writer thread for `format` (none for `off`), writing to stdout.
    pub fn start(format: AccessLogFormat) -> AccessLog {
        // Not `stdout().lock()`: holding the lock while waiting would block everyone else
        // who prints (the demo's tour, for one).
        AccessLog::start_to(format, Box::new(std::io::stdout()))
    }

    /// Start the writer thread for `format`, writing to `out` (tests read the log so).
    pub fn start_to(format: AccessLogFormat, out: Box<dyn Write + Send>) -> AccessLog {
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = sync_channel(QUEUE);
        let d = dropped.clone();
        let log = AccessLog {
            tx,
            format: Arc::new(AtomicU8::new(code(format))),
            dropped,
        };
        let f = log.format.clone();
        // Started even when `off`: a reload may turn the log on.
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, &f, &d, out))
            .expect("cannot start the access log thread");
        log
    }

    /// Whether entries are wanted at all.
    pub fn enabled(&self) -> bool {
        self.format.load(Relaxed) != code(AccessLogFormat::Off)
    }

    /// Write lines in `format` from now on (a reload).
    pub fn set_format(&self, format: AccessLogFormat) {
        self.format.store(code(format), Relaxed);
    }

    /// Lines dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Queue `entry` for the writer; dropped (and counted) if it is that far behind.
    pub fn send(&self, entry: Box<Entry>) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(entry) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

fn code(f: AccessLogFormat) -> u8 {
    match f {
        AccessLogFormat::Off => 0,
        AccessLogFormat::Json => 1,
        AccessLogFormat::Common => 2,
    }
}

fn decode(c: u8) -> AccessLogFormat {
    match c {
        0 => AccessLogFormat::Off,
        2 => AccessLogFormat::Common,
        _ => AccessLogFormat::Json,
    }
}

impl Entry {
    /// The entry for `r`, finished at `now`.
    pub fn of(r: &mut Record, now: SystemTime) -> Box<Entry> {
        let duration = r.elapsed();
        let names = r.names();
        Box::new(Entry {
            time: now.checked_sub(duration).unwrap_or(now),
            listener: r.conn.listener.clone(),
            client: r.conn.peer,
            method: r.method.clone(),
            version: r.version,
            text: r.text.take().unwrap_or_default(),
            status: r.status,
            route: names.route,
            pool: names.pool,
            backend: names.backend,
            request_id: String::from_utf8_lossy(r.id()).into_owned(),
            bytes: r.bytes,
            duration: duration.as_secs_f64() * 1000.0,
        })
    }
}

fn write_loop(
    rx: Receiver<Box<Entry>>,
    format: &AtomicU8,
    dropped: &AtomicU64,
    out: Box<dyn Write + Send>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    let mut reported = 0;
    let mut next = rx.recv().ok();
    while let Some(e) = next {
        line.clear();
        match decode(format.load(Relaxed)) {
            AccessLogFormat::Common => common(&e, &mut line),
            AccessLogFormat::Json => json(&e, &mut line),
            // Turned off by a reload while the entry was queued: nothing is written.
            AccessLogFormat::Off => {}
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

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn method(e: &Entry) -> &str {
    e.method.as_ref().map_or("-", Method::as_str)
}

fn json(e: &Entry, out: &mut Vec<u8>) {
    let line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "listener": &*e.listener,
        "client": e.client.to_string(),
        "method": method(e),
        "host": e.text.host,
        "path": e.text.target,
        "status": e.status,
        "bytes": e.bytes,
        "duration_ms": (e.duration * 1000.0).round() / 1000.0,
        "route": e.route.as_deref().unwrap_or("-"),
        "pool": e.pool.as_deref().unwrap_or("-"),
        "backend": e.backend.as_deref().unwrap_or("-"),
        "request_id": e.request_id,
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
        method(e),
        e.text.target.replace('"', "\\\""),
        e.version,
        e.status,
        bytes,
        or_dash(&e.text.referer).replace('"', "\\\""),
        or_dash(&e.text.user_agent).replace('"', "\\\""),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            listener: "web".into(),
            client: "10.0.0.1:5555".parse().unwrap(),
            method: Some(Method::GET),
            version: Version::HTTP_11,
            text: Box::new(Text {
                host: "shop.test".into(),
                target: "/a?b=1".into(),
                referer: None,
                user_agent: Some("curl/8 \"x\"".into()),
            }),
            status: 200,
            route: Some("r".into()),
            pool: None,
            backend: None,
            request_id: "id".into(),
            bytes: 42,
            duration: 1.5,
        }
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
