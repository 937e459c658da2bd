//! 16 cores on QEMU's igb, which offers 10 MSI-X vectors: queues 9–15 share vectors 0–6 and are
//! woken by the IPI the vector's core forwards (docs/cpudriver.md, "Every queue wakes its
//! core"). UDP echo flows chosen by the Toeplitz hash for every one of the 16 queues must all be
//! answered. The client (Python, std sockets) runs in a network namespace this test creates with
//! a tap device (root); it also prints each queue's median round trip, a figure, not a verdict.

use drivers::nic::QueueId;
use drivers::rss::{self, FlowTuple, DEFAULT_KEY};
use flotilla_tests::*;
use qemu_smp::tap::{TapNamespace, GUEST_ADDRESS};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CORES: u16 = 16;

/// argv: guest, then `QUEUE:PORT` items; 8 datagrams per flow, each tried up to 3 times (1 s).
/// Prints `flow QUEUE PORT ECHOED/8 p50_us`.
const CLIENT: &str = r#"
import socket, sys, time
guest = sys.argv[1]
deadline = time.monotonic() + 120
for item in sys.argv[2:]:
    queue, port = item.split(':')
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('10.0.2.2', int(port)))
    s.settimeout(1.0)
    echoed, times = 0, []
    for i in range(8):
        message = ('queue %s port %s datagram %d' % (queue, port, i)).encode()
        for attempt in range(3):
            if time.monotonic() > deadline:
                break
            sent = time.perf_counter()
            s.sendto(message, (guest, 7))
            try:
                data, _ = s.recvfrom(2048)
                if data == message:
                    echoed += 1
                    times.append((time.perf_counter() - sent) * 1e6)
                    break
            except socket.timeout:
                pass
        time.sleep(0.003)
    s.close()
    times.sort()
    print('flow %s %s %d/8 %.0f' % (queue, port, echoed, times[len(times) // 2] if times else -1), flush=True)
"#;

#[test]
fn every_one_of_16_queues_is_served_with_10_msix_vectors() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "this test creates a network namespace: run it as root"
    );
    let namespace = TapNamespace::create(&format!("flotilla-test-{}-vectors", std::process::id()))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = MachineConfig::kernel(kernel(), u32::from(CORES), "urpc=off");
    config.memory_mb = 2048;
    config.network = Network::Tap {
        namespace: namespace.name.clone(),
        tap: namespace.tap.clone(),
    };
    let mut machine = Machine::start(&config, false).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let console = machine.console();
        if let Some(line) = console
            .iter()
            .find(|l| is_failure_line(l) || l.contains("networking off"))
        {
            panic!("boot failed: {line}\n{}", console.join("\n"));
        }
        let up = (0..CORES)
            .filter(|core| {
                let prefix = format!("netd: core {core} up");
                console.iter().any(|l| l.starts_with(&prefix))
            })
            .count();
        if up == usize::from(CORES) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every stack came up:\n{}",
            console.join("\n")
        );
        let _ = machine.wait_for("a console line", Duration::from_millis(500), |_| true);
    }
    let table = rss::default_table(CORES);
    let flow = FlowTuple::V4 {
        source: [10, 0, 2, 2],
        destination: [10, 0, 2, 15],
        ports: Some((0, 7)),
    };
    let mut items = Vec::new();
    for queue in 0..CORES {
        let mut next = 20_000;
        for _ in 0..2 {
            let port = rss::source_port_for_queue(
                &DEFAULT_KEY,
                &table,
                flow,
                QueueId(queue),
                next..=40_000,
            )
            .expect("a port for every queue");
            items.push(format!("{queue}:{port}"));
            next = port + 1;
        }
    }
    // The link needs ~0.5 s of virtual time after the reset.
    std::thread::sleep(Duration::from_secs(2));
    let mut command = namespace.command("python3");
    command
        .args(["-c", CLIENT, GUEST_ADDRESS])
        .args(&items)
        .stdin(Stdio::null());
    let output = command.output().expect("python3 runs");
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    eprintln!("{report}");
    let answered: Vec<u16> = report
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("8/8"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    for queue in 0..CORES {
        assert_eq!(
            answered.iter().filter(|&&q| q == queue).count(),
            2,
            "queue {queue}: both flows fully echoed\n{report}\n{}\nconsole:\n{}",
            String::from_utf8_lossy(&output.stderr),
            machine.console().join("\n")
        );
    }
    drop(machine);
    drop(namespace);
}
