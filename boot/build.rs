//! Links the kernel with its own script, as a static non-PIE image (the 32-bit entry code needs
//! absolute relocations).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
    println!("cargo:rustc-link-arg-bins=--compress-debug-sections=zlib");
    println!("cargo:rerun-if-changed=linker.ld");
}
