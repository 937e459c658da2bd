//! Latency histograms: HdrHistogram (Gil Tene's high-dynamic-range histogram) from 1 ns to 60 s
//! at 3 significant digits (0.1% error), recorded in nanoseconds, read in microseconds. One per sender
//! thread, merged at the end.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Round-trip times of one run.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    /// Samples outside the histogram's range (kept apart, counted).
    out_of_range: u64,
}

/// Lowest discernible value: 1 ns (HdrHistogram's unit; a 0 ns sample is recorded as 1 ns).
const LOWEST_NS: u64 = 1;
/// Highest recordable value: 60 s.
const HIGHEST_NS: u64 = 60_000_000_000;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3)
                .expect("constant bounds are valid"),
            out_of_range: 0,
        }
    }

    /// Records one round trip of `nanos` nanoseconds.
    pub fn record_ns(&mut self, nanos: u64) {
        if self.histogram.record(nanos.max(LOWEST_NS)).is_err() {
            self.out_of_range += 1;
        }
    }

    /// Records one round trip.
    pub fn record(&mut self, round_trip: Duration) {
        self.record_ns(round_trip.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms of equal bounds merge");
        self.out_of_range += other.out_of_range;
    }

    /// Samples recorded (in range).
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Samples that were longer than 60 s.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// The value at `quantile` (0.0..=1.0) in microseconds; `None` when empty.
    pub fn quantile_us(&self, quantile: f64) -> Option<f64> {
        if self.histogram.is_empty() {
            return None;
        }
        Some(self.histogram.value_at_quantile(quantile) as f64 / 1000.0)
    }

    /// Median in microseconds.
    pub fn p50_us(&self) -> Option<f64> {
        self.quantile_us(0.50)
    }

    /// 99th percentile in microseconds.
    pub fn p99_us(&self) -> Option<f64> {
        self.quantile_us(0.99)
    }

    /// Mean in microseconds.
    pub fn mean_us(&self) -> Option<f64> {
        (!self.histogram.is_empty()).then(|| self.histogram.mean() / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = LatencyHistogram::new();
        assert_eq!(histogram.p50_us(), None);
        // 1..=1000 µs, once each.
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        assert_eq!(histogram.count(), 1000);
        let p50 = histogram.p50_us().unwrap();
        let p99 = histogram.p99_us().unwrap();
        // Three significant digits: within 0.1% of the exact order statistic.
        assert!((p50 - 500.0).abs() <= 1.0, "p50 {p50}");
        assert!((p99 - 990.0).abs() <= 1.0, "p99 {p99}");
        assert!((histogram.mean_us().unwrap() - 500.5).abs() < 1.0);
    }

    #[test]
    fn merging_adds_samples_and_extremes_are_kept_apart() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        for _ in 0..99 {
            a.record(Duration::from_micros(10));
        }
        b.record(Duration::from_millis(50));
        b.record(Duration::from_secs(120));
        b.record_ns(0); // recorded as 1 ns
        a.merge(&b);
        assert_eq!(a.count(), 101);
        assert_eq!(a.out_of_range(), 1);
        assert!((a.p50_us().unwrap() - 10.0).abs() < 0.1);
        assert!(a.quantile_us(1.0).unwrap() >= 49_900.0);
        assert!(a.quantile_us(0.0).unwrap() <= 0.002);
    }
}
