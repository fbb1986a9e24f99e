//! A log-bucket latency histogram: values below 256 are exact, larger values fall into buckets
//! whose width is 1/128 of their lower bound, so a reported percentile is at most ~0.8% above
//! the true one. Memory is fixed (a few thousand counters), recording is O(1) and two
//! histograms merge by adding counters, which suits one histogram per thread.

/// Values at and above this are clamped (2^40 µs is about 12 days).
const MAX_VALUE: u64 = (1 << 40) - 1;
/// Values below `SUB` get a bucket each; above, each power of two is split into `HALF` buckets.
const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;

/// Counts of non-negative integer samples (the bench records microseconds).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

fn index(value: u64) -> usize {
    let v = value.min(MAX_VALUE);
    let idx = if v < SUB {
        v
    } else {
        // floor(log2 v) >= SUB_BITS, so shift >= 1 and top lies in [HALF, SUB).
        let shift = u64::from(63 - v.leading_zeros() - (SUB_BITS - 1));
        let top = v >> shift;
        SUB + (shift - 1) * HALF + (top - HALF)
    };
    usize::try_from(idx).unwrap_or(usize::MAX)
}

/// The smallest and largest value that land in bucket `idx`.
fn bounds(idx: usize) -> (u64, u64) {
    let idx = idx as u64;
    if idx < SUB {
        return (idx, idx);
    }
    let k = idx - SUB;
    let shift = k / HALF + 1;
    let top = k % HALF + HALF;
    (top << shift, ((top + 1) << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn record(&mut self, value: u64) {
        let idx = index(value);
        if self.counts.len() <= idx {
            self.counts.resize(idx + 1, 0);
        }
        if let Some(slot) = self.counts.get_mut(idx) {
            *slot += 1;
        }
        if self.count == 0 || value < self.min {
            self.min = value;
        }
        self.max = self.max.max(value);
        self.count += 1;
        self.sum += u128::from(value);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        if self.count == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.count += other.count;
        self.sum += other.sum;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample, if any.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// Smallest sample, if any.
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// Arithmetic mean, if any.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0.0–1.0): the upper bound of the bucket holding the sample of
    /// rank ceil(q·count), never above the largest sample nor below the smallest.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // Float rounding must not push an exact rank (e.g. 0.99 · 100) to the next integer.
        let rank = ((q * self.count as f64) - 1e-9).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (idx, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (_, high) = bounds(idx);
                return Some(high.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut expected = 0usize;
        let mut v = 0u64;
        while v < 1 << 20 {
            let idx = index(v);
            assert!(idx == expected || idx == expected + 1, "gap at {v}");
            expected = idx;
            let (low, high) = bounds(idx);
            assert!(low <= v && v <= high, "{v} outside {low}..={high}");
            v += 1 + v / 300;
        }
        let (low, high) = bounds(index(MAX_VALUE));
        assert!(low <= MAX_VALUE && MAX_VALUE <= high);
        assert_eq!(index(u64::MAX), index(MAX_VALUE));
    }

    #[test]
    fn bucket_width_is_within_one_percent() {
        for v in [300u64, 1_000, 12_345, 999_999, 1 << 30] {
            let (low, high) = bounds(index(v));
            assert!(
                ((high - low) as f64) / (low as f64) < 0.01,
                "{v}: {low}..{high}"
            );
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.min(), Some(1));
        assert_eq!(h.max(), Some(100));
        assert_eq!(h.mean(), Some(50.5));
    }

    #[test]
    fn large_values_are_close() {
        let mut h = Histogram::new();
        // 1 ms .. 1000 ms in µs, uniformly.
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.01, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.01, "{p99}");
        assert_eq!(h.quantile(1.0), Some(1_000_000));
        assert_eq!(h.max(), Some(1_000_000));
    }

    #[test]
    fn a_single_outlier_shows_in_max_not_p99() {
        let mut h = Histogram::new();
        for _ in 0..999 {
            h.record(2_000);
        }
        h.record(5_000_000);
        let p99 = h.quantile(0.99).unwrap();
        assert!((2_000..2_020).contains(&p99), "{p99}");
        assert_eq!(h.max(), Some(5_000_000));
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut all = Histogram::new();
        for v in 0..5_000u64 {
            let x = v * 37 % 10_007;
            if v % 3 == 0 {
                a.record(x);
            } else {
                b.record(x);
            }
            all.record(x);
        }
        let mut merged = Histogram::new();
        merged.merge(&a);
        merged.merge(&b);
        merged.merge(&Histogram::new());
        assert_eq!(merged.count(), all.count());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.quantile(q), all.quantile(q), "q={q}");
        }
        assert_eq!(merged.min(), all.min());
        assert_eq!(merged.max(), all.max());
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
        assert_eq!(h.mean(), None);
    }
}
