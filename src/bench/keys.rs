//! Which key each benchmark operation touches.

use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys (YCSB's zipfian, theta 0.99): key 0 hottest.
    Zipfian,
    /// Keys in order, wrapping around, shared by all clients.
    Sequential,
}

/// Draws key indexes in `[0, key_space)`.
#[derive(Clone)]
pub struct KeyChooser {
    key_space: u64,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Uniform,
    Zipfian(Arc<Zipf>),
    Sequential(Arc<AtomicU64>),
}

impl KeyChooser {
    pub fn new(distribution: Distribution, key_space: u64) -> Self {
        assert!(key_space > 0, "an empty key space");
        let kind = match distribution {
            Distribution::Uniform => Kind::Uniform,
            Distribution::Zipfian => Kind::Zipfian(Arc::new(Zipf::new(key_space, 0.99))),
            Distribution::Sequential => Kind::Sequential(Arc::new(AtomicU64::new(0))),
        };
        Self { key_space, kind }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match &self.kind {
            Kind::Uniform => rng.gen_range(0..self.key_space),
            Kind::Zipfian(zipf) => zipf.sample(rng.gen::<f64>()).min(self.key_space - 1),
            Kind::Sequential(next) => next.fetch_add(1, Ordering::Relaxed) % self.key_space,
        }
    }
}

/// The zipfian generator of Gray et al. ("Quickly generating billion-record synthetic
/// databases"), as YCSB uses it.
struct Zipf {
    items: f64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipf {
    fn new(items: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(items);
        let zeta_2 = zeta(2.min(items));
        let items_f = items as f64;
        Self {
            items: items_f,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / items_f).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    /// `uniform` in [0, 1).
    fn sample(&self, uniform: f64) -> u64 {
        let scaled = uniform * self.zeta_n;
        if scaled < 1.0 {
            return 0;
        }
        if scaled < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        (self.items * (self.eta * uniform - self.eta + 1.0).powf(self.alpha)) as u64
    }
}

/// The bytes of key number `index`: `prefix` then the zero-padded index, padded to
/// `size` bytes, so keys sort in index order.
pub fn key_bytes(prefix: &str, index: u64, size: usize) -> Vec<u8> {
    let digits = format!("{index:020}");
    let mut key = Vec::with_capacity(size.max(prefix.len() + digits.len()));
    key.extend_from_slice(prefix.as_bytes());
    let room = size.saturating_sub(prefix.len()).max(digits.len());
    key.extend(std::iter::repeat_n(b'0', room - digits.len()));
    key.extend_from_slice(digits.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let chooser = KeyChooser::new(Distribution::Zipfian, 1000);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hits = vec![0u32; 1000];
        for _ in 0..100_000 {
            hits[chooser.next(&mut rng) as usize] += 1;
        }
        assert!(hits[0] > hits[10] && hits[10] > hits[500], "{:?}", &hits[..12]);
        assert!(hits[0] > 5_000, "the hottest key gets a large share: {}", hits[0]);
    }

    #[test]
    fn keys_sort_by_index_and_honour_the_size() {
        assert_eq!(key_bytes("b/", 42, 30).len(), 30);
        assert!(key_bytes("b/", 9, 16) < key_bytes("b/", 10, 16));
        let sequential = KeyChooser::new(Distribution::Sequential, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let drawn: Vec<u64> = (0..5).map(|_| sequential.next(&mut rng)).collect();
        assert_eq!(drawn, [0, 1, 2, 0, 1]);
    }
}
