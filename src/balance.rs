//! Backend selection: smooth weighted round robin, least connections, weighted random,
//! power of two choices on a latency EWMA, and consistent hashing with bounded load.
//!
//! A pick is synchronous and lock-free: round robin walks a sequence computed once per
//! snapshot with one atomic counter, least connections and P2C read the in-flight and
//! latency atomics, a hash pick is a binary search on a ring computed once per snapshot.
//! The caller passes `eligible(i)`, which hides backends that are unhealthy, draining or
//! already tried by this request; that is how retries get their next candidate (for a
//! hash pick, the next backend along the ring).

use crate::config;
use crate::pool::{Backend, Tried};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Largest weight a backend may have (keeps the round robin sequence small).
pub const MAX_WEIGHT: u32 = 1000;

/// A pool's balancer.
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    Random,
    P2c,
    /// The ring, and round robin for requests without the hash key.
    Hash(Ring, RoundRobin),
}

impl Balancer {
    /// A balancer for `backends` with the configured strategy.
    pub fn new(kind: config::Balance, backends: &[Arc<Backend>]) -> Balancer {
        use config::Balance::*;
        match kind {
            RoundRobin => Balancer::RoundRobin(self::RoundRobin::new(backends)),
            LeastConnections => Balancer::LeastConn(LeastConn::default()),
            Random => Balancer::Random,
            P2cEwma => Balancer::P2c,
            IpHash | CookieHash | HeaderHash => {
                Balancer::Hash(Ring::new(backends), self::RoundRobin::new(backends))
            }
        }
    }

    /// Index of the chosen backend among those `eligible`, or None if none is; `key` is
    /// the request's hash key, for a hash balancer.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        key: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(eligible),
            Balancer::LeastConn(lc) => lc.pick(backends, eligible),
            Balancer::Random => random(backends, eligible),
            Balancer::P2c => p2c(backends, eligible),
            Balancer::Hash(ring, rr) => match key {
                Some(k) => ring.pick(backends, k, eligible),
                None => rr.pick(eligible),
            },
        }
    }

    /// The backend `key` maps to when no backend is loaded or down: what `explain` shows.
    pub fn owner(&self, key: u64) -> Option<usize> {
        match self {
            Balancer::Hash(ring, _) => ring.owner(key),
            _ => None,
        }
    }
}

/// nginx's smooth weighted round robin, unrolled once into a sequence of indices.
pub struct RoundRobin {
    seq: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    fn new(backends: &[Arc<Backend>]) -> RoundRobin {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        RoundRobin {
            seq: smooth_sequence(&weights).into(),
            // Start instances at different places so a fleet does not move in lockstep.
            next: AtomicUsize::new(fastrand::usize(..)),
        }
    }

    fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.seq.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        for k in 0..len {
            let i = self.seq[(start + k) % len] as usize;
            if eligible(i) {
                // Skip what we stepped over, so the next request does not land on the same
                // ineligible backend and hand its share to this one twice.
                if k > 0 {
                    self.next.fetch_add(k, Relaxed);
                }
                return Some(i);
            }
        }
        None
    }
}

/// The order smooth weighted round robin visits backends in, one full cycle.
fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Fewest in-flight requests; ties go to the higher weight, then round robin.
#[derive(Default)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl LeastConn {
    fn pick(&self, backends: &[Arc<Backend>], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let mut best: Option<(usize, u32, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !eligible(i) {
                continue;
            }
            let b = &backends[i];
            let load = b.state.in_flight();
            let better = match best {
                None => true,
                Some((_, l, w)) => load < l || (load == l && b.weight > w),
            };
            if better {
                best = Some((i, load, b.weight));
            }
        }
        best.map(|(i, ..)| i)
    }
}

fn random(backends: &[Arc<Backend>], eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..backends.len())
        .filter(|&i| eligible(i))
        .map(|i| u64::from(backends[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(..total);
    for (i, b) in backends.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        let w = u64::from(b.weight);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// Power of two choices (Mitzenmacher): two distinct eligible backends at random, and the
/// one with the lower cost, its latency estimate times its in-flight requests plus one,
/// over its weight. The Finagle / linkerd "P2C + peak EWMA" design.
fn p2c(backends: &[Arc<Backend>], eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let n = backends.len();
    if n == 0 {
        return None;
    }
    let now = crate::clock::micros(crate::clock::now());
    let cost = |i: usize| {
        let b = &backends[i];
        b.state.latency.estimate(now) * f64::from(b.state.in_flight() + 1) / f64::from(b.weight)
    };
    let better = |a: usize, b: usize| if cost(b) < cost(a) { b } else { a };
    // Usually every backend is eligible: two draws and no list.
    if n >= 2 {
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        if eligible(a) && eligible(b) {
            return Some(better(a, b));
        }
    }
    let mut list = Tried::default();
    let mut count = 0;
    for i in 0..n {
        if eligible(i) {
            list.add(i);
            count += 1;
        }
    }
    let nth = |k: usize| (0..n).filter(|&i| list.has(i)).nth(k);
    match count {
        0 => None,
        1 => nth(0),
        _ => {
            let a = fastrand::usize(..count);
            let mut b = fastrand::usize(..count - 1);
            if b >= a {
                b += 1;
            }
            Some(better(nth(a)?, nth(b)?))
        }
    }
}

/// The latency estimate P2C reads when a backend has no samples yet (linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The EWMA's time constant: a sample's weight falls to 1/e after this long.
pub const DECAY: Duration = Duration::from_secs(10);

/// A peak-sensitive, time-decayed moving average of a backend's response latency
/// (Finagle's PeakEWMA). A sample above the estimate replaces it at once, so a backend
/// that turns slow is avoided from its first slow answer; a lower sample is blended in
/// with weight `1 - exp(-elapsed / DECAY)`; and while no samples come the estimate decays
/// towards zero at the same rate, so an avoided backend is tried again after a while
/// instead of being starved forever. Two atomics; concurrent updates may lose a sample,
/// which an average shrugs off.
#[derive(Debug)]
pub struct Ewma {
    /// The estimate in nanoseconds, as `f64` bits.
    nanos: AtomicU64,
    /// When it was last updated, as [`crate::clock::micros`].
    at: AtomicU64,
}

impl Default for Ewma {
    fn default() -> Ewma {
        Ewma {
            nanos: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            at: AtomicU64::new(crate::clock::micros(crate::clock::now())),
        }
    }
}

impl Ewma {
    fn decay(elapsed_us: u64) -> f64 {
        (-(elapsed_us as f64) / DECAY.as_micros() as f64).exp()
    }

    /// The estimate at `now_us`, in nanoseconds.
    pub fn estimate(&self, now_us: u64) -> f64 {
        let est = f64::from_bits(self.nanos.load(Relaxed));
        est * Self::decay(now_us.saturating_sub(self.at.load(Relaxed)))
    }

    /// Take a response that took `rtt`, seen at `now_us`.
    pub fn observe(&self, rtt: Duration, now_us: u64) {
        let rtt = rtt.as_nanos() as f64;
        let est = f64::from_bits(self.nanos.load(Relaxed));
        let next = if rtt > est {
            rtt
        } else {
            let w = Self::decay(now_us.saturating_sub(self.at.load(Relaxed)));
            est * w + rtt * (1.0 - w)
        };
        self.nanos.store(next.to_bits(), Relaxed);
        self.at.store(now_us, Relaxed);
    }
}

/// Ring points per unit of weight (ketama's 160): enough that each backend's share is
/// within a few percent of its weight.
const POINTS_PER_WEIGHT: u64 = 160;
/// At most this many points in all; heavier pools get fewer points per weight.
const MAX_POINTS: u64 = 1 << 18;

/// A consistent-hash ring (Karger et al.) with bounded load (Mirrokni, Thorup and
/// Zadimoghaddam, 2018; HAProxy's `hash-balance-factor`, Envoy's `hash_balance_factor`).
/// Each backend owns points on a 64-bit circle, hashed from its address, so every
/// instance with the same backends builds the same ring; a key goes to the owner of the
/// first point at or after its hash. A backend joining or leaving moves only the keys of
/// its own points. Bounded load: a backend already at `LOAD_FACTOR` x its weighted share of
/// the pool's in-flight requests is passed over for the next one along the ring, so one
/// hot key cannot swamp a backend.
pub struct Ring {
    /// (point, backend index), sorted by point.
    points: Box<[(u64, u32)]>,
}

/// How far above its fair share of in-flight requests a backend may go: 1.25 x.
const LOAD_FACTOR: (u64, u64) = (5, 4);

impl Ring {
    fn new(backends: &[Arc<Backend>]) -> Ring {
        let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let per_weight = POINTS_PER_WEIGHT.min(MAX_POINTS / total.max(1)).max(1);
        let mut points = Vec::with_capacity((total * per_weight) as usize);
        for (i, b) in backends.iter().enumerate() {
            let seed = hash(b.label.as_bytes());
            for k in 0..u64::from(b.weight) * per_weight {
                points.push((mix(seed ^ mix(k + 1)), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into(),
        }
    }

    /// Index of the first point at or after `key`, wrapping.
    fn start(&self, key: u64) -> usize {
        let i = self.points.partition_point(|&(p, _)| p < key);
        if i == self.points.len() { 0 } else { i }
    }

    fn owner(&self, key: u64) -> Option<usize> {
        (!self.points.is_empty()).then(|| self.points[self.start(key)].1 as usize)
    }

    fn pick(
        &self,
        backends: &[Arc<Backend>],
        key: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        // The pool's load among eligible backends, for the cap.
        let (mut load, mut weight) = (0u64, 0u64);
        for (i, b) in backends.iter().enumerate() {
            if eligible(i) {
                load += u64::from(b.state.in_flight());
                weight += u64::from(b.weight);
            }
        }
        if weight == 0 {
            return None;
        }
        // Under the cap: in_flight + 1 <= ceil(c * (load + 1) * w / W).
        let (num, den) = LOAD_FACTOR;
        let fits = |b: &Backend| {
            let cap = (num * (load + 1) * u64::from(b.weight)).div_ceil(den * weight);
            u64::from(b.state.in_flight()) < cap
        };
        let mut seen = Tried::default();
        let mut left = backends.len();
        let start = self.start(key);
        for k in 0..len {
            let i = self.points[(start + k) % len].1 as usize;
            if seen.has(i) {
                continue;
            }
            seen.add(i);
            if eligible(i) && fits(&backends[i]) {
                return Some(i);
            }
            left -= 1;
            if left == 0 {
                break;
            }
        }
        // Only when in-flight counts moved under the walk (some backend is always at or
        // under the average): the least loaded then.
        (0..backends.len())
            .filter(|&i| eligible(i))
            .min_by_key(|&i| backends[i].state.in_flight())
    }
}

/// The `ip_hash` key of a client address (HTTP requests and tcp connections alike).
pub fn ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(a) => hash(&a.octets()),
        std::net::IpAddr::V6(a) => hash(&a.octets()),
    }
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then [`mix`]): the same in every process and
/// build, which a fleet sharing a ring needs, and which std's hashers do not promise.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// MurmurHash3's 64-bit finalizer: every input bit flips about half the output bits.
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Backend;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        let ports: Vec<(u16, u32)> = (0..).zip(weights.iter().copied()).collect();
        at_ports(&ports)
    }

    /// Backends on 127.0.0.1:9000+port with these weights.
    fn at_ports(ports: &[(u16, u32)]) -> Vec<Arc<Backend>> {
        ports
            .iter()
            .map(|&(p, w)| {
                let addr = ([127, 0, 0, 1], 9000 + p).into();
                Arc::new(Backend::new(
                    &config::Backend {
                        addr: config::Addr::Ip(addr),
                        weight: w,
                        drain: false,
                    },
                    addr,
                    None,
                    None,
                    None,
                ))
            })
            .collect()
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash(format!("session-{i}").as_bytes()))
            .collect()
    }

    /// The label of the backend `ring` gives each key, with every backend idle.
    fn owners(b: &[Arc<Backend>], keys: &[u64]) -> Vec<Arc<str>> {
        let ring = Balancer::new(config::Balance::CookieHash, b);
        keys.iter()
            .map(|&k| b[ring.pick(b, Some(k), |_| true).unwrap()].label.clone())
            .collect()
    }

    #[test]
    fn the_hash_is_stable() {
        // Fixed outputs: a fleet (and the next release) must hash as this one does.
        // FNV-1a's published test vectors, then the finalizer.
        assert_eq!(hash(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash(b"a"), mix(0xaf63_dc4c_8601_ec8c));
        assert_eq!(hash(b"foobar"), mix(0x8594_4171_f739_67e8));
        assert_eq!(mix(0), 0);
        // Pinned: a change here moves every user of every hash pool.
        assert_eq!(hash(b"session-1"), 17_467_118_465_826_753_311);
    }

    #[test]
    fn a_thousand_keys_map_the_same_way_every_time_and_spread() {
        let keys = keys(1000);
        let first = owners(&backends(&[1, 1, 1, 1]), &keys);
        // Another instance: same backends, built again (in another order, too).
        let other = at_ports(&[(3, 1), (1, 1), (0, 1), (2, 1)]);
        assert_eq!(first, owners(&other, &keys));
        for port in 9000..9004 {
            let label = format!("127.0.0.1:{port}");
            let n = first.iter().filter(|l| ***l == *label).count();
            assert!((150..=350).contains(&n), "{label}: {n} of 1000");
        }
    }

    #[test]
    fn removing_one_of_four_moves_only_its_keys() {
        let keys = keys(1000);
        let before = owners(&backends(&[1, 1, 1, 1]), &keys);
        let after = owners(&at_ports(&[(0, 1), (1, 1), (3, 1)]), &keys);
        let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
        assert!(moved.len() <= 300, "{} of 1000 keys moved", moved.len());
        assert!(moved.iter().all(|&i| &*before[i] == "127.0.0.1:9002"));
        // And back: the keys return where they were.
        assert_eq!(owners(&backends(&[1, 1, 1, 1]), &keys), before);
    }

    #[test]
    fn adding_a_fifth_moves_about_a_fifth() {
        let keys = keys(1000);
        let before = owners(&backends(&[1, 1, 1, 1]), &keys);
        let after = owners(&backends(&[1, 1, 1, 1, 1]), &keys);
        let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
        assert!((100..=300).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|&i| &*after[i] == "127.0.0.1:9004"));
    }

    #[test]
    fn weights_shape_the_ring() {
        let b = backends(&[1, 3]);
        let heavy = owners(&b, &keys(2000))
            .iter()
            .filter(|l| &***l == "127.0.0.1:9001")
            .count();
        assert!((1300..=1700).contains(&heavy), "{heavy} of 2000");
    }

    #[test]
    fn a_hot_key_spills_once_its_backend_is_over_the_cap() {
        let b = backends(&[1, 1, 1, 1]);
        let bal = Balancer::new(config::Balance::HeaderHash, &b);
        let key = hash(b"hot");
        let home = bal.pick(&b, Some(key), |_| true).unwrap();
        let mut held = Vec::new();
        let mut used = [0usize; 4];
        for _ in 0..40 {
            let i = bal.pick(&b, Some(key), |_| true).unwrap();
            used[i] += 1;
            held.push(b[i].state.start_request());
            let total: u64 = b.iter().map(|x| u64::from(x.state.in_flight())).sum();
            let cap = (5 * total).div_ceil(16);
            for x in &b {
                assert!(u64::from(x.state.in_flight()) <= cap.max(1), "{used:?}");
            }
        }
        assert_eq!(used[home], used.iter().copied().max().unwrap(), "{used:?}");
        assert!(used.iter().filter(|&&n| n > 0).count() > 1, "{used:?}");
        // Once the crowd leaves, the key is home again.
        drop(held);
        assert_eq!(bal.pick(&b, Some(key), |_| true), Some(home));
    }

    #[test]
    fn retries_go_on_along_the_ring_and_no_key_is_round_robin() {
        let b = backends(&[1, 1, 1]);
        let bal = Balancer::new(config::Balance::IpHash, &b);
        let key = hash(b"10.0.0.1");
        let first = bal.pick(&b, Some(key), |_| true).unwrap();
        let second = bal.pick(&b, Some(key), |i| i != first).unwrap();
        assert_ne!(first, second);
        assert_eq!(bal.pick(&b, Some(key), |i| i != first), Some(second));
        assert_eq!(bal.pick(&b, Some(key), |_| false), None);
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[bal.pick(&b, None, |_| true).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
    }

    #[test]
    fn p2c_avoids_a_slow_backend_and_forgives_it_in_time() {
        let b = backends(&[1, 1, 1]);
        let bal = Balancer::new(config::Balance::P2cEwma, &b);
        let now = crate::clock::micros(crate::clock::now());
        b[0].state.latency.observe(Duration::from_millis(500), now);
        for x in &b[1..] {
            x.state.latency.observe(Duration::from_millis(1), now);
        }
        let slow = (0..300)
            .filter(|_| bal.pick(&b, None, |_| true) == Some(0))
            .count();
        assert_eq!(slow, 0, "the slow one loses every comparison");
        // In-flight requests weigh in: a busy fast backend loses to an idle one.
        let _busy: Vec<_> = (0..50).map(|_| b[1].state.start_request()).collect();
        assert!((0..50).all(|_| bal.pick(&b, None, |i| i != 0) == Some(2)));
        // Without samples the estimate decays: after a minute the peak is forgotten.
        let e = &b[0].state.latency;
        assert!(e.estimate(now) > 4.9e8);
        assert!(e.estimate(now + 60_000_000) < 2e6);
        // A lower sample blends in rather than replacing.
        e.observe(Duration::from_millis(1), now + 1_000_000);
        let blended = e.estimate(now + 1_000_000);
        assert!(blended > 1e6 && blended < 5e8, "{blended}");
        // No samples: the default, decaying from when the backend appeared.
        let fresh = Ewma::default().estimate(crate::clock::micros(crate::clock::now()));
        let default = DEFAULT_RTT.as_nanos() as f64;
        assert!(fresh <= default && fresh > default * 0.99, "{fresh}");
    }

    #[test]
    fn smooth_sequence_interleaves() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[1, 2]), vec![1, 0, 1]);
        assert_eq!(smooth_sequence(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn round_robin_spreads_by_weight() {
        let b = backends(&[1, 2]);
        let bal = Balancer::new(config::Balance::RoundRobin, &b);
        let mut counts = [0; 2];
        for _ in 0..300 {
            counts[bal.pick(&b, None, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 200]);
    }

    #[test]
    fn round_robin_skips_ineligible_evenly() {
        let b = backends(&[1, 1, 1]);
        let bal = Balancer::new(config::Balance::RoundRobin, &b);
        let mut counts = [0i32; 3];
        for _ in 0..100 {
            counts[bal.pick(&b, None, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((counts[0] - counts[2]).abs() <= 2, "{counts:?}");
        assert_eq!(bal.pick(&b, None, |_| false), None);
    }

    #[test]
    fn least_conn_prefers_idle_then_heavier() {
        let b = backends(&[1, 3, 1]);
        let bal = Balancer::new(config::Balance::LeastConnections, &b);
        assert_eq!(bal.pick(&b, None, |_| true), Some(1));
        let _busy = b[1].state.start_request();
        let _busy2 = b[0].state.start_request();
        assert_eq!(bal.pick(&b, None, |_| true), Some(2));
    }

    #[test]
    fn random_respects_eligibility_and_weight() {
        let b = backends(&[1, 9]);
        let bal = Balancer::new(config::Balance::Random, &b);
        let heavy = (0..1000)
            .filter(|_| bal.pick(&b, None, |_| true) == Some(1))
            .count();
        assert!(heavy > 800, "{heavy}");
        assert_eq!(bal.pick(&b, None, |i| i == 0), Some(0));
    }
}
