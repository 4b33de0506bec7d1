//! Builds the kernel programs in `gateway-ebpf` for `bpfel-unknown-none` so that a plain
//! `cargo build` produces the daemon with its eBPF object embedded.
//!
//! Fuzz builds (`cargo fuzz` passes `--cfg fuzzing`) skip it: the fuzz targets never load the
//! kernel programs, and building them again for the instrumented target triple costs minutes
//! and bpf-linker. The object is then empty, so loading it fails with a parse error.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_FUZZING");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("portcullis");
        std::fs::write(&out, [])?;
        println!("cargo:warning=fuzz build: the eBPF programs are not built (empty object)");
        return Ok(());
    }
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-ebpf");
    let common = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway-common");
    // Every file by name: a directory in rerun-if-changed did not notice edits to the files in
    // it here (cargo 1.95), so an edited program could stay unbuilt.
    for dir in [root_dir, common] {
        watch(Path::new(dir))?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Prints `rerun-if-changed` for `dir`'s Cargo.toml and every file under its `src/`.
fn watch(dir: &Path) -> anyhow::Result<()> {
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("Cargo.toml").display()
    );
    let mut pending = vec![dir.join("src")];
    while let Some(d) = pending.pop() {
        println!("cargo:rerun-if-changed={}", d.display());
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    Ok(())
}
