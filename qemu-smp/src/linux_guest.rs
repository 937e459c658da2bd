//! The Linux baseline guest: Debian's kernel, busybox and memcached, booted by this tool on the
//! same QEMU line as Flotilla (TCG, igb, cores, memory, tap namespace).
//!
//! [`prepare`] builds it into `target/linux-guest/` from Debian packages, installing nothing:
//! `apt-get download` fetches `linux-image-amd64` (whose one dependency names the current ABI,
//! e.g. `linux-image-6.1.0-57-amd64`), that kernel package, `busybox-static`, `memcached` and the
//! library packages memcached depends on; `dpkg-deb` unpacks only what is needed. The kernel's
//! uncompressed `vmlinux` (an xz stream inside Debian's bzImage) has a PVH note, so QEMU's
//! `-kernel` starts it directly, skipping ~4 s of firmware and decompressor under TCG. The
//! initramfs (`cpio -H newc`, gzip) holds busybox, the igb module and the modules it depends on
//! (read from each module's `.modinfo`), `echod` (a static C echo server on port 7 that also
//! answers HTTP on port 80 with a fixed page, built here with `gcc -static`,
//! `linux-guest/echod.c`), memcached with the libraries `ldd` lists, and an
//! `/init` that brings up the NIC at the guest address, starts both servers and prints
//! [`READY_LINE`]. Everything is rebuilt when the package versions or the embedded sources
//! change. The tools it needs (`apt-get`, `dpkg-deb`, `gcc`, `cpio`, `gzip`, `xz`) are installed
//! by `qemu-smp/install-deps.sh`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tap::{GUEST_ADDRESS, HOST_ADDRESS, PREFIX};

/// The echo server's source, compiled into the initramfs.
const ECHOD_SOURCE: &str = include_str!("../linux-guest/echod.c");
/// What `/init` prints once both servers run.
pub const READY_LINE: &str = "linux-guest: ready";
/// The kernel command line the guest boots with (serial console, quiet, no reboot on panic).
pub const CMDLINE: &str = "console=ttyS0 quiet panic=-1 rdinit=/init";
/// The module whose dependencies are loaded first.
const NIC_MODULE: &str = "igb";

/// A built guest.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// The uncompressed kernel (PVH ELF) for `-kernel`.
    pub kernel: PathBuf,
    /// The initramfs for `-initrd`.
    pub initrd: PathBuf,
    /// The kernel package, e.g. `linux-image-6.1.0-57-amd64 6.1.192-3`.
    pub kernel_package: String,
    /// The memcached package version, e.g. `1.6.18-1+deb12u1`.
    pub memcached_version: String,
}

impl LinuxGuest {
    /// QEMU arguments beyond the shared machine line: the initramfs.
    pub fn extra_args(&self) -> Vec<String> {
        vec!["-initrd".into(), self.initrd.to_string_lossy().into_owned()]
    }
}

/// Why the guest could not be built.
#[derive(Debug)]
pub enum LinuxGuestError {
    /// A tool is missing.
    MissingTool(String),
    /// A command failed.
    Command {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A file operation failed.
    Io(PathBuf, std::io::Error),
    /// A package or file was not what we expect.
    Unexpected(String),
}

impl fmt::Display for LinuxGuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingTool(tool) => write!(
                f,
                "building the Linux guest needs `{tool}`: run `bash qemu-smp/install-deps.sh` (Debian)"
            ),
            Self::Command { command, output } => write!(f, "`{command}` failed: {}", output.trim()),
            Self::Io(path, e) => write!(f, "{}: {e}", path.display()),
            Self::Unexpected(what) => write!(f, "Linux guest: {what}"),
        }
    }
}

impl std::error::Error for LinuxGuestError {}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LinuxGuestError + '_ {
    move |e| LinuxGuestError::Io(path.to_path_buf(), e)
}

fn run(command: &mut Command) -> Result<Vec<u8>, LinuxGuestError> {
    let description = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|e| LinuxGuestError::Command {
        command: description.clone(),
        output: e.to_string(),
    })?;
    if !output.status.success() {
        return Err(LinuxGuestError::Command {
            command: description,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(output.stdout)
}

fn run_text(command: &mut Command) -> Result<String, LinuxGuestError> {
    Ok(String::from_utf8_lossy(&run(command)?).into_owned())
}

fn require(tool: &str) -> Result<(), LinuxGuestError> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Ok(())
    } else {
        Err(LinuxGuestError::MissingTool(tool.into()))
    }
}

/// Where the guest is built: `target/linux-guest/`.
pub fn cache_dir() -> PathBuf {
    crate::workspace_root().join("target").join("linux-guest")
}

/// Package names from a Debian `Depends:` field (alternatives: the first; versions dropped).
pub fn parse_depends(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|part| {
            let first = part.split('|').next()?.trim();
            let name = first.split_whitespace().next()?;
            let name = name.split(':').next()?;
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The `depends=` entry of a kernel module's `.modinfo` (module names, comma separated).
pub fn module_depends(module: &[u8]) -> Vec<String> {
    let needle = b"depends=";
    let Some(at) = module
        .windows(needle.len())
        .enumerate()
        .find(|(index, window)| *window == needle && (*index == 0 || module[index - 1] == 0))
        .map(|(index, _)| index + needle.len())
    else {
        return Vec::new();
    };
    let end = module[at..]
        .iter()
        .position(|b| *b == 0)
        .map_or(module.len(), |n| at + n);
    String::from_utf8_lossy(&module[at..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// The offset of the first xz stream in a bzImage (the compressed kernel).
pub fn xz_offset(image: &[u8]) -> Option<usize> {
    const MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
    image.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// The `/init` script.
fn init_script(modules: &[String]) -> String {
    let inserts: String = modules
        .iter()
        .map(|m| format!("insmod /lib/modules/{m}.ko || echo 'linux-guest: insmod {m} failed'\n"))
        .collect();
    format!(
        r#"#!/bin/sh
# Flotilla's Linux baseline guest (qemu-smp/src/linux_guest.rs): NIC up, echod and memcached.
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
{inserts}ip link set lo up
nic=""
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  for path in /sys/class/net/*; do
    name=${{path##*/}}
    [ "$name" != lo ] && nic=$name
  done
  [ -n "$nic" ] && break
  sleep 0.1
done
if [ -z "$nic" ]; then echo "linux-guest: no network interface"; fi
ip link set "$nic" up
ip addr add {GUEST_ADDRESS}/{PREFIX} dev "$nic"
ip route add default via {HOST_ADDRESS}
cpus=$(grep -c ^processor /proc/cpuinfo)
# Thousands of connections (bench tcp): the default limit of 1024 files would refuse them.
ulimit -n 65536
/sbin/echod &
/usr/bin/memcached -u root -l 0.0.0.0 -p 11211 -U 11211 -t "$cpus" -c 4096 -m 256 &
echo "{READY_LINE} cpus=$cpus nic=$nic kernel=$(uname -r)"
while true; do sleep 3600; done
"#
    )
}

/// A fingerprint of everything the build depends on besides the packages.
fn source_fingerprint() -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in ECHOD_SOURCE
        .bytes()
        .chain(init_script(&[]).bytes())
        .chain(CMDLINE.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn apt_download(dir: &Path, packages: &[&str]) -> Result<(), LinuxGuestError> {
    let mut command = Command::new("apt-get");
    command
        .current_dir(dir)
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .args(packages);
    run(&mut command).map(|_| ())
}

/// The `.deb` in `dir` whose name starts with `package_`.
fn deb_of(dir: &Path, package: &str) -> Result<PathBuf, LinuxGuestError> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .max()
        .ok_or_else(|| {
            LinuxGuestError::Unexpected(format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            ))
        })
}

fn deb_field(deb: &Path, field: &str) -> Result<String, LinuxGuestError> {
    Ok(
        run_text(Command::new("dpkg-deb").arg("-f").arg(deb).arg(field))?
            .trim()
            .to_string(),
    )
}

/// Builds the guest if needed and returns it. Progress goes to stderr.
pub fn prepare() -> Result<LinuxGuest, LinuxGuestError> {
    for tool in [
        "apt-get", "dpkg-deb", "gcc", "cpio", "gzip", "xz", "ldd", "tar",
    ] {
        require(tool)?;
    }
    let dir = cache_dir();
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(io_error(&debs))?;

    // The meta-package names the current kernel ABI.
    for stale in std::fs::read_dir(&debs)
        .map_err(io_error(&debs))?
        .filter_map(Result::ok)
    {
        if stale
            .file_name()
            .to_string_lossy()
            .starts_with("linux-image-amd64_")
        {
            let _ = std::fs::remove_file(stale.path());
        }
    }
    apt_download(&debs, &["linux-image-amd64"])?;
    let meta = deb_of(&debs, "linux-image-amd64")?;
    let image_package = parse_depends(&deb_field(&meta, "Depends")?)
        .into_iter()
        .find(|name| name.starts_with("linux-image-"))
        .ok_or_else(|| {
            LinuxGuestError::Unexpected(
                "linux-image-amd64 depends on no linux-image-* package".into(),
            )
        })?;
    let abi = image_package.trim_start_matches("linux-image-").to_string();
    let meta_version = deb_field(&meta, "Version")?;

    let stamp_path = dir.join("stamp");
    let wanted_stamp = format!("{image_package} {meta_version} {}", source_fingerprint());
    let guest = |memcached_version: String| LinuxGuest {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initrd.gz"),
        kernel_package: format!("{image_package} {meta_version}"),
        memcached_version,
    };
    if let Ok(stamp) = std::fs::read_to_string(&stamp_path) {
        let mut lines = stamp.lines();
        if lines.next() == Some(wanted_stamp.as_str())
            && dir.join("vmlinux").exists()
            && dir.join("initrd.gz").exists()
        {
            return Ok(guest(lines.next().unwrap_or("").to_string()));
        }
    }
    eprintln!(
        "linux-guest: building {image_package} + busybox + memcached into {}",
        dir.display()
    );

    if deb_of(&debs, &image_package).is_err() {
        apt_download(&debs, &[&image_package])?;
    }
    for package in ["busybox-static", "memcached"] {
        if deb_of(&debs, package).is_err() {
            apt_download(&debs, &[package])?;
        }
    }
    let memcached_deb = deb_of(&debs, "memcached")?;
    let memcached_version = deb_field(&memcached_deb, "Version")?;
    let libraries: Vec<String> = parse_depends(&deb_field(&memcached_deb, "Depends")?)
        .into_iter()
        .filter(|name| name.starts_with("lib") && name != "libc6")
        .collect();
    for library in &libraries {
        if deb_of(&debs, library).is_err() {
            apt_download(&debs, &[library])?;
        }
    }

    // Unpack busybox, memcached and its libraries whole; from the kernel only what is used.
    let unpacked = dir.join("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).map_err(io_error(&unpacked))?;
    let mut small: Vec<String> = vec!["busybox-static".into(), "memcached".into()];
    small.extend(libraries.iter().cloned());
    for package in &small {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb_of(&debs, package)?)
            .arg(&unpacked))?;
    }
    let kernel_deb = deb_of(&debs, &image_package)?;
    // `dpkg-deb -c` lists members like `ls -l`, the path (`./lib/...`) last.
    let listing = run_text(Command::new("dpkg-deb").arg("-c").arg(&kernel_deb))?;
    let module_paths: BTreeMap<String, String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .filter(|path| path.ends_with(".ko"))
        .filter_map(|path| {
            let name = path
                .rsplit('/')
                .next()?
                .trim_end_matches(".ko")
                .replace('-', "_");
            Some((name, path.to_string()))
        })
        .collect();
    let vmlinuz = format!("./boot/vmlinuz-{abi}");
    let extract = |members: &[String]| -> Result<(), LinuxGuestError> {
        let quoted: Vec<String> = members.iter().map(|m| format!("'{m}'")).collect();
        run(Command::new("sh").arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' {}",
            kernel_deb.display(),
            unpacked.display(),
            quoted.join(" ")
        )))
        .map(|_| ())
    };
    // Modules: igb and what its .modinfo says it depends on, dependencies first.
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut pending = vec![(NIC_MODULE.to_string(), false)];
    while let Some((name, expanded)) = pending.pop() {
        let key = name.replace('-', "_");
        if expanded {
            if !order.contains(&key) {
                order.push(key);
            }
            continue;
        }
        if !seen.insert(key.clone()) {
            continue;
        }
        let member = module_paths.get(&key).ok_or_else(|| {
            LinuxGuestError::Unexpected(format!(
                "module {name} is not in {image_package} (built in?)"
            ))
        })?;
        extract(std::slice::from_ref(member))?;
        let path = unpacked.join(member.trim_start_matches("./"));
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        pending.push((key.clone(), true));
        for dependency in module_depends(&bytes) {
            pending.push((dependency, false));
        }
    }
    extract(std::slice::from_ref(&vmlinuz))?;

    // vmlinux out of the bzImage.
    let bzimage_path = unpacked.join(vmlinuz.trim_start_matches("./"));
    let bzimage = std::fs::read(&bzimage_path).map_err(io_error(&bzimage_path))?;
    let offset = xz_offset(&bzimage).ok_or_else(|| {
        LinuxGuestError::Unexpected(format!("no xz stream in {}", bzimage_path.display()))
    })?;
    let xz_path = dir.join("vmlinux.xz");
    std::fs::write(&xz_path, &bzimage[offset..]).map_err(io_error(&xz_path))?;
    let vmlinux = run(Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&xz_path))?;
    let _ = std::fs::remove_file(&xz_path);
    if !vmlinux.starts_with(b"\x7fELF") {
        return Err(LinuxGuestError::Unexpected(
            "the decompressed kernel is not an ELF file".into(),
        ));
    }
    let vmlinux_path = dir.join("vmlinux");
    std::fs::write(&vmlinux_path, &vmlinux).map_err(io_error(&vmlinux_path))?;

    // The initramfs tree.
    let root = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&root);
    for sub in [
        "bin",
        "sbin",
        "usr/bin",
        "lib/modules",
        "lib64",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "var/run",
    ] {
        let path = root.join(sub);
        std::fs::create_dir_all(&path).map_err(io_error(&path))?;
    }
    let copy = |from: &Path, to: &Path| -> Result<(), LinuxGuestError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        std::fs::copy(from, to).map(|_| ()).map_err(io_error(from))
    };
    copy(&unpacked.join("bin/busybox"), &root.join("bin/busybox"))?;
    let applets = run_text(Command::new(root.join("bin/busybox")).arg("--list"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let link = root.join("bin").join(applet);
        let _ = std::os::unix::fs::symlink("busybox", &link);
    }
    for module in &order {
        let member = &module_paths[module];
        copy(
            &unpacked.join(member.trim_start_matches("./")),
            &root.join(format!("lib/modules/{module}.ko")),
        )?;
    }
    let echod_source = dir.join("echod.c");
    std::fs::write(&echod_source, ECHOD_SOURCE).map_err(io_error(&echod_source))?;
    run(Command::new("gcc")
        .args(["-static", "-O2", "-pthread", "-o"])
        .arg(root.join("sbin/echod"))
        .arg(&echod_source))?;
    let memcached = unpacked.join("usr/bin/memcached");
    copy(&memcached, &root.join("usr/bin/memcached"))?;
    let library_dirs = format!(
        "{}:{}",
        unpacked.join("usr/lib/x86_64-linux-gnu").display(),
        unpacked.join("lib/x86_64-linux-gnu").display()
    );
    let ldd = run_text(
        Command::new("ldd")
            .arg(&memcached)
            .env("LD_LIBRARY_PATH", &library_dirs),
    )?;
    for line in ldd.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(LinuxGuestError::Unexpected(format!(
                "memcached needs a library nobody provides: {line}"
            )));
        }
        // "libevent-2.1.so.7 => /path/libevent-2.1.so.7 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let (name, resolved) = match line.split_once(" => ") {
            Some((name, rest)) => (name.trim(), rest.split_whitespace().next().unwrap_or("")),
            None => {
                let path = line.split_whitespace().next().unwrap_or("");
                (path, path)
            }
        };
        if !resolved.starts_with('/') {
            continue; // linux-vdso
        }
        let target = if name.starts_with('/') {
            root.join(name.trim_start_matches('/'))
        } else {
            root.join("lib/x86_64-linux-gnu").join(name)
        };
        copy(Path::new(resolved), &target)?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")
        .map_err(io_error(&root))?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").map_err(io_error(&root))?;
    let init = root.join("init");
    std::fs::write(&init, init_script(&order)).map_err(io_error(&init))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io_error(&init))?;
    let initrd = dir.join("initrd.gz");
    run(Command::new("sh").current_dir(&root).arg("-c").arg(format!(
        "find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1 > '{}'",
        initrd.display()
    )))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::write(
        &stamp_path,
        format!("{wanted_stamp}\n{memcached_version}\n"),
    )
    .map_err(io_error(&stamp_path))?;
    eprintln!(
        "linux-guest: {} ({} MB vmlinux), initramfs {} KB with modules {}",
        image_package,
        vmlinux.len() >> 20,
        std::fs::metadata(&initrd)
            .map(|m| m.len() >> 10)
            .unwrap_or(0),
        order.join(", ")
    );
    Ok(guest(memcached_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_fields_and_modinfo_parse() {
        assert_eq!(
            parse_depends("adduser, perl:any, libc6 (>= 2.34), libevent-2.1-7 (>= 2.1.8-stable) | libevent-foo"),
            vec!["adduser", "perl", "libc6", "libevent-2.1-7"]
        );
        assert_eq!(
            parse_depends("linux-image-6.1.0-57-amd64 (= 6.1.192-3)"),
            vec!["linux-image-6.1.0-57-amd64"]
        );
        let modinfo = b"\0license=GPL\0srcversion=ABC\0depends=dca,i2c-algo-bit\0retpoline=Y\0";
        assert_eq!(module_depends(modinfo), vec!["dca", "i2c-algo-bit"]);
        assert!(module_depends(b"\0depends=\0name=dca\0").is_empty());
        assert!(
            module_depends(b"\0xdepends=foo\0").is_empty(),
            "only a whole key matches"
        );
        assert_eq!(xz_offset(b"MZ....\xFD7zXZ\0rest"), Some(6));
        let init = init_script(&["dca".into(), "igb".into()]);
        assert!(init.contains("insmod /lib/modules/dca.ko") && init.contains(READY_LINE));
        assert!(init.find("dca.ko").unwrap() < init.find("igb.ko").unwrap());
    }
}

#[cfg(test)]
mod build_tests {
    /// Builds the guest from Debian packages (network to Debian's mirror, ~75 MB):
    /// `cargo test -p qemu-smp --lib linux_guest -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn the_guest_builds() {
        let guest = super::prepare().unwrap_or_else(|e| panic!("{e}"));
        assert!(guest.kernel.exists() && guest.initrd.exists());
        println!("{guest:?}");
    }
}
