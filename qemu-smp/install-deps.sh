#!/usr/bin/env bash
# Installs the host packages Flotilla needs to boot and test: QEMU 10 from bookworm-backports
# (bookworm's own QEMU 7.2 has no igb NIC), OVMF, GRUB BIOS and EFI modules, xorriso and mtools;
# then the plain bookworm packages the tests and tools use, one line each below (what checks
# for it, which package, who needs it). Used by `qemu-smp` (which embeds this file) and by
# `.ci/run`. Debian bookworm, as root; elsewhere it prints what to install.
set -euo pipefail

# The machine itself (qemu-smp run/test). `qemu` stands for qemu-system-x86 from backports.
need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"' || need+=(qemu)
[ -f /usr/share/OVMF/OVMF_CODE.fd ] || [ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
[ -d /usr/lib/grub/i386-pc ] || need+=(grub-pc-bin)
[ -d /usr/lib/grub/x86_64-efi ] || need+=(grub-efi-amd64-bin)
command -v grub-mkrescue >/dev/null 2>&1 || need+=(grub-common)
command -v xorriso >/dev/null 2>&1 || need+=(xorriso)
command -v mformat >/dev/null 2>&1 || need+=(mtools)
command -v ip >/dev/null 2>&1 || need+=(iproute2)

# Plain bookworm packages, one per line: `want CHECK PACKAGE...` adds the packages when CHECK fails.
clients=()
want() { local check=$1; shift; eval "$check" >/dev/null 2>&1 || clients+=("$@"); }
# Network clients of the tap tests (tests/tests/net.rs). pymemcache is looked for in Debian's
# own /usr/bin/python3, where python3-pymemcache installs it.
want 'command -v ping' iputils-ping
want 'command -v curl' curl
want 'command -v nc' netcat-openbsd
want "/usr/bin/python3 -c 'import pymemcache'" python3 python3-pymemcache
# memcached: the reference server (tests start their own on a loopback port) and libmemcached's
# command-line clients (memcslap, memccp, memccat, memcflush, memcstat) for tests/tests/memcached.rs.
want '[ -x /usr/bin/memcached ]' memcached
want 'command -v memcslap' libmemcached-tools
# TCP/IP as a host (tests/tests/tcp.rs, qemu-smp bench tcp): nmap sees closed ports, wrk loads
# HTTP with thousands of connections.
want 'command -v nmap' nmap
want 'command -v wrk' wrk
# Debugging (tests/tests/debug.rs, README "Debugging", docs/debugging.md).
want 'command -v gdb' gdb
want 'command -v tshark' tshark
want 'command -v addr2line' binutils
# Experiments (qemu-smp experiment, docs/experiments.md): the Linux baseline guest is built from
# Debian packages with dpkg-deb, tar, xz, gcc -static (glibc's static libraries) and cpio;
# plots need a TrueType font.
want 'command -v cpio' cpio
want 'command -v xz' xz-utils
want 'command -v gcc' gcc
want '[ -f /usr/lib/x86_64-linux-gnu/libc.a ]' libc6-dev
want '[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]' fonts-dejavu-core

if [ ${#need[@]} -eq 0 ] && [ ${#clients[@]} -eq 0 ]; then
  echo "install-deps: QEMU (with igb), OVMF, GRUB tools and every test and tool package are present"
  exit 0
fi

base=(ovmf grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools iproute2)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || ! grep -q bookworm /etc/os-release 2>/dev/null; then
  echo "install-deps: missing: ${need[*]} ${clients[*]}" >&2
  echo "install-deps: on Debian bookworm, as root, run:" >&2
  echo "  echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list" >&2
  echo "  apt-get update && apt-get install -y -t bookworm-backports qemu-system-x86 && apt-get install -y ${base[*]} ${clients[*]}" >&2
  echo "install-deps: elsewhere, install QEMU >= 8.0 (for the igb NIC), OVMF, grub-mkrescue with BIOS and EFI modules, xorriso, mtools, and the equivalents of: ${clients[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: missing test and tool packages: ${clients[*]}; installing with apt-get"
  apt-get update -qq
  apt-get install -y -qq "${clients[@]}" >/dev/null
  echo "install-deps: done"
  exit 0
fi
echo "install-deps: missing: ${need[*]}; installing with apt-get (Debian bookworm, root)"
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | head -1 | awk '{print $2}')
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | grep -v security | head -1 | awk '{print $2}')
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  echo "install-deps: adding bookworm-backports from $uri to /etc/apt/sources.list.d/flotilla-backports.list"
  echo "deb $uri bookworm-backports main" > /etc/apt/sources.list.d/flotilla-backports.list
fi
echo "install-deps: apt-get update"
apt-get update -qq
echo "install-deps: apt-get install -t bookworm-backports qemu-system-x86"
apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
echo "install-deps: apt-get install ${base[*]}"
apt-get install -y -qq "${base[@]}" >/dev/null
if [ ${#clients[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${clients[*]}"
  apt-get install -y -qq "${clients[@]}" >/dev/null
fi
echo "install-deps: done: $(qemu-system-x86_64 --version | head -1)"
