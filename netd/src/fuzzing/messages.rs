//! Message targets: the messages one core's stack sends another ([`PeerMessage`]) and the
//! statistics snapshot a core sends the core gathering `/stats` ([`CoreStats`]).

use crate::config::NetConfig;
use crate::peers::PeerMessage;
use crate::stats::{write_json, CoreCounters, CoreStats, MemoryCounters, OwnCore, StatsView};
use crate::transport::TransportCounters;

extern crate alloc;
use alloc::string::String;
use alloc::vec;

/// `peer_message`: bytes decoded as a [`PeerMessage`]. What decodes encodes into exactly
/// `encoded_len` bytes, which decode to the same message.
pub fn peer_message(data: &[u8]) {
    let Ok(message) = PeerMessage::decode(data) else {
        return;
    };
    let length = message.encoded_len();
    let mut bytes = vec![0u8; length];
    assert_eq!(message.encode(&mut bytes), Ok(length), "{message:?}");
    assert_eq!(
        PeerMessage::decode(&bytes),
        Ok(message),
        "{message:?} does not survive"
    );
    let _ = message.fits_one_slot();
}

/// `stats_snapshot`: bytes decoded as another core's statistics snapshot, as the gathering core
/// takes them, then served as `/stats` JSON beside this core's own entry. What decodes encodes
/// to bytes that decode to the same snapshot; the JSON renders whatever the counters hold.
pub fn stats_snapshot(data: &[u8]) {
    let Ok(snapshot) = CoreStats::decode(data) else {
        return;
    };
    assert_eq!(
        CoreStats::decode(&snapshot.encode()),
        Ok(snapshot),
        "{snapshot:?}"
    );
    let host = NetConfig::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], 0, 2);
    let counters = CoreCounters::default();
    let transport = TransportCounters::default();
    let gathered = [snapshot];
    let view = StatsView {
        gathered: &gathered,
        own: OwnCore {
            core: 0,
            uptime_ms: 5,
            counters: &counters,
            before: &[],
            current: None,
            after: &[],
            transport: &transport,
            memory: MemoryCounters::default(),
        },
    };
    let mut json = String::new();
    write_json(&host, &view, &mut json);
    assert!(
        json.starts_with("{\"host\":") && json.ends_with("]}"),
        "{json}"
    );
}
