//! Pieces the experiments share: flows spread over the guest's queues, one open-loop or
//! closed-loop echo measurement, rate ladders, summaries of a series.

use super::guest::Endpoint;
use super::ExperimentError;
use loadgen::{Arrivals, Outcome, Pace, Request, UdpLoad};
use std::time::Duration;

/// UDP and TCP echo.
pub const ECHO_PORT: u16 = 7;
/// memcached.
pub const MEMCACHED_PORT: u16 = 11211;
/// A port nobody serves (the isolation experiment's flood goes there).
pub const DISCARD_PORT: u16 = 9;

/// `flows` source ports to `endpoint:port` spread evenly over `queues` queues.
pub fn spread(
    endpoint: &Endpoint,
    port: u16,
    flows: usize,
    queues: u32,
    range: std::ops::Range<u16>,
) -> Vec<u16> {
    loadgen::flows::spread_ports(
        endpoint.source,
        endpoint.address,
        port,
        flows,
        queues.clamp(1, 16) as u16,
        range,
    )
}

/// An echo load on `ports` with pacing `pace` for `duration`.
pub fn echo_load(endpoint: &Endpoint, ports: &[u16], pace: Pace, duration: Duration) -> UdpLoad {
    UdpLoad {
        source: endpoint.source,
        target: endpoint.at(ECHO_PORT),
        ports: ports.to_vec(),
        pace,
        request: Request::Echo { bytes: 64 },
        duration,
        drain: Duration::from_millis(250),
        threads: 0,
        netns: endpoint.netns.clone(),
        seed: 1,
    }
}

/// Open-loop Poisson echo at `rate` requests per second.
pub fn open_echo(
    endpoint: &Endpoint,
    ports: &[u16],
    rate: f64,
    duration: Duration,
) -> Result<Outcome, ExperimentError> {
    let pace = Pace::Open {
        rate,
        arrivals: Arrivals::Poisson,
    };
    Ok(loadgen::udp::run(&echo_load(
        endpoint, ports, pace, duration,
    ))?)
}

/// Closed-loop echo, `window` outstanding per flow: the most the guest answers.
pub fn closed_echo(
    endpoint: &Endpoint,
    ports: &[u16],
    window: u32,
    duration: Duration,
) -> Result<Outcome, ExperimentError> {
    let pace = Pace::Closed {
        window,
        timeout: Duration::from_millis(50),
    };
    Ok(loadgen::udp::run(&echo_load(
        endpoint, ports, pace, duration,
    ))?)
}

/// `points` rates from `low` to `high`, evenly spaced on a log scale.
pub fn log_rates(low: f64, high: f64, points: usize) -> Vec<f64> {
    let points = points.max(2);
    (0..points)
        .map(|i| {
            let t = i as f64 / (points - 1) as f64;
            (low.ln() + t * (high.ln() - low.ln())).exp().round()
        })
        .collect()
}

/// The median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A rate for people: `31.2 k/s`.
pub fn rate_text(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladders_medians_and_text() {
        assert_eq!(
            log_rates(1000.0, 100_000.0, 3),
            vec![1000.0, 10_000.0, 100_000.0]
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(rate_text(31_234.0), "31.2 k/s");
        assert_eq!(rate_text(999.0), "999/s");
    }
}
