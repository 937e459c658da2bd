//! Rate control for an open-loop generator: when each request is due.
//!
//! A [`Schedule`] turns a rate and an arrival process (constant spacing or Poisson, i.e.
//! exponentially distributed gaps) into a sequence of due times measured from the start of the
//! run. The sender asks [`Schedule::due`] how many requests are due at "now" and sends exactly
//! those, however late it is: the offered load never depends on how fast the server answers
//! (no coordinated omission). Time is an argument, so the schedule is tested without a clock.

use std::time::Duration;

/// How arrivals are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrivals {
    /// Exactly `1/rate` apart.
    Constant,
    /// A Poisson process: gaps drawn from an exponential distribution of mean `1/rate`.
    Poisson,
}

/// A small, fast, seedable random number generator (SplitMix64; Steele, Lea, Flood, OOPSLA
/// 2014). Good enough for arrival gaps and key choice; not for cryptography.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in (0, 1]: never 0, so its logarithm is finite.
    pub fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A uniform integer in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound.max(1))) >> 64) as u64
    }
}

/// The due times of one sender's requests.
#[derive(Clone, Debug)]
pub struct Schedule {
    arrivals: Arrivals,
    /// Mean gap in nanoseconds.
    mean_gap_ns: f64,
    /// The next request's due time, nanoseconds from the start.
    next_ns: f64,
    random: SplitMix64,
    issued: u64,
}

impl Schedule {
    /// Requests at `rate` per second (must be > 0) spaced by `arrivals`; `seed` picks the
    /// Poisson sequence (use a different seed per sender thread).
    pub fn new(rate: f64, arrivals: Arrivals, seed: u64) -> Self {
        let mean_gap_ns = 1e9 / rate.max(1e-3);
        let mut schedule = Self {
            arrivals,
            mean_gap_ns,
            next_ns: 0.0,
            random: SplitMix64::new(seed),
            issued: 0,
        };
        schedule.next_ns = schedule.gap();
        schedule
    }

    fn gap(&mut self) -> f64 {
        match self.arrivals {
            Arrivals::Constant => self.mean_gap_ns,
            Arrivals::Poisson => -self.random.next_unit().ln() * self.mean_gap_ns,
        }
    }

    /// How many requests are due at `elapsed` since the start and not yet issued, at most
    /// `limit`; they count as issued. Requests beyond `limit` stay due for the next call.
    pub fn due(&mut self, elapsed: Duration, limit: usize) -> usize {
        let now = elapsed.as_nanos() as f64;
        let mut count = 0;
        while count < limit && self.next_ns <= now {
            count += 1;
            self.next_ns += self.gap();
        }
        self.issued += count as u64;
        count
    }

    /// How long after `elapsed` the next request is due (zero if it is due already).
    pub fn until_next(&self, elapsed: Duration) -> Duration {
        let now = elapsed.as_nanos() as f64;
        Duration::from_nanos((self.next_ns - now).max(0.0) as u64)
    }

    /// Requests issued so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_issues_exactly_rate_times_time() {
        let mut schedule = Schedule::new(1000.0, Arrivals::Constant, 1);
        // Asked every 250 µs for one second: 1000 requests, never more than due.
        let mut total = 0;
        for step in 1..=4000u64 {
            total += schedule.due(Duration::from_micros(step * 250), usize::MAX);
            assert!(
                total as u64 <= step * 250 / 1000,
                "ahead of schedule at {step}"
            );
        }
        assert_eq!(total, 1000);
        assert_eq!(schedule.issued(), 1000);
    }

    #[test]
    fn a_late_sender_catches_up_without_losing_requests() {
        let mut schedule = Schedule::new(10_000.0, Arrivals::Constant, 1);
        // 10 ms late: 100 requests are due; a batch limit of 32 leaves the rest due.
        assert_eq!(schedule.due(Duration::from_millis(10), 32), 32);
        assert_eq!(schedule.due(Duration::from_millis(10), 32), 32);
        assert_eq!(schedule.due(Duration::from_millis(10), 1000), 36);
        assert_eq!(
            schedule.until_next(Duration::from_millis(10)),
            Duration::from_micros(100)
        );
        assert_eq!(schedule.due(Duration::from_millis(10), 1000), 0);
    }

    #[test]
    fn poisson_arrivals_have_the_mean_rate_and_exponential_gaps() {
        let rate = 50_000.0;
        let mut schedule = Schedule::new(rate, Arrivals::Poisson, 42);
        // Gaps: walk the schedule one request at a time.
        let mut gaps = Vec::new();
        let mut previous = 0.0;
        for _ in 0..100_000 {
            let due_at = schedule.next_ns;
            gaps.push(due_at - previous);
            previous = due_at;
            assert_eq!(
                schedule.due(Duration::from_nanos(due_at.ceil() as u64), 1),
                1
            );
        }
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let variance = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        let expected = 1e9 / rate;
        assert!(
            (mean / expected - 1.0).abs() < 0.02,
            "mean gap {mean} ns, expected {expected}"
        );
        // An exponential distribution's standard deviation equals its mean (CV = 1); constant
        // spacing would give 0.
        let cv = variance.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.03, "coefficient of variation {cv}");
        // Memorylessness: P(gap > mean) = 1/e.
        let above = gaps.iter().filter(|g| **g > expected).count() as f64 / gaps.len() as f64;
        assert!(
            (above - (-1.0f64).exp()).abs() < 0.01,
            "P(gap > mean) = {above}"
        );
    }

    #[test]
    fn random_numbers_are_uniform_and_seeded() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[a.below(10) as usize] += 1;
        }
        for count in counts {
            assert!((9_500..10_500).contains(&count), "{counts:?}");
        }
        assert!((0..1000).all(|_| a.next_unit() > 0.0));
    }
}
