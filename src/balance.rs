//! Backend selection: smooth weighted round robin, least connections, weighted random.
//!
//! A pick is synchronous and lock-free: round robin walks a sequence computed once per
//! snapshot with one atomic counter, least connections reads the in-flight atomics. The
//! caller passes `eligible(i)`, which hides backends that are unhealthy, draining or already
//! tried by this request; that is how retries get their next candidate.

use crate::config;
use crate::pool::Backend;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Largest weight a backend may have (keeps the round robin sequence small).
pub const MAX_WEIGHT: u32 = 1000;

/// A pool's balancer.
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    Random,
}

impl Balancer {
    /// A balancer for `backends` with the configured strategy.
    pub fn new(kind: config::Balance, backends: &[Arc<Backend>]) -> Balancer {
        match kind {
            config::Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(backends)),
            config::Balance::LeastConnections => Balancer::LeastConn(LeastConn::default()),
            config::Balance::Random => Balancer::Random,
        }
    }

    /// Index of the chosen backend among those `eligible`, or None if none is.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(eligible),
            Balancer::LeastConn(lc) => lc.pick(backends, eligible),
            Balancer::Random => random(backends, eligible),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Backend;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Backend::new(
                    &config::Backend {
                        addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                        host: None,
                        weight: w,
                        drain: false,
                    },
                    None,
                    None,
                ))
            })
            .collect()
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
            counts[bal.pick(&b, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 200]);
    }

    #[test]
    fn round_robin_skips_ineligible_evenly() {
        let b = backends(&[1, 1, 1]);
        let bal = Balancer::new(config::Balance::RoundRobin, &b);
        let mut counts = [0i32; 3];
        for _ in 0..100 {
            counts[bal.pick(&b, |i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((counts[0] - counts[2]).abs() <= 2, "{counts:?}");
        assert_eq!(bal.pick(&b, |_| false), None);
    }

    #[test]
    fn least_conn_prefers_idle_then_heavier() {
        let b = backends(&[1, 3, 1]);
        let bal = Balancer::new(config::Balance::LeastConnections, &b);
        assert_eq!(bal.pick(&b, |_| true), Some(1));
        let _busy = b[1].state.start_request();
        let _busy2 = b[0].state.start_request();
        assert_eq!(bal.pick(&b, |_| true), Some(2));
    }

    #[test]
    fn random_respects_eligibility_and_weight() {
        let b = backends(&[1, 9]);
        let bal = Balancer::new(config::Balance::Random, &b);
        let heavy = (0..1000)
            .filter(|_| bal.pick(&b, |_| true) == Some(1))
            .count();
        assert!(heavy > 800, "{heavy}");
        assert_eq!(bal.pick(&b, |i| i == 0), Some(0));
    }
}
