//! Builds the kernel programs in `gateway-ebpf` for `bpfel-unknown-none` so that a plain
//! `cargo build` produces the daemon with its eBPF object embedded.

use std::path::Path;

fn main() -> anyhow::Result<()> {
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
