"""Flotilla's gdb extension: backtraces through interrupt entry, and per-core views.

Loaded by `cargo run -p qemu-smp -- gdb` (or `source qemu-smp/gdb/flotilla.py` in gdb). QEMU's
gdb stub shows each virtual CPU as a thread: `thread N` is core N-1. Commands:

  flotilla cores            every core: state, APIC id, timer ticks, interrupts, heap, where
  flotilla channels [CORE]  the URPC channel ends of a core (default: the selected thread's)
  flotilla paths [CORE]     a core's network counters and its paths' counters

`channels` and `paths` read the core's `Core` (cpudriver's core loop state), found as `self` in
one of the core's frames: they work when the core is in its loop, halted, or in an interrupt
or exception handler (the unwinder below carries backtraces through interrupt entry).
Everything is read from the kernel's own debug information (types and variables), so a field
renamed in the kernel shows up here as a clear error naming it, not as a wrong number.
"""

import re

import gdb
from gdb.unwinder import Unwinder

CORE_TYPE = "cpudriver::arch::x86_64::core_loop::Core"
PER_CORE_TYPE = "cpudriver::arch::x86_64::percore::PerCore"
# The order in which the interrupt stub pushes the general registers (InterruptFrame, lowest
# address first), then the stub's vector and error words and the CPU's frame.
SAVED = ["r15", "r14", "r13", "r12", "r11", "r10", "r9", "r8",
         "rbp", "rdi", "rsi", "rdx", "rcx", "rbx", "rax"]
VECTOR_SLOT = 15
RIP_SLOT, CS_SLOT, RFLAGS_SLOT, RSP_SLOT, SS_SLOT = 17, 18, 19, 20, 21
FRAME_WORDS = 22


class FlotillaError(gdb.GdbError):
    """An error shown to the user as one line."""


def u64(address):
    """The 64-bit little-endian word at `address` in guest memory."""
    data = gdb.selected_inferior().read_memory(address, 8)
    return int.from_bytes(bytes(data), "little")


def symbol_address(name):
    """The address of an ELF symbol (also one without debug information), or None."""
    try:
        text = gdb.execute(f"info address {name}", to_string=True)
    except gdb.error:
        return None
    match = re.search(r"is at (0x[0-9a-f]+)", text) or re.search(r"address (0x[0-9a-f]+)", text)
    return int(match.group(1), 16) if match else None


class InterruptEntry:
    """Where `flotilla_isr_common` (cpudriver's interrupts.rs) keeps the interrupted registers.

    For every instruction address in the stub: where the start of the saved frame
    (`InterruptFrame`) lies relative to the stack pointer there. Worked out once by disassembling the
    stub and counting its pushes and pops, so it follows the stub if it changes shape.
    """

    def __init__(self):
        self.start = symbol_address("flotilla_isr_common")
        self.offsets = {}
        self.end = self.start
        if self.start is None:
            return
        arch = gdb.selected_inferior().architecture()
        pushed = 0  # general registers pushed before the instruction
        popped = 0  # words popped (and the vector and error words dropped) after the call
        after_call = False
        for instruction in arch.disassemble(self.start, count=64):
            address, text = instruction["addr"], instruction["asm"]
            if after_call:
                # After the call the frame starts at the stack pointer, minus what was popped.
                self.offsets[address] = -popped * 8
            else:
                # On entry the stack pointer is at the vector word, VECTOR_SLOT words above the
                # frame's start; each push brings it one word closer.
                self.offsets[address] = -(VECTOR_SLOT - pushed) * 8
            if text.startswith("push"):
                pushed += 1
            elif text.startswith("call"):
                after_call = True
            elif text.startswith("pop"):
                popped += 1
            elif text.startswith("add") and "rsp" in text:
                popped += 2
            elif text.startswith("iret"):
                self.end = address + instruction["length"]
                break

    def frame_base(self, pc, sp):
        """The address of the saved `InterruptFrame` when the stub is at `pc` with `sp`."""
        offset = self.offsets.get(pc)
        if offset is None:
            return None
        return sp + offset


_entry = None


def interrupt_entry():
    global _entry
    if _entry is None or _entry.start is None:
        _entry = InterruptEntry()
    return _entry


class FrameId:
    """A frame's identity for gdb: its stack address and its function's start (gdb.Values)."""

    def __init__(self, sp, pc):
        self.sp = gdb.Value(sp)
        self.pc = gdb.Value(pc)


class InterruptUnwinder(Unwinder):
    """Unwinds `flotilla_isr_common` into the code the interrupt or exception stopped.

    The stub has no call frame information; without this, gdb's backtrace from inside a
    handler (and from a core that faulted) ends in garbage after `flotilla_isr_common`.
    """

    def __init__(self):
        super().__init__("flotilla interrupt entry")

    def __call__(self, pending_frame):
        pc = int(pending_frame.read_register("rip"))
        entry = interrupt_entry()
        if entry.start is None or not entry.start <= pc < entry.end:
            return None
        sp = int(pending_frame.read_register("rsp"))
        base = entry.frame_base(pc, sp)
        if base is None:
            return None
        unwind = pending_frame.create_unwind_info(FrameId(base + FRAME_WORDS * 8, entry.start))
        slots = list(enumerate(SAVED)) + [(RIP_SLOT, "rip"), (RSP_SLOT, "rsp"),
                                           (RFLAGS_SLOT, "eflags"), (CS_SLOT, "cs"),
                                           (SS_SLOT, "ss")]
        for slot, register in slots:
            # Each register as gdb's own type for it (eflags, cs and ss are 32 bits there).
            kind = pending_frame.read_register(register).type
            word = u64(base + slot * 8) & ((1 << (8 * kind.sizeof)) - 1)
            if kind.code not in (gdb.TYPE_CODE_PTR, gdb.TYPE_CODE_INT):
                # A flags type (eflags): any integer of its size will do.
                kind = pending_frame.architecture().integer_type(8 * kind.sizeof, False)
            unwind.add_saved_register(register, gdb.Value(word).cast(kind))
        return unwind


# --- reading Rust values ------------------------------------------------------------------


def field(value, name):
    """`value.name`, or a clear error naming the field and the type."""
    try:
        return value[name]
    except gdb.error as error:
        raise FlotillaError(f"flotilla: {value.type} has no field '{name}' ({error}); "
                            "the kernel changed: update qemu-smp/gdb/flotilla.py") from None


def number(value):
    """The integer inside a value, looking through Rust wrappers (atomics, cells)."""
    while value.type.strip_typedefs().code == gdb.TYPE_CODE_STRUCT:
        fields = value.type.strip_typedefs().fields()
        if not fields:
            break
        value = value[fields[0]]
    return int(value)


def variant(value):
    """(variant name, payload value) of a Rust enum such as `Option<T>`.

    gdb shows a Rust enum value as a structure whose fields are the discriminant (artificial)
    and the one active variant.
    """
    kind = value.type.strip_typedefs()
    active = [f for f in kind.fields() if not f.artificial and f.name]
    if not active:
        raise FlotillaError(f"flotilla: {kind} is not a Rust enum gdb can read")
    payload = value[active[0]]
    return active[0].name, payload


def some(value):
    """The payload of `Some(x)`, or None for `None`."""
    name, payload = variant(value)
    if name == "None":
        return None
    return field(payload, "__0")


def vec_items(value):
    """The elements of an `alloc::vec::Vec<T>`."""
    length = number(field(value, "len"))
    pointer = field(value, "buf")["inner"]["ptr"]["pointer"]["pointer"]
    element = value.type.strip_typedefs().template_argument(0)
    start = pointer.cast(element.pointer())
    return [(start + index).dereference() for index in range(length)]


def deque_len(value):
    """The number of elements in a `heapless::Deque`."""
    front, back = number(field(value, "front")), number(field(value, "back"))
    storage = field(field(value, "buffer"), "buffer")
    capacity = storage.type.strip_typedefs().range()[1] + 1
    if bool(field(value, "full")):
        return capacity
    return (back - front) % capacity


# --- finding a core's state ----------------------------------------------------------------


def threads():
    """(core, thread) for every virtual CPU, core = thread number - 1."""
    inferior = gdb.selected_inferior()
    return sorted(((thread.num - 1, thread) for thread in inferior.threads()),
                  key=lambda pair: pair[0])


def thread_of(core):
    for index, thread in threads():
        if index == core:
            return thread
    raise FlotillaError(f"flotilla: no core {core} (cores: 0..{len(threads()) - 1})")


def selected_core():
    return gdb.selected_thread().num - 1


def per_core_block():
    """The selected core's `PerCore` (through its GS base), or None before it is set up."""
    base = int(gdb.parse_and_eval("$gs_base"))
    if base == 0:
        return None
    kind = gdb.lookup_type(PER_CORE_TYPE)
    return gdb.Value(base).cast(kind.pointer()).dereference()


def core_state():
    """The selected core's `Core`, from the first frame that has it as `self`, or None."""
    frame = gdb.newest_frame()
    while frame is not None:
        try:
            value = frame.read_var("self")
        except (ValueError, gdb.error):
            value = None
        if value is not None:
            kind = value.type.strip_typedefs()
            if kind.code == gdb.TYPE_CODE_PTR:
                if kind.target().strip_typedefs().name == CORE_TYPE:
                    return value.dereference()
            elif kind.name == CORE_TYPE:
                return value
        try:
            frame = frame.older()
        except gdb.error:
            return None
    return None


class OnCore:
    """Selects core N's thread for the duration of a `with` block, then the original again."""

    def __init__(self, core):
        self.core = core

    def __enter__(self):
        self.previous = gdb.selected_thread()
        if self.core is not None:
            thread_of(self.core).switch()
        return selected_core()

    def __exit__(self, *exc):
        if self.previous is not None and self.previous.is_valid():
            self.previous.switch()
        return False


def require_core_state(core):
    state = core_state()
    if state is None:
        raise FlotillaError(
            f"flotilla: core {core}: no frame of its core loop holds the `Core` (it is not in "
            "its loop yet, or stopped where it is out of sight); `bt` shows where it is")
    return state


def parse_core(argument):
    argument = argument.strip()
    if not argument:
        return None
    try:
        return int(argument, 0)
    except ValueError:
        raise FlotillaError(f"flotilla: '{argument}' is not a core number") from None


OWN_CODE = ("cpudriver::", "netd::", "urpc::", "monitor::", "drivers::", "flotilla")


def describe(frame):
    name = frame.name() or f"{frame.pc():#x}"
    sal = frame.find_sal()
    if sal.symtab:
        return f"{name} ({sal.symtab.filename.rsplit('/', 1)[-1]}:{sal.line})"
    return name


def where():
    """The selected core's innermost frame, and the innermost one in Flotilla's own code."""
    frame = gdb.newest_frame()
    text = describe(frame)
    own = frame
    while own is not None and not (own.name() or "").startswith(OWN_CODE):
        try:
            own = own.older()
        except gdb.error:
            own = None
    if own is not None and own != frame:
        text += f" in {describe(own)}"
    return text


# --- commands ------------------------------------------------------------------------------


class Flotilla(gdb.Command):
    """Flotilla's views of the machine: flotilla cores | channels [CORE] | paths [CORE]."""

    def __init__(self):
        super().__init__("flotilla", gdb.COMMAND_USER, prefix=True)


class Cores(gdb.Command):
    """Every core: state, APIC id, timer ticks, other interrupts, heap use, where it is."""

    def __init__(self):
        super().__init__("flotilla cores", gdb.COMMAND_USER)

    def invoke(self, argument, from_tty):
        for core, thread in threads():
            with OnCore(core):
                state = "halted" if "halted" in (thread.details or "") else "running"
                block = per_core_block()
                if block is None:
                    gdb.write(f"core {core} (thread {thread.num}): {state}, not set up yet "
                              f"(GS base 0), at {where()}\n")
                    continue
                heap = field(block, "heap")["value"]
                gdb.write(
                    f"core {number(field(block, 'index'))} (thread {thread.num}): {state}, "
                    f"apic={number(field(block, 'apic_id'))} "
                    f"ticks={number(field(block, 'ticks'))} "
                    f"interrupts={number(field(block, 'interrupts'))} "
                    f"heap_used={number(field(heap, 'used'))} bytes, at {where()}\n")


def stamp(generation, count):
    return (generation << 32) | count


class Channels(gdb.Command):
    """A core's URPC channel ends: messages sent and received, credits, pending messages.

    Usage: flotilla channels [CORE]   (default: the selected thread's core)
    'pending' means the next slot this core will read already holds a message; 'peer asleep'
    means the peer announced it is halting on the ring this core sends on (a send must
    notify it)."""

    def __init__(self):
        super().__init__("flotilla channels", gdb.COMMAND_USER)

    def invoke(self, argument, from_tty):
        with OnCore(parse_core(argument)) as core:
            state = require_core_state(core)
            links = vec_items(field(field(field(state, "node"), "mailbox"), "links"))
            gdb.write(f"core {core}: {len(links)} channel slots (one per core)\n")
            for peer, slot in enumerate(links):
                link = some(slot)
                if link is None:
                    continue
                endpoint = field(link, "endpoint")
                sender = field(endpoint, "sender")
                receiver = field(endpoint, "receiver")
                sent = number(field(sender, "count"))
                limit = number(field(sender, "limit"))
                generation = number(field(sender, "generation"))
                received = number(field(receiver, "count"))
                receive_generation = number(field(receiver, "generation"))
                ring = field(receiver, "ring").dereference()
                slots = field(ring, "slots")
                size = slots.type.strip_typedefs().range()[1] + 1
                header = number(field(slots[received % size], "header"))
                pending = header == stamp(receive_generation, received)
                out_ring = field(sender, "ring").dereference()
                asleep = number(field(field(out_ring, "sleep"), "sleeping")) != 0
                gdb.write(
                    f"  core {core} -> core {peer}: sent={sent} credits={(limit - sent) % 2**32}"
                    f" generation={generation}{' peer asleep' if asleep else ''}\n"
                    f"  core {peer} -> core {core}: received={received} "
                    f"credited={number(field(receiver, 'credited'))}"
                    f"{' pending' if pending else ''}\n")


class Paths(gdb.Command):
    """A core's network counters (netd's CoreCounters) and each path's counters and queue.

    Usage: flotilla paths [CORE]   (default: the selected thread's core)"""

    def __init__(self):
        super().__init__("flotilla paths", gdb.COMMAND_USER)

    def invoke(self, argument, from_tty):
        with OnCore(parse_core(argument)) as core:
            state = require_core_state(core)
            network = some(field(field(state, "node"), "net"))
            if network is None:
                gdb.write(f"core {core}: no network (no NIC, or not brought up)\n")
                return
            net = field(network, "net")
            counters = field(net, "counters")
            drops = sum(int(d) for d in self.array(field(counters, "drops")))
            names = ["rx_frames", "tx_frames", "forwarded_in", "forwarded_out", "polls",
                     "no_buffer"]
            line = " ".join(f"{name}={number(field(counters, name))}" for name in names)
            gdb.write(f"core {core}: {line} drops={drops}\n")
            for path in vec_items(field(net, "paths")):
                key = field(path, "key")
                key_name, key_value = variant(key)
                if key_name in ("Udp", "Tcp"):
                    key_name += f" port {number(field(key_value, '__0'))}"
                path_counters = field(path, "counters")
                queue = deque_len(field(field(path, "queue"), "frames"))
                names = ["packets", "bytes", "queue_drops", "tx_packets", "tx_drops", "runs",
                         "cycles"]
                line = " ".join(f"{name}={number(field(path_counters, name))}" for name in names)
                gdb.write(f"  path {key_name}: {line} queued={queue}\n")

    @staticmethod
    def array(value):
        low, high = value.type.strip_typedefs().range()
        return [value[index] for index in range(low, high + 1)]


gdb.unwinder.register_unwinder(None, InterruptUnwinder(), replace=True)
Flotilla()
Cores()
Channels()
Paths()
gdb.write("flotilla: commands 'flotilla cores', 'flotilla channels [CORE]', "
          "'flotilla paths [CORE]'; thread N is core N-1\n")
