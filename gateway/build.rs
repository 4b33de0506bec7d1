//! Builds the kernel programs in `gateway-ebpf` for `bpfel-unknown-none` so that a plain
//! `cargo build` produces the daemon with its eBPF object embedded.
//!
//! Fuzz builds (`cargo fuzz` passes `--cfg fuzzing`) skip it: the fuzz targets never load the
//! kernel programs, and building them again for the instrumented target triple costs minutes
//! and bpf-linker. The object is then empty, so loading it fails with a parse error.

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("portcullis");
        std::fs::write(&out, [])?;
        println!("cargo:warning=fuzz build: the eBPF programs are not built (empty object)");
        return Ok(());
    }
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
