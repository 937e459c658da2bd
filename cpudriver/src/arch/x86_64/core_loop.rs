//! The shell of each core's loop: read the clock, run one turn of the node (all decisions live
//! in `crate::node`), then do what the turn decided: run again, halt until the earliest deadline
//! (one-shot or TSC-deadline APIC timer) or an interrupt, or stop for good.

use super::net::KernelNetwork;
use super::{apic, interrupts, port, tsc};
use crate::cmdline::FaultKind;
use crate::node::{Instant, Next, Node, Platform, Stop};

/// A core's node, with the kernel's network type.
pub type KernelNode = Node<KernelNetwork>;

/// The machine as a node sees it: the TSC as its clock, IPIs as wake-ups, the serial console.
pub struct KernelPlatform {
    /// TSC when the kernel started (core 0's entry; the TSCs of all cores are synchronised).
    pub entry_tsc: u64,
    /// TSC ticks per millisecond.
    pub tsc_per_ms: u64,
    /// Each core's APIC id, by core index.
    pub apic_ids: alloc::vec::Vec<u32>,
}

impl KernelPlatform {
    /// The TSC value at `at` (for the timer).
    pub fn tsc_at(&self, at: Instant) -> u64 {
        let cycles = u128::from(at.as_nanos()) * u128::from(self.tsc_per_ms) / 1_000_000;
        self.entry_tsc
            .saturating_add(cycles.min(u128::from(u64::MAX)) as u64)
    }
}

impl Platform for KernelPlatform {
    fn now(&self) -> Instant {
        let cycles = tsc::now().saturating_sub(self.entry_tsc);
        Instant::from_nanos((u128::from(cycles) * 1_000_000 / u128::from(self.tsc_per_ms)) as u64)
    }

    fn cycles(&self) -> u64 {
        tsc::now()
    }

    fn cycles_per_ms(&self) -> u64 {
        self.tsc_per_ms
    }

    fn wake(&mut self, core: usize) {
        if let Some(&apic_id) = self.apic_ids.get(core) {
            apic::send_ipi(apic_id, interrupts::WAKE_VECTOR);
        }
    }

    fn print(&mut self, line: core::fmt::Arguments<'_>) {
        crate::kprintln!("{}", line);
    }

    fn set_wake_forwards(&mut self, cores: &[usize]) {
        let apic_ids: heapless::Vec<u32, { super::percore::MAX_FORWARDS }> = cores
            .iter()
            .filter_map(|&core| self.apic_ids.get(core).copied())
            .collect();
        if let Some(block) = super::percore::current() {
            // Interrupts off: this core's NIC interrupt handler reads the list.
            x86_64::instructions::interrupts::without_interrupts(|| {
                block.set_nic_forward(&apic_ids)
            });
        }
    }
}

/// One core after set-up: its node, the machine interface, its timer.
pub struct Core {
    /// The core's logic.
    pub node: KernelNode,
    /// Clock, wake-ups, console.
    pub platform: KernelPlatform,
    /// The APIC timer, armed for each halt.
    pub timer: apic::DeadlineTimer,
}

impl Core {
    /// The core's loop. Never returns.
    pub fn run(mut self) -> ! {
        loop {
            let now = self.platform.now();
            match self.node.turn(now, &mut self.platform) {
                Next::Run => core::hint::spin_loop(),
                Next::Halt { until } => self.halt(until),
                Next::Stop(Stop::Fenced | Stop::Hang) => port::halt_forever(),
                Next::Stop(Stop::Fault(kind)) => {
                    inject_fault(kind);
                    port::halt_forever()
                }
            }
        }
    }

    /// Halts until an interrupt or `until`. Interrupts are off from the last look at the rings
    /// to `sti; hlt` (which takes an interrupt only after `hlt` begins), so an IPI, a queue's
    /// MSI-X message or the timer arriving in between ends the halt instead of being lost.
    fn halt(&mut self, until: Option<Instant>) {
        x86_64::instructions::interrupts::disable();
        self.timer.arm(until.map(|at| self.platform.tsc_at(at)));
        let now = self.platform.now();
        if self.node.may_halt(now, until) {
            x86_64::instructions::interrupts::enable_and_hlt();
        } else {
            x86_64::instructions::interrupts::enable();
        }
        self.node.woke();
    }
}

/// Raises the exception `fault=` asks for; the fault handler reports it and halts this core.
fn inject_fault(kind: FaultKind) {
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
