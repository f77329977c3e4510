//! Lock-free counters for the request path: a [`Series`] of values by a small key, found by
//! a scan of a copy-on-write list (a handful of keys per route or backend), and a fixed
//! bucket [`Hist`]ogram. Reading the list is an `ArcSwap` load, no lock; only the first
//! event of a new key takes a mutex to publish a longer list.

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Values by key; a key's value is made at its first event, so a series appears then.
pub struct Series<K, V> {
    list: ArcSwap<Vec<Arc<(K, V)>>>,
    grow: Mutex<()>,
}

impl<K, V> Default for Series<K, V> {
    fn default() -> Self {
        Series {
            list: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
        }
    }
}

impl<K, V: Default> Series<K, V> {
    /// Run `f` on the value of the key that `is` picks, made (by `make`) now if it is new.
    /// The key is matched in place, not built per call: its `Arc<str>` labels are shared
    /// by every worker, and a clone per request would bounce their counts between cores.
    pub fn with(&self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> K, f: impl FnOnce(&V)) {
        if let Some(e) = self.list.load().iter().find(|e| is(&e.0)) {
            return f(&e.1);
        }
        let _g = self.grow.lock().expect("series lock");
        let now = self.list.load_full();
        if let Some(e) = now.iter().find(|e| is(&e.0)) {
            return f(&e.1);
        }
        let e = Arc::new((make(), V::default()));
        f(&e.1);
        let mut next = Vec::with_capacity(now.len() + 1);
        next.extend(now.iter().cloned());
        next.push(e);
        self.list.store(Arc::new(next));
    }

    /// Every (key, value) so far, in order of first event.
    pub fn entries(&self) -> Arc<Vec<Arc<(K, V)>>> {
        self.list.load_full()
    }
}

/// Upper bounds of the latency buckets, in seconds: 0.5 ms to 30 s, for a proxy whose
/// requests take a millisecond and whose timeouts are tens of seconds.
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations over [`BUCKETS`] (and +Inf).
#[derive(Default)]
pub struct Hist {
    /// Not cumulative: the count of observations in each bucket alone, +Inf last.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Hist {
    /// Count one observation of `d`.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// (cumulative counts per bucket, +Inf last; the sum in seconds).
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        (cumulative, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

/// A counter.
#[derive(Default)]
pub struct Count(AtomicU64);

impl Count {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_series_makes_each_key_once_and_counts_from_many_threads() {
        let s: Arc<Series<u16, Count>> = Arc::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        s.with(|k| *k == i % 3, || i % 3, Count::inc);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let e = s.entries();
        assert_eq!(e.len(), 3);
        assert_eq!(e.iter().map(|e| e.1.get()).sum::<u64>(), 4000);
    }

    #[test]
    fn a_histogram_is_cumulative_with_its_sum() {
        let h = Hist::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (c, sum) = h.snapshot();
        assert_eq!(c[0], 1, "<= 0.5 ms");
        assert_eq!(c[3], 2, "<= 5 ms");
        assert_eq!(c[BUCKETS.len() - 1], 2, "<= 30 s");
        assert_eq!(c[BUCKETS.len()], 3, "+Inf");
        assert!((sum - 60.0033).abs() < 1e-6);
    }
}
