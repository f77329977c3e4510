//! Sticky sessions: the proxy-inserted cookie that keeps a user on one backend.
//!
//! The cookie's value is an opaque token, 33 bytes in URL-safe base64 (44 characters):
//!
//! ```text
//! version (1) | key id (4) | issued, Unix seconds (4) | backend id (8) | HMAC-SHA256 tag (16)
//! ```
//!
//! The backend id is a keyed hash of the backend's address, never the address itself; the
//! tag covers everything before it, truncated to 128 bits (RFC 2104 §5 allows half the
//! output and more), and is compared in constant time. HMAC is the `hmac` and `sha2`
//! crates: a keyed state is cloned per token (two SHA-256 blocks, SHA-NI where the CPU
//! has it), where aws-lc's API copies and frees a whole context per call (measured:
//! bench/README.md). Each key of `sticky_secret_env` is
//! first turned into a key for this pool (HMAC of the pool's name), so a token of one pool
//! never verifies in another and no two pools share backend ids. The first key signs; every
//! key verifies, found by its id, so keys rotate without breaking sessions: put the new key
//! first, keep the old one until its tokens have lapsed. Nothing here depends on the
//! process, so every instance with the same config and secret, and the same instance after
//! a restart, reads a token the same way.

use crate::config::{self, Secret};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const VERSION: u8 = 1;
/// Bytes of a token before base64.
const RAW_LEN: usize = 33;
/// Characters of a token.
pub const TOKEN_LEN: usize = 44;
const SIGNED: usize = 17;
/// A token issued this far in the future (another instance's clock running ahead) is
/// still taken; further out it is not.
const SKEW: u64 = 300;

/// A pool's sticky cookie, compiled for one snapshot.
pub struct Sticky {
    pub cookie: Arc<str>,
    max_age: Option<Duration>,
    pub nocache: bool,
    /// The first signs.
    keys: Box<[Key]>,
}

type HmacSha256 = Hmac<Sha256>;

/// A keyed HMAC state (any key length is accepted).
fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The HMAC of `data` under the keyed state `mac`.
fn sign(mac: &HmacSha256, data: &[u8]) -> [u8; 32] {
    let mut m = mac.clone();
    m.update(data);
    m.finalize().into_bytes().into()
}

struct Key {
    id: [u8; 4],
    mac: HmacSha256,
    /// (backend id, backend index), sorted by id.
    ids: Box<[(u64, u32)]>,
    /// Backend index -> id.
    by_index: Box<[u64]>,
}

/// What a request's token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by one of the keys and not expired. `backend` is `None` when no backend of
    /// the pool has the id any more; `old_key` when a key other than the first signed it.
    Valid {
        backend: Option<usize>,
        old_key: bool,
    },
    /// Malformed, tampered with, signed by no known key, or expired.
    Invalid,
}

impl Sticky {
    /// Compile `cfg` for the pool `pool` with backends labelled `labels` (their `ip:port`),
    /// keyed by `secret`, or by a key derived from the pool's name without one.
    pub fn new<'a>(
        cfg: &config::Sticky,
        pool: &str,
        labels: impl Iterator<Item = &'a str> + Clone,
        secret: Option<&Secret>,
    ) -> Sticky {
        let fallback: [Arc<[u8]>; 1];
        let secrets: &[Arc<[u8]>] = match secret {
            Some(s) => &s.keys,
            None => {
                let digest = Sha256::digest(format!("switchyard sticky default key\0{pool}"));
                fallback = [Arc::from(&digest[..])];
                &fallback
            }
        };
        let keys = secrets
            .iter()
            .map(|secret| {
                let derived = sign(
                    &keyed(secret),
                    format!("switchyard sticky v1\0{pool}").as_bytes(),
                );
                let mac = keyed(&derived);
                let mut id = [0u8; 4];
                id.copy_from_slice(&sign(&mac, b"key id")[..4]);
                let by_index: Box<[u64]> = labels
                    .clone()
                    .map(|label| {
                        let mut msg = b"backend\0".to_vec();
                        msg.extend_from_slice(label.as_bytes());
                        let tag = sign(&mac, &msg);
                        u64::from_be_bytes(tag[..8].try_into().expect("8 bytes"))
                    })
                    .collect();
                let mut ids: Vec<(u64, u32)> = by_index
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (id, i as u32))
                    .collect();
                ids.sort_unstable();
                Key {
                    id,
                    mac,
                    ids: ids.into(),
                    by_index,
                }
            })
            .collect();
        Sticky {
            cookie: cfg.cookie.as_str().into(),
            max_age: cfg.max_age,
            nocache: cfg.nocache,
            keys,
        }
    }

    /// Read `token` at `now` (Unix seconds).
    pub fn verify(&self, token: &[u8], now: u64) -> Verdict {
        if token.len() != TOKEN_LEN {
            return Verdict::Invalid;
        }
        let mut raw = [0u8; RAW_LEN + 3];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(RAW_LEN) if raw[0] == VERSION => {}
            _ => return Verdict::Invalid,
        }
        let Some((k, key)) = self
            .keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.id == raw[1..5])
        else {
            return Verdict::Invalid;
        };
        let mut m = key.mac.clone();
        m.update(&raw[..SIGNED]);
        // Constant time, over the tag's first 16 bytes.
        if m.verify_truncated_left(&raw[SIGNED..RAW_LEN]).is_err() {
            return Verdict::Invalid;
        }
        let issued = u64::from(u32::from_be_bytes(raw[5..9].try_into().expect("4 bytes")));
        let expired = self
            .max_age
            .is_some_and(|m| now.saturating_sub(issued) > m.as_secs());
        if expired || issued > now + SKEW {
            return Verdict::Invalid;
        }
        let id = u64::from_be_bytes(raw[9..17].try_into().expect("8 bytes"));
        let backend = key
            .ids
            .binary_search_by_key(&id, |&(id, _)| id)
            .ok()
            .map(|i| key.ids[i].1 as usize);
        Verdict::Valid {
            backend,
            old_key: k != 0,
        }
    }

    /// The token for `backend`, issued at `now` (Unix seconds), signed by the first key.
    pub fn token(&self, backend: usize, now: u64) -> [u8; TOKEN_LEN] {
        let key = &self.keys[0];
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..5].copy_from_slice(&key.id);
        raw[5..9].copy_from_slice(&(now as u32).to_be_bytes());
        raw[9..17].copy_from_slice(&key.by_index[backend].to_be_bytes());
        let tag = sign(&key.mac, &raw[..SIGNED]);
        raw[SIGNED..].copy_from_slice(&tag[..RAW_LEN - SIGNED]);
        let mut out = [0u8; TOKEN_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out)
            .expect("a token fits its buffer");
        debug_assert_eq!(n, TOKEN_LEN);
        out
    }

    /// Append the `Set-Cookie` value giving `backend`'s token to `out`.
    pub fn set_cookie(&self, backend: usize, tls: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(self.cookie.as_bytes());
        out.push(b'=');
        out.extend_from_slice(&self.token(backend, unix_now()));
        out.extend_from_slice(b"; Path=/");
        if let Some(age) = self.max_age {
            out.extend_from_slice(b"; Max-Age=");
            crate::wire::decimal(out, age.as_secs());
        }
        attributes(tls, out);
    }
}

/// The attributes every cookie the proxy sets ends with.
pub fn attributes(tls: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(b"; HttpOnly; SameSite=Lax");
    if tls {
        out.extend_from_slice(b"; Secure");
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_age: Option<u64>) -> config::Sticky {
        config::Sticky {
            cookie: "sy".into(),
            max_age: max_age.map(Duration::from_secs),
            nocache: true,
        }
    }

    fn secret(keys: &[&str]) -> Secret {
        Secret {
            env: "X".into(),
            keys: keys.iter().map(|k| Arc::from(k.as_bytes())).collect(),
        }
    }

    const LABELS: [&str; 3] = ["127.0.0.1:9001", "127.0.0.1:9002", "10.1.2.3:80"];

    fn sticky(keys: &[&str], max_age: Option<u64>) -> Sticky {
        Sticky::new(
            &cfg(max_age),
            "payment",
            LABELS.iter().copied(),
            Some(&secret(keys)),
        )
    }

    #[test]
    fn a_token_names_its_backend_and_nothing_else() {
        let s = sticky(&["k1"], None);
        for b in 0..3 {
            let t = s.token(b, 1_000_000);
            let text = std::str::from_utf8(&t).unwrap();
            assert!(!text.contains("127") && !text.contains("900"), "{text}");
            assert_eq!(
                s.verify(&t, 1_000_000),
                Verdict::Valid {
                    backend: Some(b),
                    old_key: false
                }
            );
        }
    }

    #[test]
    fn tampered_truncated_foreign_and_expired_tokens_are_invalid() {
        let s = sticky(&["k1"], Some(60));
        let t = s.token(1, 1000);
        assert_eq!(s.verify(&t[..43], 1000), Verdict::Invalid);
        for i in 0..TOKEN_LEN {
            let mut bad = t;
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(s.verify(&bad, 1000), Verdict::Invalid, "byte {i}");
        }
        assert_eq!(s.verify(b"not a token", 1000), Verdict::Invalid);
        assert_eq!(s.verify(&t, 1061), Verdict::Invalid, "expired");
        assert!(matches!(s.verify(&t, 1060), Verdict::Valid { .. }));
        assert_eq!(s.verify(&t, 0), Verdict::Invalid, "from the far future");
        let other = sticky(&["k2"], None);
        assert_eq!(other.verify(&t, 1000), Verdict::Invalid, "another key");
        let other_pool = Sticky::new(
            &cfg(None),
            "product",
            LABELS.iter().copied(),
            Some(&secret(&["k1"])),
        );
        assert_eq!(
            other_pool.verify(&t, 1000),
            Verdict::Invalid,
            "another pool"
        );
    }

    #[test]
    fn keys_rotate_and_instances_agree() {
        let old = sticky(&["old"], None);
        let t = old.token(2, 5000);
        let rotated = sticky(&["new", "old"], None);
        assert_eq!(
            rotated.verify(&t, 5000),
            Verdict::Valid {
                backend: Some(2),
                old_key: true
            }
        );
        let fresh = rotated.token(2, 5000);
        assert_eq!(
            rotated.verify(&fresh, 5000),
            Verdict::Valid {
                backend: Some(2),
                old_key: false
            }
        );
        // Another instance, built the same way, reads the same token the same way.
        assert_eq!(
            sticky(&["new", "old"], None).verify(&fresh, 5000),
            rotated.verify(&fresh, 5000)
        );
    }

    #[test]
    fn a_token_whose_backend_left_is_valid_but_names_none() {
        let s = sticky(&["k"], None);
        let t = s.token(2, 10);
        let fewer = Sticky::new(
            &cfg(None),
            "payment",
            LABELS[..2].iter().copied(),
            Some(&secret(&["k"])),
        );
        assert_eq!(
            fewer.verify(&t, 10),
            Verdict::Valid {
                backend: None,
                old_key: false
            }
        );
        // Backend ids follow addresses, not positions.
        let reordered = Sticky::new(
            &cfg(None),
            "payment",
            [LABELS[2], LABELS[0]].into_iter(),
            Some(&secret(&["k"])),
        );
        assert_eq!(
            reordered.verify(&t, 10),
            Verdict::Valid {
                backend: Some(0),
                old_key: false
            }
        );
    }

    #[test]
    fn tokens_are_the_same_across_releases() {
        // Made by the build that signed with aws-lc: a fleet mid-upgrade, and users'
        // cookies from before it, must read the same.
        let s = Sticky::new(
            &cfg(None),
            "payment",
            ["127.0.0.1:9001", "127.0.0.1:9002"].into_iter(),
            Some(&secret(&["k1"])),
        );
        let golden = b"Ack4xp1lU_EAq9CQSScnNHjFhiR4EypGlbOD9jjN70GU";
        assert_eq!(&s.token(1, 1_700_000_000), golden);
        assert_eq!(
            s.verify(golden, 1_700_000_000),
            Verdict::Valid {
                backend: Some(1),
                old_key: false
            }
        );
    }

    #[test]
    fn set_cookie_has_the_spec_attributes() {
        let s = sticky(&["k"], Some(3600));
        let mut out = Vec::new();
        s.set_cookie(0, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("sy="), "{text}");
        assert!(
            text.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"),
            "{text}"
        );
        let default_key = Sticky::new(&cfg(None), "payment", LABELS.iter().copied(), None);
        let mut out = Vec::new();
        default_key.set_cookie(0, false, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("; Path=/; HttpOnly; SameSite=Lax")
        );
    }
}
