//! Certificates: loading and checking PEM files, and choosing one by name. Pure: no
//! sockets and no live snapshot; `config::validate` loads, the resolver in [`super`] reads.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The certificates of one TLS listener.
pub struct Certs {
    entries: Vec<Entry>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    /// Paths and file contents, so two configs compare equal only with equal certificates.
    sources: Vec<(PathBuf, Vec<u8>, PathBuf, Vec<u8>)>,
}

/// One certificate chain with its key and the names it is valid for.
pub struct Entry {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names; wildcards as written (`*.example.com`).
    names: Vec<String>,
    ips: Vec<IpAddr>,
    sources: (PathBuf, Vec<u8>, PathBuf, Vec<u8>),
}

/// Which file of a certificate/key pair a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// Why a certificate/key pair cannot be used.
#[derive(Debug)]
pub struct PairError {
    pub which: Which,
    pub message: String,
}

/// Load a PEM certificate chain and its private key (PKCS#8, RSA or SEC1), checking that
/// they belong together and that the certificate names something.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Entry, PairError> {
    let cert_err = |message: String| PairError {
        which: Which::Cert,
        message,
    };
    let key_err = |message: String| PairError {
        which: Which::Key,
        message,
    };
    let cert_pem = std::fs::read(cert)
        .map_err(|e| cert_err(format!("cannot read certificate {}: {e}", cert.display())))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| key_err(format!("cannot read key {}: {e}", key.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            cert_err(format!(
                "{} is not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(cert_err(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        key_err(format!(
            "{} is not a PEM private key (PKCS#8, RSA or SEC1): {e}",
            key.display()
        ))
    })?;
    let (names, ips) = san_names(&chain[0]).map_err(|e| {
        cert_err(format!(
            "{}: cannot parse the certificate: {e}",
            cert.display()
        ))
    })?;
    if names.is_empty() && ips.is_empty() {
        return Err(cert_err(format!(
            "{} has no DNS or IP subject alternative name to serve",
            cert.display()
        )));
    }
    let certified = CertifiedKey::from_der(chain, private, &super::provider()).map_err(|e| {
        key_err(format!(
            "{} does not match certificate {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Entry {
        key: Arc::new(certified),
        names,
        ips,
        sources: (cert.to_path_buf(), cert_pem, key.to_path_buf(), key_pem),
    })
}

fn san_names(cert: &CertificateDer<'_>) -> Result<(Vec<String>, Vec<IpAddr>), String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    let mut ips = Vec::new();
    if let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
    {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("length 4"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("length 16"))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok((names, ips))
}

impl Certs {
    /// Index `entries`; the first is the default.
    pub fn new(entries: Vec<Entry>) -> Certs {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for n in &e.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        let sources = entries.iter().map(|e| e.sources.clone()).collect();
        Certs {
            entries,
            exact,
            wildcard,
            sources,
        }
    }

    /// The certificate for SNI `name` (lower case): exact, wildcard, else the default.
    pub fn resolve(&self, name: Option<&str>) -> usize {
        let Some(name) = name else { return 0 };
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent).copied())
            .unwrap_or(0)
    }

    /// Whether certificate `i` is valid for `host` (lower case, no port).
    pub fn covers(&self, i: usize, host: &str) -> bool {
        let e = &self.entries[i];
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return e.ips.contains(&ip);
        }
        e.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }

    /// The names of certificate `i`, for `check`.
    pub fn names(&self, i: usize) -> Vec<String> {
        let e = &self.entries[i];
        e.names
            .iter()
            .cloned()
            .chain(e.ips.iter().map(IpAddr::to_string))
            .collect()
    }

    /// The chain and key of certificate `i`, for the handshake.
    pub fn key(&self, i: usize) -> Arc<CertifiedKey> {
        self.entries[i].key.clone()
    }

    /// How many certificates there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never, for a validated listener).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl PartialEq for Certs {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<_> = self
            .sources
            .iter()
            .map(|s| s.0.display().to_string())
            .collect();
        f.debug_struct("Certs").field("files", &files).finish()
    }
}

/// Read a PEM bundle of CA certificates: the file's bytes and the certificates in it.
pub fn load_ca(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok((pem, certs))
}

/// Write a self-signed certificate for `names` and its key (PEM), for the demo.
pub fn generate_self_signed(cert: &Path, key: &Path, names: &[&str]) -> Result<(), String> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    for path in [cert, key] {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    std::fs::write(cert, ck.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", key.display()))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, sans: &[&str]) -> Entry {
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        generate_self_signed(&c, &k, sans).unwrap();
        load_pair(&c, &k).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let d = tempfile::tempdir().unwrap();
        let certs = Certs::new(vec![
            pair(d.path(), "default", &["default.test"]),
            pair(d.path(), "shop", &["shop.test", "www.shop.test"]),
            pair(d.path(), "wild", &["*.api.test"]),
        ]);
        assert_eq!(certs.resolve(Some("www.shop.test")), 1);
        assert_eq!(certs.resolve(Some("v1.api.test")), 2);
        assert_eq!(certs.resolve(Some("a.v1.api.test")), 0);
        assert_eq!(certs.resolve(Some("api.test")), 0);
        assert_eq!(certs.resolve(None), 0);
        assert!(certs.covers(2, "x.api.test"));
        assert!(!certs.covers(2, "api.test"));
        assert!(!certs.covers(1, "other.test"));
    }

    #[test]
    fn mismatched_key_and_nameless_certs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        pair(d.path(), "a", &["a.test"]);
        pair(d.path(), "b", &["b.test"]);
        let e = load_pair(&d.path().join("a.crt"), &d.path().join("b.key"))
            .err()
            .unwrap();
        assert_eq!(e.which, Which::Key);
        assert!(e.message.contains("does not match"), "{}", e.message);
        let e = load_pair(&d.path().join("missing.crt"), &d.path().join("b.key"))
            .err()
            .unwrap();
        assert_eq!(e.which, Which::Cert);
    }

    #[test]
    fn ip_sans_count_as_names() {
        let d = tempfile::tempdir().unwrap();
        let certs = Certs::new(vec![pair(d.path(), "ip", &["127.0.0.1"])]);
        assert!(certs.covers(0, "127.0.0.1"));
        assert!(!certs.covers(0, "127.0.0.2"));
    }
}
