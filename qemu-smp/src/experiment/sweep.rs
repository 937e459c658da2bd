//! Pieces the experiments share: flows spread over the guest's queues, one open-loop or
//! closed-loop echo measurement, rate ladders, summaries of a series, a memcached's counters.

use super::guest::Endpoint;
use super::ExperimentError;
use loadgen::{Arrivals, Outcome, Pace, Request, UdpLoad};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// UDP and TCP echo.
pub const ECHO_PORT: u16 = 7;
/// memcached.
pub const MEMCACHED_PORT: u16 = 11211;
/// HTTP (Flotilla's page and `/stats`).
pub const HTTP_PORT: u16 = 80;
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

/// Sends one `stats` command (`stats`, `stats flotilla`) to the memcached at `endpoint` on a
/// connection of its own and returns the counters that are not zero as `name=value` words.
pub fn memcached_stats(endpoint: &Endpoint, command: &str) -> Result<String, ExperimentError> {
    let reply = exchange(
        endpoint,
        MEMCACHED_PORT,
        format!("{command}\r\n"),
        |reply| reply.ends_with(b"END\r\n"),
    )?;
    Ok(nonzero_stats(&String::from_utf8_lossy(&reply)))
}

/// `GET path` from the guest's HTTP server (port 80) on a connection of its own: the body.
pub fn http_get(endpoint: &Endpoint, path: &str) -> Result<String, ExperimentError> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n");
    let reply = exchange(endpoint, HTTP_PORT, request, |_| false)?;
    let text = String::from_utf8_lossy(&reply);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(ExperimentError::Guest(format!(
            "GET {}{path}: {}",
            endpoint.at(HTTP_PORT),
            text.lines().next().unwrap_or("no reply")
        ))),
    }
}

/// Where a Flotilla guest dropped frames so far, from its `/stats`: per core the turns that
/// withheld receive or left frames in the ring at the quota, the shared FIFO's drops (the
/// `netd.lrp=off` baseline), and for each path of `paths` its packets and its drops at its
/// queue, its socket and on transmit (cumulative since boot).
pub fn flotilla_drops(endpoint: &Endpoint, paths: &[&str]) -> Result<String, ExperimentError> {
    let body = http_get(endpoint, "/stats")?;
    let stats: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| ExperimentError::Guest(format!("/stats is not JSON: {e}")))?;
    let number = |value: &serde_json::Value, path: &[&str]| -> u64 {
        path.iter()
            .try_fold(value, |v, key| v.get(key))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    for core in stats["cores"].as_array().into_iter().flatten() {
        let mut text = format!(
            "core {}: rx_withheld={} rx_quota_reached={} shared_queue_drops={}",
            number(core, &["core"]),
            number(core, &["rx_withheld"]),
            number(core, &["rx_quota_reached"]),
            number(core, &["drops", "shared_queue"])
        );
        for path in core["paths"].as_array().into_iter().flatten() {
            let name = path["path"].as_str().unwrap_or("");
            if paths.contains(&name) {
                text += &format!(
                    "; {name} packets={} drops queue={} socket={} transmit={}",
                    number(path, &["packets"]),
                    number(path, &["drops", "queue"]),
                    number(path, &["drops", "socket"]),
                    number(path, &["drops", "transmit"])
                );
            }
        }
        out.push(text);
    }
    Ok(out.join(" | "))
}

/// Sends `request` to `endpoint:port` on a TCP connection of its own (from the endpoint's
/// namespace) and reads until `complete` says so or the server closes (3 s connect, 5 s read
/// limits).
fn exchange(
    endpoint: &Endpoint,
    port: u16,
    request: String,
    complete: fn(&[u8]) -> bool,
) -> Result<Vec<u8>, ExperimentError> {
    let target = endpoint.at(port);
    let netns = endpoint.netns.clone();
    std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        if let Some(path) = &netns {
            loadgen::sys::join_network_namespace(path)?;
        }
        let mut stream = TcpStream::connect_timeout(&target.into(), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(request.as_bytes())?;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 4096];
        while !complete(&reply) {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&chunk[..n]);
        }
        Ok(reply)
    })
    .join()
    .map_err(|_| ExperimentError::Setup("the connection thread panicked".into()))?
    .map_err(|e| ExperimentError::Guest(format!("{target}: {e}")))
}

/// `STAT name value` lines whose value is not 0, as `name=value` words.
fn nonzero_stats(reply: &str) -> String {
    reply
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("STAT")).then_some(())?;
            let (name, value) = (words.next()?, words.next()?);
            (value != "0").then(|| format!("{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
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

    #[test]
    fn stats_keep_the_counters_that_moved() {
        let reply = "STAT remote_requests 12\r\nSTAT peer_send_failures 0\r\nSTAT version 1.6.18\r\nEND\r\n";
        assert_eq!(nonzero_stats(reply), "remote_requests=12 version=1.6.18");
        assert_eq!(nonzero_stats("ERROR\r\n"), "");
    }
}
