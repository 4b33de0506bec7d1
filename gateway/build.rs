//! Builds the kernel programs in `gateway-ebpf` for `bpfel-unknown-none` so that a plain
//! `cargo build` produces the daemon with its eBPF object embedded.

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    println!("cargo:rerun-if-changed={root_dir}/src");
    println!("cargo:rerun-if-changed=../gateway-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
