//! Hot reload: SIGHUP, or a change to the config file, reads `routes.yaml` again.
//!
//! The new text is parsed and validated in full first. A bad config changes nothing: every
//! error is logged as `PATH:LINE:COL: message` and the failure is counted. A good one goes
//! to the running server ([`Control::reload`]), which binds the listeners it adds before
//! anything else changes (a bind failure is a failed reload too), then swaps the snapshot
//! atomically: requests in flight finish on the snapshot they started with, new requests
//! and connections get the new one. Both outcomes are counted, and the last one kept, in
//! [`crate::snapshot::Reloads`].
//!
//! The file is watched through its folder, not itself: editors and `kubectl` replace files
//! by renaming a new one over them (a Kubernetes ConfigMap swaps a `..data` symlink), which
//! a watch on the old file would never see. Events are debounced (nothing for
//! [`DEBOUNCE`]), and a file event whose text is what is already loaded does nothing;
//! SIGHUP always reloads.

use crate::config;
use crate::server::Control;
use crate::snapshot::Shared;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet time after the last file event before the file is read.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Signal,
    File,
}

/// Reloads of one config file, set up: the SIGHUP handler and the file watch are in place
/// once [`Reloader::new`] returns, so no signal or edit after it is missed.
pub struct Reloader {
    path: PathBuf,
    control: Control,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Why>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// The text loaded last (a file event that leaves it as it is changes nothing).
    loaded: Option<String>,
}

impl Reloader {
    /// Listen for SIGHUP and watch `path`, whose running config was made from `loaded`
    /// (needs a tokio runtime).
    pub fn new(path: PathBuf, loaded: String, control: Control, shared: Arc<Shared>) -> Reloader {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match file_watcher(&path, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(config = %path.display(), error = %e,
                    "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(Why::Signal).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
        }
        Reloader {
            loaded: Some(loaded),
            path,
            control,
            shared,
            rx,
            _watcher: watcher,
        }
    }

    /// Reload on every signal and change, until the server stops.
    pub async fn run(self) {
        let Reloader {
            path,
            control,
            shared,
            mut rx,
            _watcher,
            loaded,
        } = self;
        run(&path, &control, &shared, &mut rx, loaded).await;
    }
}

async fn run(
    path: &Path,
    control: &Control,
    shared: &Shared,
    rx: &mut mpsc::UnboundedReceiver<Why>,
    mut loaded: Option<String>,
) {
    while let Some(mut why) = rx.recv().await {
        // Editors write in bursts (truncate, write, rename): wait for quiet.
        while let Ok(Some(more)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            if more == Why::Signal {
                why = Why::Signal;
            }
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if why == Why::File && e.kind() == std::io::ErrorKind::NotFound => {
                // Mid-rename, or deleted: the next event brings the new file.
                continue;
            }
            Err(e) => {
                let msg = format!("{}: cannot read the config file: {e}", path.display());
                tracing::error!("config reload failed: {msg}");
                shared.reloads.record(Err(msg));
                continue;
            }
        };
        if why == Why::File && loaded.as_deref() == Some(text.as_str()) {
            continue;
        }
        let result = reload(path, &text, control).await;
        if result.is_ok() {
            loaded = Some(text);
        }
        shared.reloads.record(result);
    }
}

/// Parse, validate and hand `text` to the server.
async fn reload(path: &Path, text: &str, control: &Control) -> Result<(), String> {
    // Off the runtime: it serves worker 0's connections and the health checks, and a big
    // config takes tens of milliseconds to parse (and backend names block to resolve).
    let (p, t) = (path.to_path_buf(), text.to_string());
    let parsed = tokio::task::spawn_blocking(move || config::parse(&p, &t))
        .await
        .map_err(|e| format!("{}: the config parser failed: {e}", path.display()))?;
    let loaded = match parsed {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            tracing::error!(
                errors = errors.len(),
                "config reload failed: the running config stays"
            );
            return Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"));
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let (listeners, routes, pools) = (
        loaded.config.listeners.len(),
        loaded.config.routes.len(),
        loaded.config.pools.len(),
    );
    match control.reload(loaded.config).await {
        Ok(()) => {
            tracing::info!(listeners, routes, pools, "config reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed: the running config stays");
            Err(e)
        }
    }
}

/// A watcher of the folder of `path` that sends [`Why::File`] for events on the file (or
/// on a Kubernetes `..data` link).
fn file_watcher(
    path: &Path,
    tx: mpsc::UnboundedSender<Why>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(ToOwned::to_owned);
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        // A rescan (the kernel's event queue overflowed) may hide a change: look.
        if ev.need_rescan() {
            let _ = tx.send(Why::File);
            return;
        }
        let ours = ev.paths.iter().any(|p| {
            let f = p.file_name();
            f == name.as_deref() || f == Some(std::ffi::OsStr::new("..data"))
        });
        if ours {
            let _ = tx.send(Why::File);
        }
    })?;
    w.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(w)
}
