//! `/stats` fetched with curl inside a tap test's namespace and read as JSON, with the lookups
//! the tests share (a field of a core, a path's field, a sum over the cores) and a per-core
//! summary.

use crate::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// `/stats` fetched with `curl -sS CURL_ARGS` inside `namespace` (killed after `limit`), parsed
/// as JSON; an error names what failed (curl, or the JSON) with what curl printed.
pub fn try_stats_json_with(
    namespace: &TapNamespace,
    curl_args: &[&str],
    limit: Duration,
) -> Result<Value, String> {
    let url = format!("http://{GUEST_ADDRESS}/stats");
    let output = run_bounded(
        namespace
            .command("curl")
            .arg("-sS")
            .args(curl_args)
            .arg(&url),
        limit,
    );
    if !output.status.success() {
        return Err(format!("curl {url} failed: {}", text(&output)));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("/stats is not JSON ({e}): {}", text(&output)))
}

/// `/stats` as JSON (`curl -sS --max-time 10`, killed after 20 s), or what failed.
pub fn try_stats_json(namespace: &TapNamespace) -> Result<Value, String> {
    try_stats_json_with(namespace, &["--max-time", "10"], Duration::from_secs(20))
}

/// `/stats` as JSON ([`try_stats_json`]); panics with what failed.
pub fn stats_json(namespace: &TapNamespace) -> Value {
    try_stats_json(namespace).unwrap_or_else(|e| panic!("{e}"))
}

/// The cores' entries of a `/stats` document (none if it has no `cores` array).
pub fn cores(stats: &Value) -> &[Value] {
    stats["cores"].as_array().map_or(&[], Vec::as_slice)
}

/// The number at JSON pointer `pointer` (`/memory/heap_used`) of `value`; panics naming the
/// field and the value when it is missing or not a whole number.
pub fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no whole number at {pointer} in /stats: {value}"))
}

/// The entry of path `name` (`udp:7`, `tcp:80`, `icmp`) in one core's entry, if it lists it.
pub fn path<'a>(core: &'a Value, name: &str) -> Option<&'a Value> {
    core["paths"].as_array()?.iter().find(|p| p["path"] == name)
}

/// A path's field (JSON pointer, `/tx_packets`) on one core, if both are there.
pub fn path_field(core: &Value, name: &str, field: &str) -> Option<u64> {
    path(core, name)?.pointer(field)?.as_u64()
}

/// Sums `pick` over every core of a `/stats` document.
pub fn sum(stats: &Value, pick: impl Fn(&Value) -> Option<u64>) -> u64 {
    cores(stats).iter().filter_map(pick).sum()
}

/// `/stats` summarised per core, one map a core: `core`, `paths` (how many it lists),
/// `rx_frames`, `tx_frames`, `forwarded_out`, `forwarded_in`, `drops` (summed over the reasons),
/// and the path counters `icmp_packets`, `udp7_packets`, `tcp7_connections`,
/// `tcp80_connections`, `tcp11211_connections`, `tcp11211_peer_messages` (0 where the core does
/// not list the path). An error if curl fails, the JSON does not parse, has no cores or a core's
/// entry lacks a field.
pub fn fetch_stats(namespace: &TapNamespace) -> Result<Vec<BTreeMap<String, String>>, String> {
    let doc = try_stats_json(namespace)?;
    let unexpected = |what: &str| format!("/stats is not the expected JSON ({what}):\n{doc}");
    let entries = doc["cores"]
        .as_array()
        .ok_or_else(|| unexpected("no cores array"))?;
    if entries.is_empty() {
        return Err(unexpected("no cores in /stats"));
    }
    entries
        .iter()
        .map(|core| summary(core).ok_or_else(|| unexpected("a core's entry lacks a field")))
        .collect()
}

/// One core's entry of `/stats` as [`fetch_stats`] summarises it.
fn summary(core: &Value) -> Option<BTreeMap<String, String>> {
    let paths = core["paths"].as_array()?.len() as u64;
    let drops = core["drops"]
        .as_object()?
        .values()
        .map(Value::as_u64)
        .sum::<Option<u64>>()?;
    let path = |name: &str, field: &str| path_field(core, name, field).unwrap_or(0);
    let mut out = BTreeMap::new();
    for key in [
        "core",
        "rx_frames",
        "tx_frames",
        "forwarded_out",
        "forwarded_in",
    ] {
        out.insert(key.to_string(), core[key].as_u64()?.to_string());
    }
    for (key, value) in [
        ("paths", paths),
        ("drops", drops),
        ("icmp_packets", path("icmp", "/packets")),
        ("udp7_packets", path("udp:7", "/packets")),
        ("tcp7_connections", path("tcp:7", "/connections")),
        ("tcp80_connections", path("tcp:80", "/connections")),
        ("tcp11211_connections", path("tcp:11211", "/connections")),
        (
            "tcp11211_peer_messages",
            path("tcp:11211", "/peer_messages"),
        ),
    ] {
        out.insert(key.to_string(), value.to_string());
    }
    Some(out)
}
