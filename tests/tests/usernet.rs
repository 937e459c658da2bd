//! The network through QEMU user networking (no root needed): HTTP, TCP echo, UDP echo and the
//! memcached protocol, each answered by the Flotilla guest on forwarded loopback ports.

use flotilla_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// A free loopback TCP port (and, very likely, UDP port) to forward.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Retries `attempt` for up to `limit` (the link needs ~0.5 s of virtual time after boot).
fn retry<T>(limit: Duration, mut attempt: impl FnMut() -> std::io::Result<T>) -> T {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("gave up after {limit:?}: {e}"),
        }
    }
}

fn read_until(stream: &mut TcpStream, end: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    while !reply.ends_with(end) {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
    }
    Ok(reply)
}

#[test]
fn http_echo_and_memcached_answer_through_user_networking() {
    let (http, echo, memcached) = (free_port(), free_port(), free_port());
    let mut config = MachineConfig::kernel(kernel(), 4, "urpc=off");
    config.network = Network::User(vec![
        ("tcp", http, 80),
        ("tcp", echo, 7),
        ("udp", echo, 7),
        ("tcp", memcached, 11211),
    ]);
    let (_machine, console) = boot_until_ready(&config);
    assert!(
        console.iter().any(|l| l.starts_with("netd: nic igb")),
        "{}",
        console.join("\n")
    );
    let timeout = Some(Duration::from_secs(10));

    let page = retry(Duration::from_secs(30), || {
        let mut stream = TcpStream::connect(("127.0.0.1", http))?;
        stream.set_read_timeout(timeout)?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: flotilla\r\nConnection: close\r\n\r\n")?;
        let reply = read_until(&mut stream, b"</html>\n")?;
        if reply.is_empty() {
            return Err(std::io::Error::other("empty reply"));
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    });
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("4 cores"), "{page}");

    for flow in 0..8 {
        let mut stream = TcpStream::connect(("127.0.0.1", echo)).unwrap();
        stream.set_read_timeout(timeout).unwrap();
        let message = format!("flow {flow} says hello\n");
        stream.write_all(message.as_bytes()).unwrap();
        let reply = read_until(&mut stream, b"\n").unwrap();
        assert_eq!(reply, message.as_bytes());
    }

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut answered = 0;
    for datagram in 0..8 {
        let message = format!("datagram {datagram}");
        socket
            .send_to(message.as_bytes(), ("127.0.0.1", echo))
            .unwrap();
        let mut buffer = [0u8; 256];
        if let Ok((n, _)) = socket.recv_from(&mut buffer) {
            assert_eq!(&buffer[..n], message.as_bytes());
            answered += 1;
        }
    }
    assert!(answered >= 7, "only {answered} of 8 UDP echoes came back");

    for connection in 0..8 {
        let mut stream = TcpStream::connect(("127.0.0.1", memcached)).unwrap();
        stream.set_read_timeout(timeout).unwrap();
        let key = format!("user{connection}");
        stream
            .write_all(format!("set {key} 7 0 5\r\nvalue\r\n").as_bytes())
            .unwrap();
        assert_eq!(read_until(&mut stream, b"\r\n").unwrap(), b"STORED\r\n");
        stream
            .write_all(format!("get {key} nothing\r\n").as_bytes())
            .unwrap();
        let reply = read_until(&mut stream, b"END\r\n").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reply),
            format!("VALUE {key} 7 5\r\nvalue\r\nEND\r\n")
        );
        stream
            .write_all(format!("delete {key}\r\ndelete {key}\r\n").as_bytes())
            .unwrap();
        let reply = read_until(&mut stream, b"NOT_FOUND\r\n").unwrap();
        assert_eq!(reply, b"DELETED\r\nNOT_FOUND\r\n");
    }
}
