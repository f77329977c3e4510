//! Lock-free counters for the request path: a [`Series`] of values by a small key, and a
//! fixed-bucket [`Hist`]ogram. A series is an append-only list of write-once slots, in
//! chunks of [`CHUNK`]: finding a key is a scan of a few slots, each an atomic load, with
//! no lock, no reference count and no hashing; only the first event of a new key takes a
//! mutex, to fill the next free slot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

/// Slots per chunk: a route or backend rarely sees more keys than this.
pub const CHUNK: usize = 8;

/// Values by key; a key's value is made at its first event, so a series appears then.
pub struct Series<K, V> {
    head: Chunk<K, V>,
    grow: Mutex<()>,
}

struct Chunk<K, V> {
    slots: [OnceLock<(K, V)>; CHUNK],
    next: OnceLock<Box<Chunk<K, V>>>,
}

impl<K, V> Default for Chunk<K, V> {
    fn default() -> Self {
        Chunk {
            slots: std::array::from_fn(|_| OnceLock::new()),
            next: OnceLock::new(),
        }
    }
}

impl<K, V> Default for Series<K, V> {
    fn default() -> Self {
        Series {
            head: Chunk::default(),
            grow: Mutex::new(()),
        }
    }
}

impl<K, V: Default> Series<K, V> {
    /// Run `f` on the value of the key that `is` picks, made (by `make`) now if it is new.
    /// The key is matched in place, not built per call: its `Arc<str>` labels are shared
    /// by every worker, and a clone per request would bounce their counts between cores.
    pub fn with(&self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> K, f: impl FnOnce(&V)) {
        if let Some(v) = self.find(&is) {
            return f(v);
        }
        let _g = self.grow.lock().expect("series lock");
        if let Some(v) = self.find(&is) {
            return f(v);
        }
        // Under the lock, the first empty slot is ours to fill.
        let mut c = &self.head;
        loop {
            if let Some(slot) = c.slots.iter().find(|s| s.get().is_none()) {
                return f(&slot.get_or_init(|| (make(), V::default())).1);
            }
            c = c.next.get_or_init(Box::default);
        }
    }

    fn find(&self, is: &impl Fn(&K) -> bool) -> Option<&V> {
        let mut c = &self.head;
        loop {
            for s in &c.slots {
                match s.get() {
                    Some(e) if is(&e.0) => return Some(&e.1),
                    Some(_) => {}
                    None => return None,
                }
            }
            c = c.next.get()?;
        }
    }

    /// Every (key, value) so far, in order of first event.
    pub fn entries(&self) -> Vec<&(K, V)> {
        let mut out = Vec::new();
        let mut c = Some(&self.head);
        while let Some(chunk) = c {
            out.extend(chunk.slots.iter().map_while(OnceLock::get));
            c = chunk.next.get().map(|b| &**b);
        }
        out
    }
}

/// Upper bounds of the latency buckets, in seconds: 0.5 ms to 30 s, for a proxy whose
/// requests take a millisecond and whose timeouts are tens of seconds.
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BUCKETS`] in nanoseconds, for an integer comparison per bucket.
const BUCKET_NS: [u64; BUCKETS.len()] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
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
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
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

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
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
        // More keys than a chunk holds, from several threads at once.
        let s: std::sync::Arc<Series<u16, Count>> = std::sync::Arc::default();
        let keys = (CHUNK * 2 + 3) as u16;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        s.with(|k| *k == i % keys, || i % keys, Count::inc);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let e = s.entries();
        assert_eq!(e.len(), usize::from(keys));
        let mut seen: Vec<u16> = e.iter().map(|e| e.0).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), usize::from(keys), "each key once");
        assert_eq!(e.iter().map(|e| e.1.get()).sum::<u64>(), 4000);
    }

    #[test]
    fn the_integer_buckets_are_the_bounds() {
        for (ns, s) in BUCKET_NS.iter().zip(BUCKETS) {
            assert_eq!(*ns as f64 / 1e9, s);
        }
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
