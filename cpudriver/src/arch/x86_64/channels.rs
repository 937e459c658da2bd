//! The boot-time URPC channels: one channel between every pair of cores, laid out by core 0 and
//! attached by both ends (the node's mailbox then owns them; its wake-ups are IPIs through the
//! kernel's `Platform`).
//!
//! Channel `(a, b)` with `a < b` lives in core `a`'s memory: core `a` reserves
//! `(cores - 1 - a)` channel regions at the top of its slice at boot. Core 0 initialises every
//! region before any other core starts (that start is the happens-before edge `attach_raw`
//! needs); core `a` then claims side A, core `b` side B.

use alloc::vec::Vec;

use urpc::{ChannelRegion, Endpoint, Side};

/// The channel type used between cores.
pub type Channel = ChannelRegion;

/// Bytes one channel region takes (a whole number of cache lines).
pub const REGION_STRIDE: u64 = Channel::SIZE.div_ceil(64) as u64 * 64;

/// Bytes core `core` of `cores` reserves for the channels it hosts.
pub fn area_size(core: usize, cores: usize) -> u64 {
    (cores - 1 - core) as u64 * REGION_STRIDE
}

/// The address of the channel between `a` and `b`, given each core's area base.
pub fn region_address(areas: &[u64], a: usize, b: usize) -> u64 {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    areas[low] + (high - low - 1) as u64 * REGION_STRIDE
}

/// Initialises every channel region (core 0, before the other cores start).
///
/// # Safety
/// 1. Each core's area is identity-mapped RAM of `area_size` bytes, reserved for channels.
/// 2. No other core runs yet.
pub unsafe fn initialise_all(areas: &[u64], cores: usize) {
    for a in 0..cores {
        for b in a + 1..cores {
            let address = region_address(areas, a, b);
            // SAFETY: conditions 1 and 2: the region is reserved, mapped and not yet shared.
            unsafe { Channel::init_raw(address as *mut u8, REGION_STRIDE as usize) }
                .expect("channel regions are 64-byte aligned and REGION_STRIDE long");
        }
    }
}

/// One core's ends of its channels, indexed by peer.
pub struct Channels {
    /// `endpoints[peer]`, `None` for this core itself.
    pub endpoints: Vec<Option<Endpoint<'static>>>,
}

impl Channels {
    /// Attaches core `me`'s side of every channel.
    ///
    /// # Safety
    /// 1. [`initialise_all`] ran on these areas before this core started.
    pub unsafe fn attach(areas: &[u64], cores: usize, me: usize) -> Self {
        let mut endpoints = Vec::with_capacity(cores);
        for peer in 0..cores {
            if peer == me {
                endpoints.push(None);
                continue;
            }
            let address = region_address(areas, me, peer);
            // SAFETY: condition 1; the region lives forever in identity-mapped memory.
            let region: &'static Channel =
                unsafe { Channel::attach_raw(address as *const u8, REGION_STRIDE as usize) }
                    .expect("core 0 initialised every channel");
            let side = if me < peer { Side::A } else { Side::B };
            endpoints.push(Some(region.claim(side).expect("each side is claimed once")));
        }
        Self { endpoints }
    }
}
