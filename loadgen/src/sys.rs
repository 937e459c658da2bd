//! The few Linux system calls the generator needs that std does not offer: `sendmmsg`,
//! `recvmmsg`, `ppoll` and `setns`, each behind a safe function. All unsafe code of the crate
//! lives here.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// Most messages one batched call moves.
pub const MAX_BATCH: usize = 64;

/// Sends each of `messages` as one datagram on the connected socket `fd` with one `sendmmsg`
/// call (at most [`MAX_BATCH`]); returns how many the kernel took. Non-blocking: a full socket
/// buffer returns `WouldBlock` (or a short count).
pub fn send_batch(fd: RawFd, messages: &[&[u8]]) -> io::Result<usize> {
    let count = messages.len().min(MAX_BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero bytes are valid.
    let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for (index, message) in messages[..count].iter().enumerate() {
        iovecs[index] = libc::iovec {
            iov_base: message.as_ptr() as *mut libc::c_void,
            iov_len: message.len(),
        };
        headers[index].msg_hdr.msg_iov = &mut iovecs[index];
        headers[index].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `headers[..count]` point at `iovecs[..count]`, which point at the caller's
    // buffers; all of them outlive the call, and the kernel only reads the buffers (a connected
    // socket needs no address, so msg_name stays null).
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Receive buffers for [`receive_batch`]: [`MAX_BATCH`] slots of `slot` bytes each.
pub struct ReceiveBuffers {
    bytes: Vec<u8>,
    slot: usize,
    lengths: [usize; MAX_BATCH],
    sources: Vec<libc::sockaddr_in>,
    /// Ancillary data of each message (room for one `UDP_GRO` control message).
    control: Vec<[u64; 8]>,
    /// The segment size of a coalesced message (`UDP_GRO`), per message.
    segments: [Option<usize>; MAX_BATCH],
}

impl ReceiveBuffers {
    /// Buffers of `slot` bytes (a datagram longer than that is cut).
    pub fn new(slot: usize) -> Self {
        Self {
            bytes: vec![0; slot * MAX_BATCH],
            slot,
            lengths: [0; MAX_BATCH],
            // SAFETY: sockaddr_in is a plain C struct; all-zero bytes are valid.
            sources: vec![unsafe { std::mem::zeroed() }; MAX_BATCH],
            control: vec![[0; 8]; MAX_BATCH],
            segments: [None; MAX_BATCH],
        }
    }

    /// For a socket with [`enable_udp_gro`]: the size of the datagrams the kernel coalesced
    /// into message `index` (`None`: one datagram).
    pub fn segment_size(&self, index: usize) -> Option<usize> {
        self.segments[index]
    }

    /// Datagram `index` of the last batch.
    pub fn message(&self, index: usize) -> &[u8] {
        let start = index * self.slot;
        &self.bytes[start..start + self.lengths[index]]
    }

    /// The sender of datagram `index` of the last batch (for a server's reply).
    pub fn source(&self, index: usize) -> std::net::SocketAddrV4 {
        let address = &self.sources[index];
        std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
            u16::from_be(address.sin_port),
        )
    }
}

/// Receives up to [`MAX_BATCH`] datagrams from `fd` with one `recvmmsg` call without waiting;
/// returns how many (0 when none was queued).
pub fn receive_batch(fd: RawFd, buffers: &mut ReceiveBuffers) -> io::Result<usize> {
    // SAFETY: plain C structs; all-zero bytes are valid.
    let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let slot = buffers.slot;
    let base = buffers.bytes.as_mut_ptr();
    for index in 0..MAX_BATCH {
        iovecs[index] = libc::iovec {
            // SAFETY: index * slot is inside `bytes` (MAX_BATCH slots of `slot` bytes).
            iov_base: unsafe { base.add(index * slot) } as *mut libc::c_void,
            iov_len: slot,
        };
        headers[index].msg_hdr.msg_iov = &mut iovecs[index];
        headers[index].msg_hdr.msg_iovlen = 1;
        headers[index].msg_hdr.msg_name =
            (&mut buffers.sources[index]) as *mut libc::sockaddr_in as *mut libc::c_void;
        headers[index].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        headers[index].msg_hdr.msg_control =
            buffers.control[index].as_mut_ptr() as *mut libc::c_void;
        headers[index].msg_hdr.msg_controllen = std::mem::size_of::<[u64; 8]>();
    }
    // SAFETY: every header points at a distinct slot of `bytes`, address entry and control
    // buffer,
    // all owned by `buffers`, which outlives the call; the kernel writes at most iov_len and
    // msg_namelen bytes into them.
    let received = unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            MAX_BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if received < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock => Ok(0),
            _ => Err(error),
        };
    }
    let received = received as usize;
    for (index, received_header) in headers.iter().enumerate().take(received) {
        buffers.lengths[index] = (received_header.msg_len as usize).min(slot);
        buffers.segments[index] = None;
        let header = &received_header.msg_hdr;
        // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of well-formed
        // control messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside them and CMSG_DATA of a
        // SOL_UDP/UDP_GRO message holds one c_int.
        unsafe {
            let mut message = libc::CMSG_FIRSTHDR(header);
            while !message.is_null() {
                if (*message).cmsg_level == SOL_UDP && (*message).cmsg_type == UDP_GRO {
                    let size =
                        std::ptr::read_unaligned(libc::CMSG_DATA(message) as *const libc::c_int);
                    buffers.segments[index] = Some(size.max(1) as usize);
                }
                message = libc::CMSG_NXTHDR(header, message);
            }
        }
    }
    Ok(received)
}

/// Sends each `(message, destination, segment)` with one `sendmmsg` on the unconnected socket
/// `fd`; a message with `Some(segment)` leaves as datagrams of that size (UDP GSO). Returns how
/// many messages the kernel took (used by the loopback echo server).
pub fn send_batch_to(
    fd: RawFd,
    messages: &[(&[u8], std::net::SocketAddrV4, Option<usize>)],
) -> io::Result<usize> {
    let count = messages.len().min(MAX_BATCH);
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: plain C structs; all-zero bytes are valid.
    let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut addresses: [libc::sockaddr_in; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut control = [[0u64; 4]; MAX_BATCH];
    for (index, (message, destination, segment)) in messages[..count].iter().enumerate() {
        addresses[index].sin_family = libc::AF_INET as libc::sa_family_t;
        addresses[index].sin_port = destination.port().to_be();
        addresses[index].sin_addr.s_addr = u32::from(*destination.ip()).to_be();
        iovecs[index] = libc::iovec {
            iov_base: message.as_ptr() as *mut libc::c_void,
            iov_len: message.len(),
        };
        headers[index].msg_hdr.msg_iov = &mut iovecs[index];
        headers[index].msg_hdr.msg_iovlen = 1;
        headers[index].msg_hdr.msg_name =
            (&mut addresses[index]) as *mut libc::sockaddr_in as *mut libc::c_void;
        headers[index].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if let Some(segment) = segment.filter(|size| *size < message.len()) {
            let header = &mut headers[index].msg_hdr;
            header.msg_control = control[index].as_mut_ptr() as *mut libc::c_void;
            // SAFETY: CMSG_SPACE only computes a length.
            header.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            // SAFETY: `msg_control` points at 32 zeroed bytes, enough for one control message
            // carrying a u16 (CMSG_SPACE(2) = 24); CMSG_FIRSTHDR and CMSG_DATA stay inside.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(header);
                (*cmsg).cmsg_level = SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
            }
        }
    }
    // SAFETY: the headers point at `iovecs`, `addresses` and `control` (locals) and at the
    // caller's buffers, all alive for the call; the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Waits until one of `fds` is readable (or writable, for the entries asked so) or `timeout`
/// passes (nanosecond resolution, unlike `poll`); fills `ready[i]` with the returned events of
/// `fds[i]`.
pub fn wait_ready(
    fds: &[(RawFd, bool)],
    ready: &mut Vec<i16>,
    timeout: Duration,
) -> io::Result<usize> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, writable)| libc::pollfd {
            fd,
            events: libc::POLLIN | if writable { libc::POLLOUT } else { 0 },
            revents: 0,
        })
        .collect();
    let timespec = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `polls` holds `polls.len()` initialised entries and `timespec` is a valid struct;
    // both outlive the call; a null signal mask keeps the thread's mask.
    let count = unsafe {
        libc::ppoll(
            polls.as_mut_ptr(),
            polls.len() as libc::nfds_t,
            &timespec,
            std::ptr::null(),
        )
    };
    ready.clear();
    ready.extend(polls.iter().map(|p| p.revents));
    if count < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(error);
    }
    Ok(count as usize)
}

/// Moves the calling thread into the network namespace at `path` (e.g. `/run/netns/NAME`);
/// sockets it opens afterwards live there.
pub fn join_network_namespace(path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the descriptor is valid for the call (the file lives until the end of the
    // function); setns only changes this thread's namespace.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `SOL_UDP` (linux/udp.h; not exported by the libc crate for glibc targets).
const SOL_UDP: libc::c_int = 17;
/// `UDP_SEGMENT`: the socket's or message's GSO segment size.
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO`: deliver coalesced datagrams with their segment size.
const UDP_GRO: libc::c_int = 104;

fn set_udp_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int that outlives the call; the length matches it.
    let result = unsafe {
        libc::setsockopt(
            fd,
            SOL_UDP,
            option,
            (&value) as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// UDP generic segmentation offload: every send on the socket longer than `size` bytes leaves
/// as datagrams of `size` bytes (one trip through UDP and IP for the whole batch; the kernel or
/// the device cuts it). Linux 4.18 or later.
pub fn enable_udp_segmentation(fd: RawFd, size: usize) -> io::Result<()> {
    set_udp_option(fd, UDP_SEGMENT, size as libc::c_int)
}

/// UDP generic receive offload: datagrams of one flow that arrive together may be delivered as
/// one message with their segment size ([`ReceiveBuffers::segment_size`]). Linux 5.0 or later.
pub fn enable_udp_gro(fd: RawFd) -> io::Result<()> {
    set_udp_option(fd, UDP_GRO, 1)
}

/// The number of CPUs this process may run on, read once (see the affinity trap in the docs).
pub fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
