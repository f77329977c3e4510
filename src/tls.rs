//! TLS: the listener side picks a certificate by SNI from the live snapshot at every
//! handshake, so a new snapshot brings new certificates without rebinding anything; the
//! backend side builds client configs. Loading and checking certificate files is
//! [`certs`]' (pure, used by `config::validate`). Selection follows each certificate's SAN
//! names: an exact name, then a wildcard (`*.example.com` covers exactly one more label),
//! then the first certificate as the default, also when the client sent no SNI.

pub mod certs;

use crate::snapshot::Shared;
pub use certs::Certs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::fmt;
use std::sync::Arc;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Picks a listener's certificate from the current snapshot at every handshake.
struct Resolver {
    shared: Arc<Shared>,
    listener: Arc<str>,
    /// The certificates last found: a handshake that a reload removing the listener
    /// overtakes still completes (its connection was accepted before).
    last: arc_swap::ArcSwapOption<Certs>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("listener", &self.listener)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = match listener_certs(&self.shared, &self.listener) {
            Some(c) => {
                if !self
                    .last
                    .load()
                    .as_ref()
                    .is_some_and(|l| Arc::ptr_eq(l, &c))
                {
                    self.last.store(Some(c.clone()));
                }
                c
            }
            None => self.last.load_full()?,
        };
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        let i = certs.resolve(sni.as_deref());
        Some(certs.key(i))
    }
}

/// The current certificates of listener `name`.
pub fn listener_certs(shared: &Shared, name: &str) -> Option<Arc<Certs>> {
    shared
        .load()
        .config
        .listeners
        .iter()
        .find(|l| &*l.name == name)
        .and_then(|l| l.tls.clone())
}

/// The rustls config of a TLS listener: TLS 1.2 and 1.3, ALPN h2 and http/1.1, and unless
/// turned off, session resumption by tickets and by a session cache.
/// `certs` are the listener's now, kept for handshakes that outlive it.
pub fn server_config(
    shared: Arc<Shared>,
    listener: Arc<str>,
    certs: Option<Arc<Certs>>,
    resumption: bool,
) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the default provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver {
            shared,
            listener,
            last: arc_swap::ArcSwapOption::new(certs),
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if !resumption {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        return Arc::new(cfg);
    }
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    match rustls::crypto::aws_lc_rs::Ticketer::new() {
        Ok(t) => cfg.ticketer = t,
        Err(e) => {
            tracing::warn!(error = %e, "no TLS session tickets; resumption uses the cache only")
        }
    }
    Arc::new(cfg)
}

/// A client config for TLS to backends: the given CAs, or the webpki (Mozilla) roots.
pub fn client_config(ca: Option<&[CertificateDer<'static>]>, h2: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                if let Err(e) = roots.add(c.clone()) {
                    tracing::warn!(error = %e, "skipping an unusable CA certificate");
                }
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the default provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Arc::new(cfg)
}
