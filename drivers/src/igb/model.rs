//! Host-only: the 82576 register layout for [`crate::model::RegisterModel`], with the reset state
//! QEMU's igb model has (link up at 1 Gb/s, EEPROM read done, MAC loaded, queue 0 enabled), and
//! the driver's tests against it.

use super::regs;
use crate::model::{Layout, RegisterModel};

/// MAC address the model "loads from EEPROM" (QEMU's default for its first NIC).
pub const MODEL_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

const RESET_VALUES: &[(usize, u32)] = &[
    (
        regs::STATUS,
        regs::STATUS_LU | 2 << regs::STATUS_SPEED_SHIFT | 1,
    ),
    (regs::EECD, regs::EECD_AUTO_RD),
    (
        regs::RAL0,
        u32::from_le_bytes([MODEL_MAC[0], MODEL_MAC[1], MODEL_MAC[2], MODEL_MAC[3]]),
    ),
    (
        regs::RAH0,
        u32::from_le_bytes([MODEL_MAC[4], MODEL_MAC[5], 0, 0]) | 1 << 31,
    ),
    (regs::rxdctl(0), regs::QUEUE_ENABLE),
    (regs::txdctl(0), regs::QUEUE_ENABLE),
];

/// The 82576 register layout.
pub const LAYOUT: Layout = Layout {
    size: regs::BAR0_SIZE,
    ctrl: regs::CTRL,
    ctrl_reset: regs::CTRL_RST,
    reset_reads: 2,
    reset_values: RESET_VALUES,
    clear_on_read: &[regs::ICR, regs::EICR, regs::MPC],
    rx_enable: (regs::RCTL, regs::RCTL_EN),
    tx_enable: (regs::TCTL, regs::TCTL_EN),
    rx_block: (0xC000, 0x40),
    tx_block: (0xE000, 0x40),
    srrctl_in_block: 0x0C,
    drop_counter: (0xC030, 0x40),
    mrqc: (regs::MRQC, regs::MRQC_ENABLE_RSS),
    rxcsum: regs::RXCSUM,
    rss_needs_pcsd: true,
    reta: regs::RETA,
    rssrk: regs::RSSRK,
    interrupt: (regs::EIMS, regs::EIMC, regs::EICR),
    five_tuple: None,
    tx_context_needs_check: false,
    queues: 16,
};

/// A fresh 82576 model.
pub fn new_model() -> RegisterModel {
    RegisterModel::new(LAYOUT, MODEL_MAC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::QueueMemory;
    use crate::frame::build_udp_ipv4;
    use crate::igb::{init, mrqc_value, restart_queue, IgbConfig, IgbError};
    use crate::model::RxOutcome;
    use crate::nic::{
        FlowGroup, HashTypes, NicControl, NicError, QueueDatapath, QueueId, ReceiveBatch,
        TransmitFrame,
    };
    use crate::pool::BufferPool;
    use crate::rss::{self, FlowTuple};
    use std::vec::Vec;

    fn no_delay(_: u32) {}

    fn bring_up(
        queues: u16,
        ring: u16,
    ) -> (
        RegisterModel,
        crate::igb::IgbControl<RegisterModel>,
        heapless::Vec<crate::igb::IgbQueue<RegisterModel>, 16>,
    ) {
        let model = new_model();
        let config = IgbConfig {
            ring_size: ring,
            ..IgbConfig::new(queues)
        };
        let memory = (0..queues).map(|_| QueueMemory::new_host(ring).unwrap());
        let (control, queue_list) = init(model.clone(), &mut no_delay, &config, memory).unwrap();
        (model, control, queue_list)
    }

    fn udp(source_port: u16) -> Vec<u8> {
        let mut out = std::vec![0u8; 128];
        let n = build_udp_ipv4(
            &mut out,
            [2; 6],
            MODEL_MAC,
            ([10, 0, 2, 2], source_port),
            ([10, 0, 2, 15], 7),
            b"flotilla",
        );
        out.truncate(n);
        out
    }

    const FLOW: FlowTuple = FlowTuple::V4 {
        source: [10, 0, 2, 2],
        destination: [10, 0, 2, 15],
        ports: Some((0, 7)),
    };

    #[test]
    fn init_sequence_follows_the_datasheet_order() {
        let (model, control, queues) = bring_up(4, 64);
        assert_eq!(queues.len(), 4);
        let state = model.state();
        let reset = state
            .first_write_with(regs::CTRL, regs::CTRL_RST)
            .expect("reset");
        // Interrupts masked before reset, and the reset precedes every ring write.
        assert!(state.first_write(regs::IMC, u32::MAX).unwrap() < reset);
        assert!(reset < state.first_write_with(regs::rdbal(0), 0).unwrap());
        for q in 0..4 {
            // Ring base/length before enable; enable before the receiver is switched on.
            let base = state
                .writes
                .iter()
                .position(|&(o, _)| o == regs::rdbal(q))
                .unwrap();
            let enable = state
                .first_write_with(regs::rxdctl(q), regs::QUEUE_ENABLE)
                .unwrap();
            assert!(base < enable);
            assert!(enable < state.first_write_with(regs::RCTL, regs::RCTL_EN).unwrap());
            assert_eq!(state.register(regs::rdlen(q)), 64 * 16);
            assert_eq!(state.register(regs::srrctl(q)) & 0x7F, 2, "2 KiB buffers");
            assert_ne!(
                state.register(regs::srrctl(q)) & regs::SRRCTL_DESCTYPE_ADVANCED_ONE_BUFFER,
                0
            );
            assert_ne!(state.register(regs::txdctl(q)) & regs::QUEUE_ENABLE, 0);
        }
        // RSS: key as little-endian dwords, MRQC = 2 plus hash bits, PCSD set.
        assert_eq!(
            state.register(regs::RSSRK),
            u32::from_le_bytes([0x6d, 0x5a, 0x56, 0xda])
        );
        assert_eq!(state.register(regs::MRQC) & 3, 2);
        assert_eq!(state.register(regs::MRQC), mrqc_value(HashTypes::ALL));
        assert_ne!(state.register(regs::RXCSUM) & regs::RXCSUM_PCSD, 0);
        assert_eq!(state.register(regs::RETA), u32::from_le_bytes([0, 1, 2, 3]));
        // MSI-X: MSI-X mode; queue 5 absent; queue 1 → vector 1 in IVAR[1] bytes 0 and 1.
        assert_ne!(state.register(regs::GPIE) & regs::GPIE_MSIX_MODE, 0);
        assert_eq!(state.register(regs::ivar(1)), 0x8181);
        assert_eq!(state.register(regs::IVAR_MISC), (4 | 0x80) << 8);
        assert_eq!(state.register(regs::EIAC), 0xF);
        assert_eq!(
            state.register(regs::EIMS),
            1 << 4,
            "only the link vector until queues opt in"
        );
        drop(state);
        assert_eq!(control.mac_address(), MODEL_MAC);
        assert!(control.link().up);
        assert_eq!(control.link().speed_mbps, 1000);
        assert_eq!(control.queue_vector(QueueId(3)), Some(3));
    }

    #[test]
    fn ivar_layout_for_upper_queues_and_polled_queues() {
        let model = new_model();
        let config = IgbConfig {
            ring_size: 8,
            msix_vectors: 25,
            ..IgbConfig::new(16)
        };
        let memory = (0..16).map(|_| QueueMemory::new_host(8).unwrap());
        let (control, _queues) = init(model.clone(), &mut no_delay, &config, memory).unwrap();
        // Queue 9: IVAR[1], RX in byte 2, TX in byte 3; queue 1 in bytes 0 and 1.
        assert_eq!(model.peek(regs::ivar(1)), 0x8989_8181);
        assert_eq!(control.other_vector(), 16);
        // With QEMU's 10 vectors, queues 9.. share vectors 0..: queue 9 with queue 0, 15 with 6.
        let (model, control, _) = bring_up(16, 8);
        assert_eq!(control.queue_vector(QueueId(8)), Some(8));
        assert_eq!(control.queue_vector(QueueId(9)), Some(0));
        assert_eq!(control.queue_vector(QueueId(15)), Some(6));
        assert_eq!(control.queue_vector(QueueId(16)), None);
        assert_eq!(control.other_vector(), 9);
        // IVAR[1]: queue 1 (bytes 0, 1) on vector 1, queue 9 (bytes 2, 3) on vector 0.
        assert_eq!(model.peek(regs::ivar(1)), 0x8080_8181);
        // Every queue vector auto-clears and auto-masks; the link vector does not.
        assert_eq!(model.peek(regs::EIAC), 0x1FF);
    }

    #[test]
    fn bad_arguments_are_typed_errors() {
        let model = new_model();
        let none = core::iter::empty();
        assert_eq!(
            init(model.clone(), &mut no_delay, &IgbConfig::new(17), none).err(),
            Some(IgbError::BadQueueCount(17))
        );
        let one = (0..1).map(|_| QueueMemory::new_host(256).unwrap());
        assert_eq!(
            init(model.clone(), &mut no_delay, &IgbConfig::new(2), one).err(),
            Some(IgbError::QueueMemoryCount {
                expected: 2,
                given: 1
            })
        );
        let small = (0..1).map(|_| QueueMemory::new_host(8).unwrap());
        assert_eq!(
            init(model.clone(), &mut no_delay, &IgbConfig::new(1), small).err(),
            Some(IgbError::RingSizeMismatch(QueueId(0)))
        );
    }

    #[test]
    fn reset_that_never_finishes_times_out() {
        let model = RegisterModel::new(
            crate::model::Layout {
                reset_reads: u32::MAX,
                ..LAYOUT
            },
            MODEL_MAC,
        );
        let memory = (0..1).map(|_| QueueMemory::new_host(8).unwrap());
        let config = IgbConfig {
            ring_size: 8,
            ..IgbConfig::new(1)
        };
        let mut waited = 0u64;
        let mut delay = |us: u32| waited += u64::from(us);
        assert_eq!(
            init(model, &mut delay, &config, memory).err(),
            Some(IgbError::ResetTimeout)
        );
        assert!(waited >= 10_000, "waited {waited} µs");
    }

    #[test]
    fn frames_land_on_the_queue_the_hash_predicts_and_flow_group_moves_work() {
        let (model, mut control, mut queues) = bring_up(4, 64);
        let mut pools: Vec<BufferPool> = (0..4).map(|_| BufferPool::new_host(128)).collect();
        for (queue, pool) in queues.iter_mut().zip(pools.iter_mut()) {
            assert_eq!(queue.refill(pool), 63);
        }
        let table = control.redirection_table();
        for target in 0..4u16 {
            let port = rss::source_port_for_queue(
                &rss::DEFAULT_KEY,
                &table,
                FLOW,
                QueueId(target),
                1024..=65535,
            )
            .unwrap();
            let outcome = model.receive(&udp(port));
            let expected_hash = FLOW.with_source_port(port).hash(&rss::DEFAULT_KEY);
            assert_eq!(
                outcome,
                RxOutcome::Delivered {
                    queue: QueueId(target),
                    hash: expected_hash
                }
            );
            let mut batch = ReceiveBatch::new();
            let q = usize::from(target);
            assert_eq!(queues[q].receive(&mut pools[q], &mut batch), 1);
            assert_eq!(batch[0].rss_hash, expected_hash);
            assert_eq!(usize::from(batch[0].length), udp(port).len());
            assert!(batch[0].checksum.ipv4_ok && batch[0].checksum.l4_ok);
            let bytes = pools[q].bytes(batch[0].buffer).unwrap();
            assert_eq!(&bytes[..udp(port).len()], &udp(port)[..]);
            pools[q].free(batch[0].buffer).unwrap();
        }
        // Move the flow group of a queue-0 flow to queue 3.
        let port =
            rss::source_port_for_queue(&rss::DEFAULT_KEY, &table, FLOW, QueueId(0), 1024..=65535)
                .unwrap();
        let group = rss::flow_group_of(FLOW.with_source_port(port).hash(&rss::DEFAULT_KEY));
        control.set_flow_group(group, QueueId(3)).unwrap();
        assert_eq!(control.flow_group(group), Ok(QueueId(3)));
        assert!(matches!(
            model.receive(&udp(port)),
            RxOutcome::Delivered {
                queue: QueueId(3),
                ..
            }
        ));
        assert_eq!(
            control.set_flow_group(FlowGroup(128), QueueId(0)),
            Err(NicError::NoSuchFlowGroup(FlowGroup(128)))
        );
        assert_eq!(
            control.set_flow_group(FlowGroup(1), QueueId(4)),
            Err(NicError::NoSuchQueue(QueueId(4)))
        );
        assert_eq!(
            control.add_filter(Default::default(), QueueId(0)),
            Err(NicError::Unsupported)
        );
    }

    #[test]
    fn rss_off_without_pcsd_and_non_ip_goes_to_queue_zero() {
        let (model, mut control, _queues) = bring_up(4, 16);
        let mut arp = std::vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        // Ring empty (nothing refilled): counted as no-descriptor on queue 0.
        assert_eq!(model.receive(&arp), RxOutcome::NoDescriptor(QueueId(0)));
        // Without PCSD the model (like QEMU) does not do RSS: everything goes to queue 0.
        model.poke(regs::RXCSUM, 0);
        let port = rss::source_port_for_queue(
            &rss::DEFAULT_KEY,
            &control.redirection_table(),
            FLOW,
            QueueId(2),
            1024..=65535,
        )
        .unwrap();
        assert_eq!(
            model.receive(&udp(port)),
            RxOutcome::NoDescriptor(QueueId(0))
        );
        model.poke(regs::RXCSUM, regs::RXCSUM_PCSD);
        // Hash types off for UDP: addresses only (all ports of this pair land together).
        control
            .set_hash_types(HashTypes {
                udp_ipv4: false,
                ..HashTypes::ALL
            })
            .unwrap();
        let a = model.receive(&udp(1000));
        let b = model.receive(&udp(2000));
        assert_eq!(a, b);
    }

    #[test]
    fn transmit_checksum_offload_through_context_descriptors() {
        let (model, _control, mut queues) = bring_up(2, 16);
        crate::model::offload_check::transmit_offload_is_honoured(&model, &mut queues[1]);
        crate::model::offload_check::transmit_segmentation_is_honoured(&model, &mut queues[1]);
        // UDP, TCP, UDP: the UDP context stays in slot 0 while TCP uses slot 1, so two context
        // descriptors were written for six frames, then none for the plain frame; then the
        // segmentation context (TCP's slot, now with an MSS) and the packet's three buffers.
        assert_eq!(model.peek(regs::tdt(1)), 2 + 6 + 1 + 1 + 3);
    }

    #[test]
    fn missed_packets_are_read_by_queue_zero_only() {
        let (model, _control, queues) = bring_up(2, 16);
        model.poke(regs::MPC, 5);
        assert_eq!(queues[1].stats().rx_missed, 0);
        assert_eq!(queues[0].stats().rx_missed, 5);
        assert_eq!(model.peek(regs::MPC), 0, "clear on read");
        model.poke(regs::MPC, 2);
        assert_eq!(queues[0].stats().rx_missed, 7, "accumulated");
    }

    #[test]
    fn full_ring_drops_are_counted_and_transmit_reaches_the_wire() {
        let (model, control, mut queues) = bring_up(1, 8);
        let mut pool = BufferPool::new_host(64);
        let q = &mut queues[0];
        assert_eq!(q.refill(&mut pool), 7);
        for _ in 0..10 {
            model.receive(&udp(5000));
        }
        assert_eq!(q.stats().rx_no_descriptor, 3);
        let mut batch = ReceiveBatch::new();
        assert_eq!(q.receive(&mut pool, &mut batch), 7);
        // Echo them back out.
        let frames: Vec<TransmitFrame> = batch
            .iter()
            .map(|f| TransmitFrame::new(f.buffer, f.length))
            .collect();
        assert_eq!(q.transmit(&mut pool, &frames), 7);
        let wire = model.take_transmitted();
        assert_eq!(wire.len(), 7);
        assert_eq!(wire[0].1, udp(5000));
        assert_eq!(q.reclaim(&mut pool), 7);
        assert_eq!(pool.available(), 64);
        let stats = q.stats();
        assert_eq!((stats.rx_packets, stats.tx_packets), (7, 7));
        // Head registers followed the software indices.
        assert_eq!(model.peek(regs::rdh(0)), 7);
        assert_eq!(model.peek(regs::tdh(0)), 7);
        drop(control);
    }

    #[test]
    fn ring_wraps_many_times_with_the_device_in_the_loop() {
        let (model, _control, mut queues) = bring_up(1, 16);
        let mut pool = BufferPool::new_host(64);
        let q = &mut queues[0];
        let mut total = 0;
        for round in 0..50u16 {
            q.refill(&mut pool);
            for k in 0..(round % 15 + 1) {
                model.receive(&udp(6000 + k));
            }
            let mut batch = ReceiveBatch::new();
            let n = q.receive(&mut pool, &mut batch);
            assert_eq!(n, usize::from(round % 15 + 1));
            let frames: Vec<TransmitFrame> = batch
                .iter()
                .map(|f| TransmitFrame::new(f.buffer, f.length))
                .collect();
            assert_eq!(q.transmit(&mut pool, &frames), n);
            assert_eq!(q.reclaim(&mut pool), n);
            total += n;
        }
        assert_eq!(model.take_transmitted().len(), total);
        assert_eq!(q.stats().rx_no_descriptor, 0);
    }

    #[test]
    fn interrupt_enable_touches_only_the_queue_bit() {
        let (model, _control, mut queues) = bring_up(4, 8);
        queues[2].set_interrupt(true);
        assert_eq!(model.peek(regs::EIMS), 1 << 4 | 1 << 2);
        queues[2].set_interrupt(false);
        assert_eq!(model.peek(regs::EIMS), 1 << 4);
        let writes = &model.state().writes;
        assert_eq!(
            writes[writes.len() - 2..],
            [(regs::EIMS, 4), (regs::EIMC, 4)]
        );
    }

    /// An ARP request (not hashed: the 82576 and QEMU's igb put it on queue 0).
    fn arp() -> Vec<u8> {
        let mut frame = std::vec![0u8; 60];
        frame[0..6].copy_from_slice(&[0xFF; 6]);
        frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        frame
    }

    #[test]
    fn an_adopted_queue_receives_into_its_new_ring_and_the_old_ring_gets_nothing() {
        let (model, _control, mut queues) = bring_up(4, 16);
        let mut failed_pool = BufferPool::new_host(32);
        queues[0].refill(&mut failed_pool);
        assert!(matches!(
            model.receive(&arp()),
            RxOutcome::Delivered {
                queue: QueueId(0),
                ..
            }
        ));
        let before = model.state().writes.len();
        // Another core adopts queue 0: new ring memory, its own pool.
        let config = IgbConfig {
            ring_size: 16,
            ..IgbConfig::new(4)
        };
        let memory = QueueMemory::new_host(16).unwrap();
        let mut adopted =
            restart_queue(model.clone(), &mut no_delay, &config, QueueId(0), memory).unwrap();
        let mut pool = BufferPool::new_host(32);
        assert_eq!(adopted.refill(&mut pool), 15);
        adopted.set_interrupt(true);
        for _ in 0..3 {
            assert!(matches!(
                model.receive(&arp()),
                RxOutcome::Delivered {
                    queue: QueueId(0),
                    ..
                }
            ));
        }
        let mut batch = ReceiveBatch::new();
        assert_eq!(adopted.receive(&mut pool, &mut batch), 3);
        for frame in batch.iter() {
            assert_eq!(&pool.bytes(frame.buffer).unwrap()[..60], &arp()[..]);
        }
        let mut old = ReceiveBatch::new();
        assert_eq!(
            queues[0].receive(&mut failed_pool, &mut old),
            1,
            "only the frame from before the adoption"
        );
        // Only queue 0's own registers (and its interrupt bit) were written, the queue disabled
        // before its ring moved, and nothing device-wide: no reset, no RSS, no RCTL.
        let state = model.state();
        let writes = &state.writes[before..];
        let own: Vec<usize> = [
            regs::rxdctl(0),
            regs::rdbal(0),
            regs::rdbah(0),
            regs::rdlen(0),
            regs::srrctl(0),
            regs::rdh(0),
            regs::rdt(0),
            regs::txdctl(0),
            regs::tdbal(0),
            regs::tdbah(0),
            regs::tdlen(0),
            regs::tdh(0),
            regs::tdt(0),
            regs::EIMS,
        ]
        .to_vec();
        assert!(
            writes.iter().all(|(offset, _)| own.contains(offset)),
            "{writes:x?}"
        );
        let disabled = writes
            .iter()
            .position(|&w| w == (regs::rxdctl(0), 0))
            .unwrap();
        let moved = writes
            .iter()
            .position(|&(offset, _)| offset == regs::rdbal(0))
            .unwrap();
        assert!(disabled < moved);
        assert_eq!(writes.last(), Some(&(regs::EIMS, 1)));
        drop(state);
        // A queue the device does not have, or memory of another ring size, is refused.
        assert_eq!(
            restart_queue(
                model.clone(),
                &mut no_delay,
                &config,
                QueueId(4),
                QueueMemory::new_host(16).unwrap()
            )
            .err(),
            Some(IgbError::BadQueueCount(4))
        );
        assert_eq!(
            restart_queue(
                model.clone(),
                &mut no_delay,
                &config,
                QueueId(1),
                QueueMemory::new_host(32).unwrap()
            )
            .err(),
            Some(IgbError::RingSizeMismatch(QueueId(1)))
        );
    }

    #[test]
    fn an_attached_control_sees_and_changes_the_same_device_without_resetting_it() {
        let (model, control, _queues) = bring_up(4, 16);
        let before = model.state().writes.len();
        let mut attached = crate::igb::attach_control(model.clone(), &IgbConfig::new(4));
        assert_eq!(
            model.state().writes.len(),
            before,
            "attaching writes nothing"
        );
        assert_eq!(attached.mac_address(), MODEL_MAC);
        assert_eq!(attached.redirection_table(), control.redirection_table());
        assert_eq!(
            attached.queue_vector(QueueId(3)),
            control.queue_vector(QueueId(3))
        );
        assert_eq!(attached.other_vector(), control.other_vector());
        // The new holder moves every group of queue 0 to the others, by difference of a map.
        let mut map = crate::nic::FlowMap::round_robin(4);
        map.take_changes();
        for group in map.groups_of(0).iter().collect::<Vec<_>>() {
            map.set_owner(group, 1 + u16::from(group) % 3);
        }
        let changed = map.take_changes();
        assert_eq!(attached.write_flow_map(&map, changed), Ok(32));
        let table = attached.redirection_table();
        assert!(table.iter().all(|&queue| queue != 0));
        assert_eq!(table, control.redirection_table());
        let port = rss::source_port_for_queue(
            &rss::DEFAULT_KEY,
            &rss::default_table(4),
            FLOW,
            QueueId(0),
            1024..=65535,
        )
        .unwrap();
        let outcome = model.receive(&udp(port));
        assert!(
            !matches!(
                outcome,
                RxOutcome::Delivered {
                    queue: QueueId(0),
                    ..
                } | RxOutcome::NoDescriptor(QueueId(0))
            ),
            "{outcome:?}"
        );
        let resets = model
            .state()
            .writes
            .iter()
            .filter(|&&(offset, value)| offset == regs::CTRL && value & regs::CTRL_RST != 0)
            .count();
        assert_eq!(resets, 1, "only init reset the device");
    }

    #[test]
    fn queues_move_to_threads() {
        let (model, _control, queues) = bring_up(2, 8);
        let handles: Vec<_> = queues
            .into_iter()
            .map(|mut queue| {
                std::thread::spawn(move || {
                    let mut pool = BufferPool::new_host(16);
                    queue.refill(&mut pool)
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), 7);
        }
        assert_eq!(model.peek(regs::rdt(1)), 7);
    }
}
