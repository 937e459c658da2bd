//! Debugging a running machine from outside: gdb on QEMU's stub, and a pcap of the NIC.
//!
//! * `gdb_stops_a_core_other_than_0_and_reads_its_backtrace`: 3 cores with QEMU's gdb stub
//!   (`run --gdb`'s configuration, guest waiting at its first instruction). Debian's gdb in
//!   batch mode, started as `qemu-smp gdb` starts it (the kernel ELF, Flotilla's extension),
//!   first finds every core as a thread at the reset vector and detaches (the guest boots);
//!   once every core is online a second session breaks in the interrupt dispatcher `flotilla_interrupt_dispatch` (every core takes its
//!   timer there; the name is `#[no_mangle]` because the assembly stubs call it) on a core other
//!   than 0, and the backtrace of that core must name the dispatcher, the entry stub and, below
//!   it, the kernel code the interrupt stopped (the extension unwinds through the stub). The
//!   extension's `flotilla cores`, `flotilla channels` and `flotilla paths` must print that
//!   core's real state. Needs `gdb` (`bash qemu-smp/install-deps.sh`).
//! * `pcap_holds_the_frames_sent_and_their_echoes`: 2 cores on user networking with a forwarded
//!   UDP port and `--pcap`'s configuration; the test sends datagrams with known payloads to the
//!   UDP echo service, and the capture must parse (this file's reader, and `tshark` as a second
//!   reader) and hold each datagram on its way in and its echo on its way out.
//!
//! Every wait is bounded; gdb and QEMU are killed by PID when the test ends.

use flotilla_tests::*;
use qemu_smp::debug::{self, DebugArgs};
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails with the install command unless `program` is on the PATH.
fn require_program(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`{program}` is missing: run `bash qemu-smp/install-deps.sh` (Debian package {package})"
    );
}

/// A loopback port free now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `command` to completion, killing it (by PID) after `limit`; returns its output.
fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {description}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
            panic!("{description} did not finish in {limit:?}; killed. Output:\n{stdout}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// gdb
// ---------------------------------------------------------------------------------------------

/// The lines of gdb's output between the line `=== MARK` and the next `=== ` line.
fn section<'a>(output: &'a str, mark: &str) -> Vec<&'a str> {
    output
        .lines()
        .skip_while(|line| line.trim() != format!("=== {mark}"))
        .skip(1)
        .take_while(|line| !line.starts_with("=== "))
        .collect()
}

/// The function a backtrace line names: `#3  0x... in NAME (args) at ...` or `#1  NAME (...)`.
fn frame_function(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?;
    let rest = rest.split_once(char::is_whitespace)?.1.trim_start();
    let rest = match rest.split_once(" in ") {
        Some((address, name)) if address.starts_with("0x") => name,
        _ => rest,
    };
    let name = rest.split(" (").next()?.trim();
    (!name.is_empty()).then_some(name)
}

#[test]
fn gdb_stops_a_core_other_than_0_and_reads_its_backtrace() {
    require_program("gdb", "gdb");
    const CORES: u32 = 3;
    let elf = kernel();
    let port = free_port();
    let mut config = MachineConfig::kernel(elf.clone(), CORES, "urpc=off");
    config.network = Network::User(Vec::new());
    let options = DebugArgs {
        gdb: Some(port),
        gdb_no_wait: false,
        pcap: None,
    };
    let notes =
        debug::configure(&mut config, &options, &elf, false).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        notes.iter().any(|n| n.contains("qemu-smp -- gdb --port")),
        "{notes:?}"
    );
    let mut machine = Machine::start(&config, false).unwrap_or_else(|e| panic!("{e}"));
    // The guest waits for gdb (-S): nothing on the console yet, and a second stub on the same
    // port is refused by name.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !machine.console().iter().any(|l| l.starts_with("flotilla:")),
        "the guest ran before gdb continued it:\n{}",
        machine.console().join("\n")
    );
    let busy = debug::check_gdb_port(port).unwrap_err().to_string();
    assert!(
        busy.contains(&format!("gdb port {port} is in use")),
        "{busy}"
    );
    let batch = |commands: &[&str]| -> String {
        let mut arguments = vec!["-batch".to_string(), "-nx".to_string()];
        for line in ["set pagination off", "set confirm off"]
            .iter()
            .chain(commands)
        {
            arguments.push("-ex".into());
            arguments.push(line.to_string());
        }
        let output = run_bounded(
            &mut debug::gdb_command(&elf, port, &arguments),
            Duration::from_secs(240),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if std::env::var_os("FLOTILLA_TEST_SHOW").is_some() {
            println!("{text}");
        }
        text
    };

    // First session: every core is a thread, all at the reset vector; detaching lets the guest
    // boot. The second session then attaches to cores that are in their loops.
    let first = batch(&[
        "echo === threads\\n",
        "info threads",
        "echo === end\\n",
        "detach",
    ]);
    let threads = section(&first, "threads");
    for core in 0..CORES {
        assert!(
            threads.iter().any(
                |l| l.contains(&format!("Thread 1.{} (CPU#{core}", core + 1))
                    && l.contains("0x000000000000fff0")
            ),
            "core {core} is not a thread waiting at the reset vector; gdb said:\n{first}"
        );
    }
    line_containing(&mut machine, "all cores online", "cores online in");
    std::thread::sleep(Duration::from_millis(500));

    // Stop on a core other than 0 in the dispatcher every core runs (its timer).
    let commands = [
        "break flotilla_interrupt_dispatch if $_thread > 1",
        "continue",
        "echo === threads\\n",
        "info threads",
        "echo === backtrace\\n",
        "bt 20",
        "echo === cores\\n",
        "flotilla cores",
        "echo === channels\\n",
        "flotilla channels",
        "echo === paths\\n",
        "flotilla paths",
        "echo === end\\n",
        "delete",
        "kill",
    ];
    let text = batch(&commands);
    let context = || {
        format!(
            "gdb said:\n{text}\nconsole:\n{}",
            machine.console().join("\n")
        )
    };

    // Every core is a thread, CPU#0..: thread N is core N-1.
    let threads = section(&text, "threads");
    for core in 0..CORES {
        assert!(
            threads
                .iter()
                .any(|l| l.contains(&format!("Thread 1.{} (CPU#{core}", core + 1))),
            "no thread for core {core}; {}",
            context()
        );
    }
    let current = threads
        .iter()
        .find(|l| l.trim_start().starts_with('*'))
        .unwrap_or_else(|| panic!("no selected thread; {}", context()));
    assert!(
        !current.contains("CPU#0"),
        "the breakpoint stopped core 0, not another core: {current}; {}",
        context()
    );
    let core: u32 = current
        .split("(CPU#")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable thread line {current}; {}", context()));

    // The backtrace names the dispatcher, the stub, and kernel code below the stub (the
    // interrupted frame, unwound by the extension), every frame down to the AP's entry named.
    let backtrace = section(&text, "backtrace");
    let functions: Vec<&str> = backtrace.iter().filter_map(|l| frame_function(l)).collect();
    assert!(
        functions
            .first()
            .is_some_and(|f| f.ends_with("flotilla_interrupt_dispatch")),
        "frame #0 is not the dispatcher: {functions:?}; {}",
        context()
    );
    let stub = functions
        .iter()
        .position(|f| *f == "flotilla_isr_common")
        .unwrap_or_else(|| panic!("no flotilla_isr_common frame: {functions:?}; {}", context()));
    let below: Vec<&&str> = functions[stub + 1..]
        .iter()
        .take_while(|f| **f != "??")
        .collect();
    assert!(
        below.iter().any(|f| f.starts_with("cpudriver::")),
        "nothing named below the interrupt stub (the unwinder did not carry the backtrace into the interrupted code): {functions:?}; {}",
        context()
    );

    // The extension's views of that core, from the kernel's own types.
    let cores = section(&text, "cores");
    for index in 0..CORES {
        assert!(
            cores.iter().any(
                |l| l.starts_with(&format!("core {index} (thread {})", index + 1))
                    && l.contains(&format!("apic={index}"))
                    && l.contains(" ticks=")
            ),
            "`flotilla cores` has no line for core {index}; {}",
            context()
        );
    }
    let channels = section(&text, "channels");
    for peer in (0..CORES).filter(|&p| p != core) {
        assert!(
            channels.iter().any(|l| l
                .trim()
                .starts_with(&format!("core {core} -> core {peer}: sent="))),
            "`flotilla channels` shows no channel from core {core} to core {peer}; {}",
            context()
        );
    }
    let paths = section(&text, "paths");
    assert!(
        paths
            .iter()
            .any(|l| l.starts_with(&format!("core {core}: rx_frames="))),
        "`flotilla paths` shows no counters; {}",
        context()
    );
    assert!(
        paths
            .iter()
            .any(|l| l.trim().starts_with("path Udp port 7:")),
        "`flotilla paths` shows no UDP echo path; {}",
        context()
    );
    drop(machine);
}

// ---------------------------------------------------------------------------------------------
// pcap
// ---------------------------------------------------------------------------------------------

/// One frame of a classic pcap file.
#[derive(Debug)]
struct Record {
    frame: Vec<u8>,
}

/// Reads a classic pcap file (either byte order, micro- or nanosecond magic): checks the header
/// and the link type (1, Ethernet) and returns every record, or why it does not parse.
fn read_pcap(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let header = bytes.get(..24).ok_or("shorter than a pcap header")?;
    let magic = [header[0], header[1], header[2], header[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let word = |b: &[u8]| {
        let b = [b[0], b[1], b[2], b[3]];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let link = word(&header[20..24]);
    if link != 1 {
        return Err(format!("link type {link}, not Ethernet (1)"));
    }
    let mut records = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let record = bytes
            .get(at..at + 16)
            .ok_or_else(|| format!("record header cut at byte {at}"))?;
        let kept = word(&record[8..12]) as usize;
        let original = word(&record[12..16]) as usize;
        if kept > original {
            return Err(format!("record at {at} keeps {kept} of {original} bytes"));
        }
        let frame = bytes
            .get(at + 16..at + 16 + kept)
            .ok_or_else(|| format!("record at {at} cut short"))?;
        records.push(Record {
            frame: frame.to_vec(),
        });
        at += 16 + kept;
    }
    Ok(records)
}

/// A UDP datagram in an Ethernet frame: (source port, destination port, payload).
fn udp_in(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let header = usize::from(ip[0] & 0x0F) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[9] != 17 || header < 20 || total > ip.len() || total < header + 8 {
        return None;
    }
    let udp = &ip[header..total];
    Some((
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
        &udp[8..],
    ))
}

/// The capture file, removed when the test ends.
struct Capture(PathBuf);

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn pcap_holds_the_frames_sent_and_their_echoes() {
    require_program("tshark", "tshark");
    let elf = kernel();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let capture = Capture(
        std::env::temp_dir().join(format!("flotilla-test-{}-capture.pcap", std::process::id())),
    );
    let _ = std::fs::remove_file(&capture.0);
    let mut config = MachineConfig::kernel(elf.clone(), 2, "urpc=off");
    config.network = Network::User(vec![("udp", port, 7)]);
    let options = DebugArgs {
        gdb: None,
        gdb_no_wait: false,
        pcap: Some(capture.0.clone()),
    };
    debug::configure(&mut config, &options, &elf, false).unwrap_or_else(|e| panic!("{e}"));
    let (mut machine, _) = boot_until_ready(&config);
    line_containing(&mut machine, "the NIC", "netd: nic igb");

    // Known datagrams; each is sent until its echo comes back (the link comes up ~0.5 s of
    // virtual time after boot), at most 30 s each.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("flotilla pcap test datagram {i} of 5").into_bytes())
        .collect();
    for payload in &payloads {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut echoed = false;
        while !echoed && Instant::now() < deadline {
            socket.send_to(payload, ("127.0.0.1", port)).unwrap();
            let mut buffer = [0u8; 2048];
            while let Ok(n) = socket.recv(&mut buffer) {
                if &buffer[..n] == payload.as_slice() {
                    echoed = true;
                    break;
                }
            }
        }
        assert!(
            echoed,
            "no echo of {:?}; console:\n{}",
            String::from_utf8_lossy(payload),
            machine.console().join("\n")
        );
    }
    // QEMU writes each frame as it passes; stop it so nothing is half-written.
    machine.kill();
    drop(machine);

    let bytes = std::fs::read(&capture.0).unwrap_or_else(|e| panic!("{:?}: {e}", capture.0));
    let records =
        read_pcap(&bytes).unwrap_or_else(|why| panic!("the capture does not parse: {why}"));
    let udp: Vec<(u16, u16, &[u8])> = records.iter().filter_map(|r| udp_in(&r.frame)).collect();
    for payload in &payloads {
        let text = String::from_utf8_lossy(payload);
        assert!(
            udp.iter().any(|(_, to, data)| *to == 7 && data == payload),
            "the capture lacks the datagram {text:?} to port 7 ({} frames, {} UDP)",
            records.len(),
            udp.len()
        );
        assert!(
            udp.iter()
                .any(|(from, _, data)| *from == 7 && data == payload),
            "the capture lacks the echo of {text:?} from port 7 ({} frames, {} UDP)",
            records.len(),
            udp.len()
        );
    }
    // ARP (the guest asks for its gateway) went through the NIC too.
    assert!(
        records
            .iter()
            .any(|r| r.frame.get(12..14) == Some(&[0x08, 0x06][..])),
        "no ARP frame in the capture"
    );

    // A second reader: tshark sees as many frames, and as many UDP frames of port 7.
    let tshark = |filter: Option<&str>| -> usize {
        let mut command = Command::new("tshark");
        command.args(["-n", "-r"]).arg(&capture.0);
        if let Some(filter) = filter {
            command.args(["-Y", filter]);
        }
        let output = run_bounded(&mut command, Duration::from_secs(60));
        assert!(
            output.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).lines().count()
    };
    assert_eq!(
        tshark(None),
        records.len(),
        "tshark and this reader disagree"
    );
    let port7 = udp
        .iter()
        .filter(|(from, to, _)| *from == 7 || *to == 7)
        .count();
    assert_eq!(
        tshark(Some("udp.port == 7")),
        port7,
        "tshark and this reader disagree on the UDP frames of port 7"
    );
}

#[test]
fn the_pcap_reader_refuses_what_is_not_a_capture() {
    // The reader above must be able to fail: a truncated record, a wrong magic, a wrong link.
    let mut writer = drivers::sim::pcap::PcapWriter::new();
    writer.record(1, &[0xAA; 60]);
    let good = writer.bytes().to_vec();
    assert_eq!(read_pcap(&good).unwrap().len(), 1);
    assert!(read_pcap(&good[..good.len() - 1]).is_err());
    assert!(read_pcap(b"not a capture at all, no....").is_err());
    let mut raw_ip = good.clone();
    raw_ip[20] = 101;
    assert!(read_pcap(&raw_ip).unwrap_err().contains("link type 101"));
}
