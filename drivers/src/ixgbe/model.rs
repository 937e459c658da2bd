//! Host-only: the 82599 register layout for [`crate::model::RegisterModel`] (reset state: EEPROM
//! read done, DMA init done, 10 Gb/s link up, MAC loaded; five-tuple filters emulated), and the
//! driver's tests against it. These tests are the only testing the 82599 driver has had.

use super::regs;
use crate::model::{Layout, RegisterModel};

/// MAC address the model "loads from EEPROM".
pub const MODEL_MAC: [u8; 6] = [0x02, 0x1b, 0x21, 0x00, 0x00, 0x01];

const RESET_VALUES: &[(usize, u32)] = &[
    (regs::EEC, regs::EEC_ARD),
    (regs::RDRXCTL, regs::RDRXCTL_DMAIDONE),
    (regs::LINKS, regs::LINKS_UP | 3 << regs::LINKS_SPEED_SHIFT),
    (
        regs::RAL0,
        u32::from_le_bytes([MODEL_MAC[0], MODEL_MAC[1], MODEL_MAC[2], MODEL_MAC[3]]),
    ),
    (
        regs::RAH0,
        u32::from_le_bytes([MODEL_MAC[4], MODEL_MAC[5], 0, 0]) | 1 << 31,
    ),
];

/// The 82599 register layout.
pub const LAYOUT: Layout = Layout {
    size: regs::BAR0_SIZE,
    ctrl: regs::CTRL,
    ctrl_reset: regs::CTRL_RST_MASK,
    reset_reads: 3,
    reset_values: RESET_VALUES,
    clear_on_read: &[regs::EICR, regs::mpc(0)],
    rx_enable: (regs::RXCTRL, regs::RXCTRL_RXEN),
    tx_enable: (regs::DMATXCTL, regs::DMATXCTL_TE),
    rx_block: (0x1000, 0x40),
    tx_block: (0x6000, 0x40),
    srrctl_in_block: 0x14,
    drop_counter: (0x1430, 0x40),
    mrqc: (regs::MRQC, regs::MRQC_ENABLE_RSS),
    rxcsum: regs::RXCSUM,
    rss_needs_pcsd: false,
    reta: regs::RETA,
    rssrk: regs::RSSRK,
    interrupt: (regs::EIMS, regs::EIMC, regs::EICR),
    five_tuple: Some([0xE000, 0xE200, 0xE400, 0xE600, 0xE800]),
    tx_context_needs_check: true,
    queues: 64,
};

/// A fresh 82599 model.
pub fn new_model() -> RegisterModel {
    RegisterModel::new(LAYOUT, MODEL_MAC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::QueueMemory;
    use crate::frame::build_udp_ipv4;
    use crate::ixgbe::{init, IxgbeConfig, IxgbeControl, IxgbeError, IxgbeQueue};
    use crate::model::RxOutcome;
    use crate::nic::{
        FiveTupleFilter, FlowGroup, NicControl, NicError, QueueDatapath, QueueId, ReceiveBatch,
        TransmitFrame,
    };
    use crate::pool::BufferPool;
    use crate::rss::{self, FlowTuple};
    use std::vec::Vec;

    fn no_delay(_: u32) {}

    fn bring_up(
        queues: u16,
    ) -> (
        RegisterModel,
        IxgbeControl<RegisterModel>,
        heapless::Vec<IxgbeQueue<RegisterModel>, 16>,
    ) {
        let model = new_model();
        let config = IxgbeConfig {
            ring_size: 32,
            ..IxgbeConfig::new(queues)
        };
        let memory = (0..queues).map(|_| QueueMemory::new_host(32).unwrap());
        let (control, list) = init(model.clone(), &mut no_delay, &config, memory).unwrap();
        (model, control, list)
    }

    fn udp(source_port: u16, destination_port: u16) -> Vec<u8> {
        let mut out = std::vec![0u8; 128];
        let n = build_udp_ipv4(
            &mut out,
            [2; 6],
            MODEL_MAC,
            ([192, 168, 1, 2], source_port),
            ([192, 168, 1, 1], destination_port),
            b"x",
        );
        out.truncate(n);
        out
    }

    #[test]
    fn transmit_checksum_offload_through_context_descriptors() {
        // The 82599 model uses a context only when the data descriptor sets CC: the driver must.
        let (model, _control, mut queues) = bring_up(2);
        crate::model::offload_check::transmit_offload_is_honoured(&model, &mut queues[1]);
        crate::model::offload_check::transmit_segmentation_is_honoured(&model, &mut queues[1]);
    }

    #[test]
    fn missed_packets_are_read_by_queue_zero_only() {
        let (model, _control, queues) = bring_up(2);
        model.poke(regs::mpc(0), 3);
        assert_eq!(queues[1].stats().rx_missed, 0);
        assert_eq!(queues[0].stats().rx_missed, 3);
    }

    #[test]
    fn init_sequence_order_and_registers() {
        let (model, control, queues) = bring_up(4);
        assert_eq!(queues.len(), 4);
        let state = model.state();
        let reset = state
            .first_write_with(regs::CTRL, regs::CTRL_RST_MASK)
            .unwrap();
        assert!(state.first_write(regs::EIMC, 0x7FFF_FFFF).unwrap() < reset);
        let rx_enable = state
            .first_write_with(regs::RXCTRL, regs::RXCTRL_RXEN)
            .unwrap();
        let tx_enable = state
            .first_write_with(regs::DMATXCTL, regs::DMATXCTL_TE)
            .unwrap();
        for q in 0..4 {
            assert!(
                state
                    .writes
                    .iter()
                    .position(|&(o, _)| o == regs::rdbal(q))
                    .unwrap()
                    < rx_enable
            );
            // §4.6.7: queue enable after RXCTRL.RXEN; §4.6.8: TXDCTL.ENABLE after DMATXCTL.TE.
            assert!(
                rx_enable
                    < state
                        .first_write_with(regs::rxdctl(q), regs::QUEUE_ENABLE)
                        .unwrap()
            );
            assert!(
                tx_enable
                    < state
                        .first_write_with(regs::txdctl(q), regs::QUEUE_ENABLE)
                        .unwrap()
            );
            assert_eq!(state.register(regs::srrctl(q)) & 0x1F, 2);
            assert_eq!(
                state.register(regs::dca_rxctrl(q)) & regs::DCA_RXCTRL_DESC_WRO,
                0
            );
        }
        assert_eq!(state.register(regs::MRQC) & 0xF, 1, "MRQE = RSS");
        assert_ne!(state.register(regs::RDRXCTL) & regs::RDRXCTL_CRCSTRIP, 0);
        assert_eq!(
            state.register(regs::RTTDCS) & regs::RTTDCS_ARBDIS,
            0,
            "arbiter re-enabled"
        );
        // IVAR: queues 0 and 1 share IVAR[0]: RX0 byte 0, TX0 byte 1, RX1 byte 2, TX1 byte 3.
        assert_eq!(state.register(regs::ivar(0)), 0x8181_8080);
        assert_eq!(state.register(regs::ivar(1)), 0x8383_8282);
        assert_eq!(state.register(regs::EIMS), 1 << 4);
        drop(state);
        assert_eq!(control.mac_address(), MODEL_MAC);
        assert_eq!(control.link().speed_mbps, 10_000);
    }

    #[test]
    fn reset_and_dma_init_timeouts() {
        let stuck = RegisterModel::new(
            Layout {
                reset_reads: u32::MAX,
                ..LAYOUT
            },
            MODEL_MAC,
        );
        let config = IxgbeConfig {
            ring_size: 8,
            ..IxgbeConfig::new(1)
        };
        let one = || (0..1).map(|_| QueueMemory::new_host(8).unwrap());
        assert_eq!(
            init(stuck, &mut no_delay, &config, one()).err(),
            Some(IxgbeError::ResetTimeout)
        );
        let no_dma = RegisterModel::new(
            Layout {
                reset_values: &[(regs::EEC, regs::EEC_ARD)],
                ..LAYOUT
            },
            MODEL_MAC,
        );
        assert_eq!(
            init(no_dma, &mut no_delay, &config, one()).err(),
            Some(IxgbeError::DmaInitTimeout)
        );
        assert_eq!(
            init(new_model(), &mut no_delay, &IxgbeConfig::new(0), one()).err(),
            Some(IxgbeError::BadQueueCount(0))
        );
    }

    #[test]
    fn rss_steering_matches_the_hash_and_moves_with_flow_groups() {
        let (model, mut control, mut queues) = bring_up(4);
        let mut pools: Vec<BufferPool> = (0..4).map(|_| BufferPool::new_host(64)).collect();
        for (q, pool) in queues.iter_mut().zip(pools.iter_mut()) {
            q.refill(pool);
        }
        let flow = FlowTuple::V4 {
            source: [192, 168, 1, 2],
            destination: [192, 168, 1, 1],
            ports: Some((0, 80)),
        };
        for target in 0..4 {
            let port = rss::source_port_for_queue(
                &rss::DEFAULT_KEY,
                &control.redirection_table(),
                flow,
                QueueId(target),
                1024..=65535,
            )
            .unwrap();
            assert!(
                matches!(model.receive(&udp(port, 80)), RxOutcome::Delivered { queue, .. } if queue == QueueId(target))
            );
            let mut batch = ReceiveBatch::new();
            assert_eq!(
                queues[usize::from(target)].receive(&mut pools[usize::from(target)], &mut batch),
                1
            );
        }
        let port = 40000;
        let group = rss::flow_group_of(flow.with_source_port(port).hash(&rss::DEFAULT_KEY));
        control.set_flow_group(group, QueueId(2)).unwrap();
        assert!(matches!(
            model.receive(&udp(port, 80)),
            RxOutcome::Delivered {
                queue: QueueId(2),
                ..
            }
        ));
        assert_eq!(
            control.flow_group(FlowGroup(200)),
            Err(NicError::NoSuchFlowGroup(FlowGroup(200)))
        );
    }

    #[test]
    fn five_tuple_filters_override_rss_by_priority_and_can_be_removed() {
        let (model, mut control, mut queues) = bring_up(4);
        let mut pools: Vec<BufferPool> = (0..4).map(|_| BufferPool::new_host(64)).collect();
        for (q, pool) in queues.iter_mut().zip(pools.iter_mut()) {
            q.refill(pool);
        }
        let flow = FlowTuple::V4 {
            source: [192, 168, 1, 2],
            destination: [192, 168, 1, 1],
            ports: Some((0, 53)),
        };
        let port = rss::source_port_for_queue(
            &rss::DEFAULT_KEY,
            &control.redirection_table(),
            flow,
            QueueId(0),
            1024..=65535,
        )
        .unwrap();
        // Any UDP to port 53 → queue 3 (low priority); this exact source port → queue 1 (high).
        let broad = FiveTupleFilter {
            protocol: Some(17),
            destination_port: Some(53),
            priority: 1,
            ..Default::default()
        };
        let narrow = FiveTupleFilter {
            source_port: Some(port),
            priority: 5,
            ..broad
        };
        let broad_slot = control.add_filter(broad, QueueId(3)).unwrap();
        let narrow_slot = control.add_filter(narrow, QueueId(1)).unwrap();
        assert_eq!((broad_slot, narrow_slot), (0, 1));
        assert!(matches!(
            model.receive(&udp(port, 53)),
            RxOutcome::Delivered {
                queue: QueueId(1),
                ..
            }
        ));
        assert!(matches!(
            model.receive(&udp(port + 1, 53)),
            RxOutcome::Delivered {
                queue: QueueId(3),
                ..
            }
        ));
        control.remove_filter(narrow_slot).unwrap();
        assert!(matches!(
            model.receive(&udp(port, 53)),
            RxOutcome::Delivered {
                queue: QueueId(3),
                ..
            }
        ));
        control.remove_filter(broad_slot).unwrap();
        assert!(matches!(
            model.receive(&udp(port, 53)),
            RxOutcome::Delivered {
                queue: QueueId(0),
                ..
            }
        ));
        assert_eq!(
            control.remove_filter(broad_slot),
            Err(NicError::NoSuchFilter(0))
        );
        assert_eq!(
            control.add_filter(
                FiveTupleFilter {
                    protocol: Some(1),
                    ..Default::default()
                },
                QueueId(0)
            ),
            Err(NicError::Unsupported)
        );
        // Fill all 128 slots.
        for _ in 0..regs::FIVE_TUPLE_FILTERS {
            control.add_filter(broad, QueueId(0)).unwrap();
        }
        assert_eq!(
            control.add_filter(broad, QueueId(0)),
            Err(NicError::FiltersFull)
        );
        // Register encoding: UDP, priority 1, source addr/dst addr/src port masked, queue 0.
        let ftqf = model.peek(regs::ftqf(0));
        assert_eq!(ftqf & 3, 1);
        assert_eq!((ftqf >> regs::FTQF_MASK_SHIFT) & 0x1F, 0b00111);
        assert_eq!(
            model.peek(regs::sdpqf(0)) >> 16,
            u32::from(53u16.swap_bytes())
        );
    }

    #[test]
    fn datapath_round_trip_with_wrap() {
        let (model, _control, mut queues) = bring_up(1);
        let mut pool = BufferPool::new_host(64);
        let q = &mut queues[0];
        let mut sent = 0;
        for round in 0..20u16 {
            q.refill(&mut pool);
            for k in 0..(round % 9 + 1) {
                model.receive(&udp(1000 + k, 9));
            }
            let mut batch = ReceiveBatch::new();
            let n = q.receive(&mut pool, &mut batch);
            let frames: Vec<TransmitFrame> = batch
                .iter()
                .map(|f| TransmitFrame::new(f.buffer, f.length))
                .collect();
            assert_eq!(q.transmit(&mut pool, &frames), n);
            q.reclaim(&mut pool);
            sent += n;
        }
        assert_eq!(model.take_transmitted().len(), sent);
        assert_eq!(q.stats().tx_packets as usize, sent);
    }
}
