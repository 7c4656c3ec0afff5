//! A small log-linear latency histogram that merges across processes.
//!
//! Values are microseconds. Below 64 µs every value has its own bucket; above, each power of two is
//! split into 32 buckets, so a reported quantile is within about 3 % of the true value. Workers send
//! their histograms to the parent as sparse `(bucket, count)` lists, and the parent adds them up.

use serde::{Deserialize, Serialize};

/// Values below this have a bucket each.
const LINEAR: u64 = 64;
/// Buckets per power of two above [`LINEAR`] (2^5).
const SUB_BITS: u32 = 5;
const BUCKETS: usize = 64 + (64 - 6) * 32;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

/// Quantiles of a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// The wire form of a histogram: non-empty buckets only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sparse {
    pub buckets: Vec<(u32, u64)>,
    pub max: u64,
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.record_n(micros, 1);
    }

    /// Records `n` samples of the same value.
    pub fn record_n(&mut self, micros: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.counts[index(micros)] += n;
        self.total += n;
        self.max = self.max.max(micros);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below which `q` (0..=1) of the samples fall, as the upper edge of its bucket.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_edge(i).min(self.max);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        Summary {
            count: self.total,
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }

    pub fn to_sparse(&self) -> Sparse {
        Sparse {
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| (i as u32, *c))
                .collect(),
            max: self.max,
        }
    }

    pub fn add_sparse(&mut self, s: &Sparse) {
        for &(i, c) in &s.buckets {
            if let Some(slot) = self.counts.get_mut(i as usize) {
                *slot += c;
                self.total += c;
            }
        }
        self.max = self.max.max(s.max);
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 6
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR as usize) + (exp as usize - 6) * (1 << SUB_BITS) + sub as usize
}

fn upper_edge(i: usize) -> u64 {
    if (i as u64) < LINEAR {
        return i as u64;
    }
    let k = i - LINEAR as usize;
    let exp = (k >> SUB_BITS) as u32 + 6;
    let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    (1u64 << exp) + (sub + 1) * width - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.04, "{p50}");
        assert!((p99 / 99_000.0 - 1.0).abs() < 0.04, "{p99}");
        assert_eq!(h.quantile(1.0), 100_000);
    }

    #[test]
    fn sparse_round_trip_merges() {
        let mut a = Histogram::default();
        a.record(10);
        a.record(5_000);
        let mut b = Histogram::default();
        b.add_sparse(&a.to_sparse());
        b.add_sparse(&a.to_sparse());
        assert_eq!(b.count(), 4);
        assert_eq!(b.summary().max, 5_000);
    }
}
