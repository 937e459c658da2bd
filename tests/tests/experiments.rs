//! Every experiment of `qemu-smp experiment`, in quick mode, one per test: the CSV must have the
//! promised columns (in order, extra columns after them) and the rows of every system and mode
//! the experiment promises, the PNG must decode, and the provenance file must name the commit,
//! QEMU and the generator's ceiling. No figure is judged: the numbers are measurements of a
//! shared 2-core host. Needs root (network namespaces, cgroup caps), QEMU, and Debian's package
//! tools for the Linux guest (`bash qemu-smp/install-deps.sh`). Run one at a time
//! (`--test-threads=1`): each boots guests.

use qemu_smp::experiment::{self, Options};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A fresh output folder for one test.
fn output(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flotilla-experiments-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary folder");
    dir
}

/// Splits one CSV line (RFC 4180 quoting).
fn cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cells.last_mut().expect("a cell").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(String::new()),
            (c, _) => cells.last_mut().expect("a cell").push(c),
        }
    }
    cells
}

/// Runs `name` quick and returns its rows as column → value maps (after checking the header,
/// the PNG and the provenance file).
fn run(name: &str, columns: &[&str]) -> Vec<BTreeMap<String, String>> {
    let dir = output(name);
    let summary =
        experiment::run(name, Options::quick(&dir)).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{summary}");
    let csv = std::fs::read_to_string(dir.join(format!("{name}.csv"))).expect("the CSV");
    let mut lines = csv.lines();
    let header = cells(lines.next().expect("a header"));
    assert!(
        header.len() >= columns.len() && header[..columns.len()] == *columns,
        "{name}: header {header:?} does not start with {columns:?}"
    );
    let rows: Vec<BTreeMap<String, String>> = lines
        .map(|line| {
            let row = cells(line);
            assert_eq!(
                row.len(),
                header.len(),
                "{name}: row '{line}' has {} cells",
                row.len()
            );
            header.iter().cloned().zip(row).collect()
        })
        .collect();
    assert!(!rows.is_empty(), "{name}: no rows");
    check_png(&dir.join(format!("{name}.png")));
    let meta = std::fs::read_to_string(dir.join(format!("{name}.meta.json")))
        .expect("the provenance file");
    for key in [
        "git_commit",
        "qemu_version",
        "host_cpu_model",
        "load_average_start",
        "generator",
        "plain_client_echoes_per_s",
    ] {
        assert!(
            meta.contains(key),
            "{name}: provenance lacks {key}:\n{meta}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

fn check_png(path: &Path) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{}: not a PNG: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut pixels)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        frame.width >= 400 && frame.height >= 300,
        "{}: {}x{}",
        path.display(),
        frame.width,
        frame.height
    );
    let data = &pixels[..frame.buffer_size()];
    assert!(
        data.iter().any(|b| *b != data[0]),
        "{}: a blank image",
        path.display()
    );
}

/// The distinct values of `(a, b)` columns.
fn pairs(rows: &[BTreeMap<String, String>], a: &str, b: &str) -> BTreeSet<(String, String)> {
    rows.iter().map(|r| (r[a].clone(), r[b].clone())).collect()
}

fn number(row: &BTreeMap<String, String>, column: &str) -> f64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column} = '{}' is not a number: {row:?}", row[column]))
}

#[test]
fn urpc_matrix() {
    let rows = run("urpc-matrix", &["from", "to", "p50_cycles", "p99_cycles"]);
    let got = pairs(&rows, "from", "to");
    let want: BTreeSet<(String, String)> = (0..8)
        .flat_map(|a| {
            (0..8)
                .filter(move |b| *b != a)
                .map(move |b| (a.to_string(), b.to_string()))
        })
        .collect();
    assert_eq!(got, want, "every ordered pair of 8 cores once");
    assert_eq!(rows.len(), 56);
    for row in &rows {
        assert!(
            number(row, "p99_cycles") >= number(row, "p50_cycles"),
            "{row:?}"
        );
    }
}

#[test]
fn livelock() {
    let rows = run(
        "livelock",
        &[
            "system",
            "mode",
            "offered_pps",
            "delivered_pps",
            "guest_cpu_limit",
        ],
    );
    let want: BTreeSet<(String, String)> = [
        ("flotilla", "poll"),
        ("flotilla", "interrupt"),
        ("linux", "napi"),
    ]
    .iter()
    .map(|(s, m)| (s.to_string(), m.to_string()))
    .collect();
    assert_eq!(pairs(&rows, "system", "mode"), want);
    let limits: BTreeSet<&String> = rows.iter().map(|r| &r["guest_cpu_limit"]).collect();
    assert_eq!(
        limits.len(),
        1,
        "one CPU limit for every system: {limits:?}"
    );
    for (system, mode) in &want {
        let series: Vec<_> = rows
            .iter()
            .filter(|r| &r["system"] == system && &r["mode"] == mode)
            .collect();
        assert!(
            series.len() >= 4,
            "{system}/{mode}: {} points",
            series.len()
        );
        // The sweep's requested rates rise (what the guest accepted is a measurement).
        let requested: Vec<f64> = series.iter().map(|r| number(r, "requested_pps")).collect();
        assert!(
            requested.windows(2).all(|w| w[1] > w[0]),
            "{system}/{mode}: the requested load must rise: {requested:?}"
        );
        for row in &series {
            assert!(number(row, "delivered_pps") >= 0.0);
        }
    }
}

#[test]
fn isolation() {
    let rows = run(
        "isolation",
        &[
            "system",
            "mode",
            "flood_pps",
            "victim_p50_us",
            "victim_p99_us",
            "victim_loss",
        ],
    );
    let want: BTreeSet<(String, String)> = [
        ("flotilla", "lrp-on"),
        ("flotilla", "lrp-off"),
        ("linux", "napi"),
    ]
    .iter()
    .map(|(s, m)| (s.to_string(), m.to_string()))
    .collect();
    assert_eq!(pairs(&rows, "system", "mode"), want);
    // Every configuration meets both floods, each under one CPU limit for every system.
    let floods: BTreeSet<String> = rows.iter().map(|r| r["flood"].clone()).collect();
    let want_floods: BTreeSet<String> = ["udp-discard", "icmp-echo"]
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(floods, want_floods);
    for flood in &floods {
        let limits: BTreeSet<&String> = rows
            .iter()
            .filter(|r| &r["flood"] == flood)
            .map(|r| &r["guest_cpu_limit"])
            .collect();
        assert_eq!(
            limits.len(),
            1,
            "{flood}: one CPU limit for every system: {limits:?}"
        );
    }
    for (system, mode) in &want {
        for flood in &floods {
            let series: Vec<_> = rows
                .iter()
                .filter(|r| &r["system"] == system && &r["mode"] == mode && &r["flood"] == flood)
                .collect();
            assert!(
                series.len() >= 3,
                "{system}/{mode}/{flood}: {} points",
                series.len()
            );
            assert_eq!(
                number(series[0], "flood_pps"),
                0.0,
                "{system}/{mode}/{flood}: the sweep starts without flood"
            );
            let requested: Vec<f64> = series
                .iter()
                .map(|r| number(r, "flood_requested_pps"))
                .collect();
            assert!(
                requested.windows(2).all(|w| w[1] > w[0]),
                "{system}/{mode}/{flood}: the requested flood must rise: {requested:?}"
            );
            for row in &series {
                let loss = number(row, "victim_loss");
                assert!((0.0..=1.0).contains(&loss), "{row:?}");
            }
        }
    }
}

#[test]
fn latency_load() {
    let rows = run(
        "latency-load",
        &[
            "system",
            "workload",
            "offered_rps",
            "achieved_rps",
            "p50_us",
            "p99_us",
        ],
    );
    let want: BTreeSet<(String, String)> = ["flotilla", "linux"]
        .iter()
        .flat_map(|s| {
            ["udp-echo", "memcached"]
                .iter()
                .map(move |w| (s.to_string(), w.to_string()))
        })
        .collect();
    assert_eq!(pairs(&rows, "system", "workload"), want);
    for (system, workload) in &want {
        let series: Vec<_> = rows
            .iter()
            .filter(|r| &r["system"] == system && &r["workload"] == workload)
            .collect();
        assert!(
            series.len() >= 3,
            "{system}/{workload}: {} points",
            series.len()
        );
        let requested: Vec<f64> = series.iter().map(|r| number(r, "requested_rps")).collect();
        assert!(
            requested.windows(2).all(|w| w[1] > w[0]),
            "{system}/{workload}: the requested load must rise: {requested:?}"
        );
    }
}

#[test]
fn scaling() {
    let rows = run("scaling", &["system", "cores", "throughput_rps"]);
    let want: BTreeSet<(String, String)> = ["flotilla", "linux"]
        .iter()
        .flat_map(|s| {
            ["1", "2", "4"]
                .iter()
                .map(move |c| (s.to_string(), c.to_string()))
        })
        .collect();
    assert_eq!(pairs(&rows, "system", "cores"), want);
    for row in &rows {
        assert!(number(row, "throughput_rps") >= 0.0);
        assert!(
            row.contains_key("vcpu_share") && number(row, "vcpu_share") > 0.0,
            "{row:?}"
        );
    }
}

#[test]
fn csv_cells_split_like_rfc_4180() {
    assert_eq!(
        cells("a,\"b, c\",\"d \"\"e\"\"\",,"),
        vec!["a", "b, c", "d \"e\"", "", ""]
    );
}

#[test]
fn an_unknown_experiment_is_named() {
    let error = experiment::run("no-such-figure", Options::quick(&output("unknown")))
        .expect_err("an error");
    let text = error.to_string();
    assert!(
        text.contains("no-such-figure") && text.contains("livelock"),
        "{text}"
    );
}
