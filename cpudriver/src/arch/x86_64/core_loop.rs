//! Each core's loop after set-up: drain the URPC channels, feed the monitor, poll the network,
//! and halt when there is nothing to do (interrupts and IPIs only start polling).

use drivers::nic::QueueDatapath;
use urpc::CoreMessage;

use super::kernel::BootShared;
use super::matrix::{RttState, PING_TIMEOUT_MS};
use super::{channels, control, net, percore, port, tsc};
use crate::cmdline::FaultKind;
use crate::memory::FrameAllocator;
use crate::messages::KernelMessage;
use x2apic::lapic::LocalApic;

/// One core after set-up: what its loop owns.
pub struct Core {
    pub(super) shared: &'static BootShared,
    pub(super) index: usize,
    pub(super) frames: FrameAllocator,
    pub(super) apic: LocalApic,
    pub(super) online_tsc: u64,
    pub(super) channels: channels::Channels,
    /// This core's part of the URPC latency self-test.
    pub(super) rtt: RttState,
    /// Keep polling (no halt) until this TSC: set by message traffic.
    pub(super) busy_until: u64,
    /// This core's network (queue, pool, stack), when the machine has a NIC.
    pub(super) network: Option<net::CoreNetwork>,
    /// Core 0: the NIC's control side (RSS, redirection table), changed by agreement.
    pub(super) nic_control: Option<drivers::igb::IgbControl<drivers::registers::Mmio>>,
    /// Each core's APIC id, for wake-up IPIs.
    pub(super) apic_ids: alloc::vec::Vec<u32>,
    /// This core's monitor (the control plane).
    pub(super) monitor: monitor::Monitor<control::KernelHooks>,
    /// Messages the monitor queued, sent after each call into it.
    pub(super) outgoing: control::Outgoing,
    /// Agreements this core began: transaction, TSC at the start, the change.
    pub(super) agreements: alloc::vec::Vec<(monitor::TxId, u64, monitor::Change)>,
    /// Who owns each flow group (the redirection table, as this core knows it).
    pub(super) flow_owners: [monitor::CoreId; 128],
    /// Core 0: TSC when the machine became complete (the monitor's boot handshake).
    pub(super) machine_complete_tsc: Option<u64>,
    /// Core 0: whether the `netd.move=` request was made.
    pub(super) move_requested: bool,
    /// TSC of this core's last statistics gathering (refreshed every `STATS_PERIOD_MS`).
    pub(super) last_stats_tsc: u64,
    /// A data message (not control-plane chatter) arrived since the last loop iteration: keep
    /// polling instead of halting.
    pub(super) data_traffic: bool,
    /// A latency probe (ping, pong, matrix control) arrived: poll for `PROBE_POLL_US` so the
    /// URPC matrix measures the channel, not the wake-up.
    pub(super) probe_traffic: bool,
    /// Channels the monitors set up by binding: (peer core, this core's end, role).
    pub(super) bound: alloc::vec::Vec<(usize, urpc::Endpoint<'static>, monitor::Role)>,
    /// The `bind=` demonstration: TSC at which the client asks for its binding.
    pub(super) bind_at: Option<u64>,
}

/// How long a core keeps polling after a latency probe (URPC ping or pong), in microseconds.
const PROBE_POLL_US: u64 = 20_000;

/// Messages a core takes from one channel per loop iteration (bounded: no unbounded poll).
const CHANNEL_BATCH: usize = 16;

impl Core {
    pub(super) fn cores(&self) -> usize {
        self.shared.cores.len()
    }

    /// Sends `message` to `peer`, waking it if it sleeps; retries while the ring is full.
    pub(super) fn send(&mut self, peer: usize, message: KernelMessage) {
        let apic_id = self.shared.cores[peer].apic_id;
        let Some(endpoint) = self.channels.endpoints[peer].as_mut() else {
            return;
        };
        let deadline = tsc::now() + 100 * self.shared.tsc_per_ms;
        loop {
            match endpoint.sender.try_send_message(&message) {
                Ok(()) => break,
                Err(urpc::SendError::Full) if tsc::now() < deadline => core::hint::spin_loop(),
                Err(error) => {
                    log::warn!("urpc to core {peer}: {error:?}; message dropped");
                    return;
                }
            }
        }
        endpoint
            .sender
            .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
    }

    /// Drains every channel (bounded); returns how many messages were handled.
    /// Serves the channels the monitors bound: the server answers pings, the client reports the
    /// round trip. Bounded like the boot channels.
    pub(super) fn poll_bound(&mut self) {
        for (peer, endpoint, role) in self.bound.iter_mut() {
            for _ in 0..CHANNEL_BATCH {
                match endpoint
                    .receiver
                    .try_recv_message::<CoreMessage>(&urpc::RegionTable::EMPTY)
                {
                    Ok(CoreMessage::Ping {
                        sequence,
                        timestamp,
                    }) => {
                        let _ = endpoint.sender.try_send_message(&CoreMessage::Pong {
                            sequence,
                            timestamp,
                        });
                        let apic_id = self.shared.cores[*peer].apic_id;
                        endpoint
                            .sender
                            .notify_if_sleeping(&mut channels::IpiNotifier { apic_id });
                    }
                    Ok(CoreMessage::Pong { timestamp, .. }) if *role == monitor::Role::Client => {
                        crate::kprintln!(
                            "monitor: bound channel core {} -> core {}: ping answered in {} cycles",
                            self.index,
                            peer,
                            tsc::now().wrapping_sub(timestamp)
                        );
                    }
                    Ok(other) => log::debug!("bound channel from core {peer}: {other:?}"),
                    Err(urpc::RecvError::Empty) => break,
                    Err(error) => {
                        log::warn!("bound channel from core {peer}: {error:?}");
                        break;
                    }
                }
            }
        }
    }

    fn poll_channels(&mut self) -> usize {
        self.poll_bound();
        let mut handled = 0;
        for peer in 0..self.cores() {
            for _ in 0..CHANNEL_BATCH {
                let Some(endpoint) = self.channels.endpoints[peer].as_mut() else {
                    break;
                };
                match endpoint
                    .receiver
                    .try_recv_message::<KernelMessage>(&urpc::RegionTable::EMPTY)
                {
                    Ok(message) => {
                        handled += 1;
                        self.handle(peer, message);
                    }
                    Err(urpc::RecvError::Empty) => break,
                    Err(error) => log::warn!("urpc from core {peer}: {error:?}"),
                }
            }
        }
        handled
    }

    pub(super) fn handle(&mut self, from: usize, message: KernelMessage) {
        // Heartbeats and other monitor messages must not keep a core spinning: under TCG on a
        // small host, spinning cores starve the others and make the failure detector fire.
        match message {
            KernelMessage::Monitor { .. } => {}
            KernelMessage::NetChunk { .. } => self.data_traffic = true,
            _ => self.probe_traffic = true,
        }
        match message {
            KernelMessage::Core(CoreMessage::Ping {
                sequence,
                timestamp,
            }) => {
                self.send(
                    from,
                    KernelMessage::Core(CoreMessage::Pong {
                        sequence,
                        timestamp,
                    }),
                );
            }
            KernelMessage::Core(CoreMessage::Pong { timestamp, .. }) => {
                let now = tsc::now();
                if let Some((peer, left, samples)) = self.rtt.pinging.as_mut() {
                    if *peer == from {
                        samples.push(now.wrapping_sub(timestamp));
                        *left -= 1;
                        if *left > 0 {
                            let sequence = samples.len() as u64;
                            let peer = *peer;
                            self.rtt.last_ping = now;
                            self.send(
                                peer,
                                KernelMessage::Core(CoreMessage::Ping {
                                    sequence,
                                    timestamp: tsc::now(),
                                }),
                            );
                        } else {
                            self.finish_pinging();
                        }
                    }
                }
            }
            KernelMessage::RttStart { peer, rounds } => self.start_pinging(peer as usize, rounds),
            KernelMessage::RttDone { peer, p50, p99 } => {
                self.pair_done(from, peer as usize, p50, p99)
            }
            KernelMessage::NetChunk {
                total,
                offset,
                length,
                data,
            } => {
                self.net_chunk(from, total, offset, &data[..usize::from(length)]);
            }
            KernelMessage::Monitor { length, bytes } => {
                let Some(peer) = monitor::CoreId::new(from as u8) else {
                    return;
                };
                let now = control::now(self.shared.tsc_per_ms);
                if let Err(error) = self.monitor.handle_bytes(
                    now,
                    peer,
                    &bytes[..usize::from(length)],
                    &mut self.outgoing,
                ) {
                    log::warn!("monitor message from core {from}: {error:?}; dropped");
                }
                self.after_monitor();
            }
            KernelMessage::Core(other) => log::debug!("urpc from core {from}: {other:?}"),
        }
    }

    pub(super) fn net_chunk(&mut self, from: usize, total: u16, offset: u16, data: &[u8]) {
        let tsc_per_ms = self.shared.tsc_per_ms;
        let Some(network) = self.network.as_mut() else {
            return;
        };
        let Some(bytes) = network.reassemble(from, total, offset, data) else {
            return;
        };
        match netd::PeerMessage::decode(&bytes) {
            Ok(message) => {
                let mut peers = net::UrpcPeers {
                    endpoints: &mut self.channels.endpoints,
                    apic_ids: &self.apic_ids,
                    tsc_per_ms,
                };
                network.net.handle_peer_message(
                    net::instant(tsc_per_ms),
                    &message,
                    &mut network.pool,
                    &mut peers,
                );
            }
            Err(error) => log::warn!("netd message from core {from}: {error:?}; dropped"),
        }
    }

    /// Prints this core's network counters (the `netd.report=` option).
    fn report_network(&self) {
        let Some(network) = self.network.as_ref() else {
            return;
        };
        let counters = network.net.counters();
        let queue = network.queue.stats();
        let drops: u64 = counters.drops.iter().sum();
        crate::kprintln!(
            "netd: stats core={} rx_frames={} tx_frames={} forwarded_in={} forwarded_out={} drops={} queue_rx={} queue_tx={} queue_no_descriptor={}",
            self.index,
            counters.rx_frames,
            counters.tx_frames,
            counters.forwarded_in,
            counters.forwarded_out,
            drops,
            queue.rx_packets,
            queue.tx_packets,
            queue.rx_no_descriptor
        );
    }

    /// One bounded step of the network: returns whether more work is waiting.
    fn poll_network(&mut self) -> bool {
        let tsc_per_ms = self.shared.tsc_per_ms;
        let Some(network) = self.network.as_mut() else {
            return false;
        };
        let mut peers = net::UrpcPeers {
            endpoints: &mut self.channels.endpoints,
            apic_ids: &self.apic_ids,
            tsc_per_ms,
        };
        let outcome = network.net.poll(
            net::instant(tsc_per_ms),
            &mut network.queue,
            &mut network.pool,
            &mut peers,
        );
        if outcome.stats_wanted {
            // `/stats` was asked for: gather every core's counters through the monitors; the
            // page shows the latest gathering (and this core's own counters live).
            self.gather_stats();
        }
        outcome.more_work || outcome.received > 0
    }

    /// Milliseconds since the kernel started (core 0's entry; TSCs are synchronised).
    pub(super) fn uptime_ms(&self) -> u64 {
        (tsc::now() - self.shared.image.entry_tsc) / self.shared.tsc_per_ms
    }

    /// The core's loop: drain channels, do what is due, halt when idle. Never returns.
    pub fn run(mut self) -> ! {
        let options = self.shared.options;
        let injection = options.fault.is_some() || options.hang.is_some();
        let mut next_alive_ms = 500;
        let mut next_report_ms = u64::from(options.netd_report_ms);
        let _ = (&self.frames, &self.apic);
        if self.index == 0 && options.urpc_matrix_rounds > 0 && self.cores() > 1 {
            crate::kprintln!(
                "urpc: latency matrix, {} round trips a pair",
                options.urpc_matrix_rounds
            );
            self.start_pair(0);
        }
        loop {
            if let Some((peer, _, _)) = self.rtt.pinging {
                if tsc::now() - self.rtt.last_ping > PING_TIMEOUT_MS * self.shared.tsc_per_ms {
                    crate::kprintln!(
                        "urpc: rtt {}->{} no answer for {} ms",
                        self.index,
                        peer,
                        PING_TIMEOUT_MS
                    );
                    self.rtt.pinging = None;
                    let done = KernelMessage::RttDone {
                        peer: peer as u32,
                        p50: 0,
                        p99: 0,
                    };
                    if self.index == 0 {
                        self.handle(0, done);
                    } else {
                        self.send(0, done);
                    }
                }
            }
            if let Some((n, false)) = self.rtt.coordinator {
                // A pinging core that died never reports: give up on its pair after a while.
                let limit = 3 * PING_TIMEOUT_MS + options.urpc_matrix_rounds as u64 * 10;
                if tsc::now() - self.rtt.pair_started > limit * self.shared.tsc_per_ms {
                    if let Some((a, b)) = self.pair(n) {
                        crate::kprintln!(
                            "urpc: rtt {}->{} no answer: core {} did not report",
                            a,
                            b,
                            a
                        );
                    }
                    self.start_pair(n + 1);
                }
            }
            self.run_monitor();
            let network_busy = self.poll_network();
            self.poll_channels();
            let per_ms = self.shared.tsc_per_ms;
            if core::mem::take(&mut self.probe_traffic) || self.rtt.pinging.is_some() {
                self.busy_until = tsc::now() + PROBE_POLL_US * per_ms / 1000;
            } else if core::mem::take(&mut self.data_traffic) || network_busy {
                let until = tsc::now() + u64::from(options.poll_after_traffic_us) * per_ms / 1000;
                self.busy_until = self.busy_until.max(until);
            }
            let now = tsc::now();
            let elapsed_ms = (now - self.online_tsc) / self.shared.tsc_per_ms;
            if let Some(fault) = options.fault {
                if fault.core as usize == self.index && elapsed_ms >= 50 {
                    inject_fault(fault.kind);
                }
            }
            if let Some(hang) = options.hang {
                if hang.core as usize == self.index && elapsed_ms >= hang.after_ms as u64 {
                    crate::kprintln!(
                        "flotilla: core {} hangs now at {} ms (hang= option)",
                        self.index,
                        self.uptime_ms()
                    );
                    port::halt_forever();
                }
            }
            if injection && elapsed_ms >= next_alive_ms {
                next_alive_ms += 1000;
                crate::kprintln!(
                    "flotilla: core {} alive after {} ms, ticks={}",
                    self.index,
                    elapsed_ms,
                    percore::ticks()
                );
            }
            if options.netd_report_ms > 0 && elapsed_ms >= next_report_ms {
                next_report_ms = elapsed_ms + u64::from(options.netd_report_ms);
                self.report_network();
            }
            // netd's contract: halt only when its poll said there is no more work (frames wait
            // in path queues between turns under its scheduler).
            if now < self.busy_until || network_busy {
                core::hint::spin_loop();
                continue;
            }
            self.halt_until_event();
        }
    }

    /// Announces sleep on every channel, and halts unless a message slipped in; interrupts are
    /// off between the check and `sti; hlt`, so a wake-up IPI cannot be lost.
    fn halt_until_event(&mut self) {
        x86_64::instructions::interrupts::disable();
        let mut pending = false;
        if let Some(network) = self.network.as_mut() {
            // An interrupt only starts polling: the queue's vector auto-masks when it fires.
            network.queue.set_interrupt(true);
            // A frame that arrived while the vector was masked may raise nothing on unmask
            // (QEMU's igb does not): look at the ring once more before halting.
            pending |= network.queue.receive_pending();
        }
        let bound = self.bound.iter_mut().map(|(_, endpoint, _)| endpoint);
        for endpoint in self.channels.endpoints.iter_mut().flatten().chain(bound) {
            if pending {
                break;
            }
            if endpoint.receiver.prepare_to_sleep() == urpc::SleepDecision::MessagePending {
                pending = true;
                break;
            }
        }
        if pending {
            x86_64::instructions::interrupts::enable();
        } else {
            x86_64::instructions::interrupts::enable_and_hlt();
        }
        let bound = self.bound.iter_mut().map(|(_, endpoint, _)| endpoint);
        for endpoint in self.channels.endpoints.iter_mut().flatten().chain(bound) {
            endpoint.receiver.woke();
        }
    }
}

fn inject_fault(kind: FaultKind) {
    log::warn!("injecting {:?} as the fault= option asks", kind);
    match kind {
        // SAFETY: `ud2` raises #UD, which the dispatcher reports before halting this core.
        FaultKind::InvalidOpcode => unsafe { core::arch::asm!("ud2") },
        // SAFETY: `int3` raises #BP, handled like every exception: reported, core halted.
        FaultKind::Breakpoint => unsafe { core::arch::asm!("int3") },
        // SAFETY: the address is above the 64 GiB identity map, so the load faults (#PF) before
        // it reads anything; the dispatcher reports it and halts this core.
        FaultKind::PageFault => unsafe {
            core::arch::asm!("mov rax, [{}]", in(reg) 0x0000_7000_0000_0000u64, out("rax") _)
        },
        // SAFETY: dividing by a zeroed register raises #DE; only the named registers change.
        FaultKind::DivideError => unsafe {
            core::arch::asm!(
                "xor edx, edx",
                "xor ecx, ecx",
                "mov eax, 1",
                "div ecx",
                out("eax") _,
                out("ecx") _,
                out("edx") _
            )
        },
    }
}
