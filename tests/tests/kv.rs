//! memcached over ONE connection with keys owned by every core and values from 1 B to 1 MB
//! (memcached's default item limit): values of keys another core owns travel between cores by
//! reference in bulk buffers, both ways (the `set`'s request and the `get`'s reply). A plain
//! std-socket client on QEMU user networking (no root). Then `/stats` must list every core with
//! its transport counters, and the remote keys must have gone by reference.

use flotilla_tests::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CORES: u16 = 4;
/// Value sizes, up to 1 MB (memcached 1.6 refuses a value of exactly 1 MiB: its 1 MiB item limit
/// includes the item header, and Flotilla answers as it does).
const SIZES: [usize; 7] = [1, 54, 1_400, 4_097, 20_000, 100_000, 1_000_000];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A key the server's partition gives to `owner`.
fn key_for(owner: u16, size: usize) -> String {
    (0..100_000)
        .map(|n| format!("kv-{owner}-{size}-{n}"))
        .find(|key| netd::app::memcached::key_owner(key.as_bytes(), CORES) == owner)
        .expect("a key for every core")
}

fn value_for(key: &str, size: usize) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..size)
        .map(|i| (seed.wrapping_add((i as u32).wrapping_mul(2_654_435_761)) >> 24) as u8)
        .collect()
}

/// Connects, retrying while the guest's link comes up (bounded).
fn connect(port: u16) -> BufReader<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"version\r\n")?;
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.starts_with("VERSION") {
                Ok(reader)
            } else {
                Err(std::io::Error::other(format!("unexpected {line:?}")))
            }
        });
        match attempt {
            Ok(reader) => {
                reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                return reader;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(e) => panic!("memcached never answered: {e}"),
        }
    }
}

fn line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a reply line");
    line
}

/// Reads one `get`'s reply: the values of the `VALUE` lines, then `END`.
fn read_values(reader: &mut BufReader<TcpStream>) -> Vec<(String, Vec<u8>)> {
    let mut values = Vec::new();
    loop {
        let header = line(reader);
        if header == "END\r\n" {
            return values;
        }
        let fields: Vec<&str> = header.split_whitespace().collect();
        assert!(
            fields.len() == 4 && fields[0] == "VALUE",
            "unexpected reply line {header:?}"
        );
        let length: usize = fields[3].parse().expect("a length");
        let mut data = vec![0u8; length + 2];
        reader.read_exact(&mut data).expect("the value and CRLF");
        assert_eq!(&data[length..], b"\r\n");
        data.truncate(length);
        values.push((fields[1].to_string(), data));
    }
}

#[test]
fn one_connection_gets_values_of_1_byte_to_1_megabyte_from_every_core() {
    let (memcached, http) = (free_port(), free_port());
    let mut config = MachineConfig::kernel(kernel(), u32::from(CORES), "urpc=off");
    config.network = Network::User(vec![("tcp", memcached, 11211), ("tcp", http, 80)]);
    let (machine, _) = boot_until_ready(&config);
    let mut reader = connect(memcached);
    let mut keys = Vec::new();
    for &size in &SIZES {
        for owner in 0..CORES {
            let key = key_for(owner, size);
            let value = value_for(&key, size);
            let stream = reader.get_mut();
            stream
                .write_all(format!("set {key} {size} 0 {size}\r\n").as_bytes())
                .unwrap();
            stream.write_all(&value).unwrap();
            stream.write_all(b"\r\n").unwrap();
            let reply = line(&mut reader);
            assert_eq!(
                reply,
                "STORED\r\n",
                "set of {size} bytes on a key core {owner} owns; console:\n{}",
                machine.console().join("\n")
            );
            keys.push((key, size));
        }
    }
    for (key, size) in &keys {
        reader
            .get_mut()
            .write_all(format!("get {key}\r\n").as_bytes())
            .unwrap();
        let values = read_values(&mut reader);
        assert_eq!(values.len(), 1, "get {key}: {} values", values.len());
        assert_eq!(&values[0].0, key);
        assert!(
            values[0].1 == value_for(key, *size),
            "get {key}: {} bytes back, want {size} (content differs or short)",
            values[0].1.len()
        );
    }
    // One multi-get across every owner, in request order, 100 kB each.
    let many: Vec<&(String, usize)> = keys.iter().filter(|(_, size)| *size == 100_000).collect();
    let request: Vec<&str> = many.iter().map(|(key, _)| key.as_str()).collect();
    reader
        .get_mut()
        .write_all(format!("get {}\r\n", request.join(" ")).as_bytes())
        .unwrap();
    let values = read_values(&mut reader);
    let got: Vec<&str> = values.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(got, request, "a multi-get answers in request order");
    for ((key, size), (_, value)) in many.iter().zip(&values) {
        assert!(*value == value_for(key, *size), "multi-get {key}");
    }

    // /stats: every core, each with its transport counters; the remote values went by
    // reference: at least every remote set and every remote get reply larger than a slot (3 of
    // 4 owners are remote, whichever core the connection landed on).
    let large = SIZES.iter().filter(|&&size| size > 32).count() as u64;
    let want = large * u64::from(CORES - 1) * 2;
    let bulk_sent = |body: &str| -> u64 {
        body.split("\"bulk_sent\":")
            .skip(1)
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let mut stream = TcpStream::connect(("127.0.0.1", http)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        let _ = stream.read_to_string(&mut page);
        let body = page.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        let cores = body.matches("\"transport\":{").count();
        if (cores == usize::from(CORES) && bulk_sent(&body) >= want) || Instant::now() >= deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        body.matches("\"transport\":{").count(),
        usize::from(CORES),
        "/stats lists every core with its transport counters: {body}"
    );
    assert!(
        bulk_sent(&body) >= want,
        "{} letters by reference, want at least {want}: {body}",
        bulk_sent(&body)
    );
    drop(machine);
}
