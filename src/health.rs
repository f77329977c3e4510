//! Backend health. For now passive only: consecutive connect failures eject a backend for
//! a while (SPEC "Health": 5 in a row -> 30 s, doubling while it keeps failing, at most
//! 5 min). The state is atomics inside the backend's shared state, so it survives reloads.
// TODO(#health): active checks and 5xx ejection slot in here.

use crate::clock::now_ms;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Connect failures in a row that eject a backend.
pub const EJECT_AFTER: u32 = 5;
const BASE_EJECTION: Duration = Duration::from_secs(30);
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Passive health of one backend.
#[derive(Debug, Default)]
pub struct Passive {
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
}

impl Passive {
    /// False while the backend is ejected. Reads the clock only for a backend that has
    /// been ejected since its last successful connect.
    pub fn available(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Count a failed connect; returns the ejection time if this one ejected the backend.
    pub fn connect_failed(&self, now_ms: u64) -> Option<Duration> {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n < EJECT_AFTER {
            return None;
        }
        self.failures.store(0, Relaxed);
        let k = self.ejections.fetch_add(1, Relaxed).min(16);
        let d = BASE_EJECTION.saturating_mul(1 << k).min(MAX_EJECTION);
        self.ejected_until
            .store(now_ms + d.as_millis() as u64, Relaxed);
        Some(d)
    }

    /// A connect succeeded: the failure streak and the backoff start over.
    pub fn connected(&self) {
        // Loads first: on the hot path these are almost always 0, and a load does not
        // take the cache line exclusive the way a store does.
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 {
            self.ejections.store(0, Relaxed);
        }
        if self.ejected_until.load(Relaxed) != 0 {
            self.ejected_until.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_in_a_row_eject_with_doubling_backoff() {
        let p = Passive::default();
        for _ in 0..4 {
            assert_eq!(p.connect_failed(1000), None);
        }
        assert_eq!(p.connect_failed(1000), Some(Duration::from_secs(30)));
        assert_eq!(p.ejected_until.load(Relaxed), 31_000);
        for _ in 0..4 {
            p.connect_failed(31_000);
        }
        assert_eq!(p.connect_failed(31_000), Some(Duration::from_secs(60)));
        for _ in 0..40 {
            p.connect_failed(0);
        }
        assert_eq!(p.ejected_until.load(Relaxed), 300_000);
    }

    #[test]
    fn a_success_resets_the_streak() {
        let p = Passive::default();
        for _ in 0..4 {
            p.connect_failed(0);
        }
        p.connected();
        for _ in 0..4 {
            assert_eq!(p.connect_failed(0), None);
        }
        assert!(p.available());
        p.connect_failed(now_ms());
        assert!(!p.available());
        p.connected();
        assert!(p.available());
    }
}
