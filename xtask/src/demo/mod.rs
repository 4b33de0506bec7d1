//! `cargo xtask demo ingress|mesh`: the product's stories, run for real and explained as they go.

mod mesh;
mod netns;
mod sh;
mod vagrant;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

pub use mesh::run as mesh;
pub use vagrant::run as vagrant;

#[derive(Args)]
pub struct DemoArgs {
    #[command(subcommand)]
    which: Option<Which>,
}

#[derive(Subcommand)]
enum Which {
    /// The ingress walkthrough on one node with the admin listener: `run`, plus the address
    /// of its mesh graph page (locks on the mutual-TLS edges). Ctrl-C stops it.
    Ingress {
        #[arg(long)]
        release: bool,
        /// Added to the Gateway ports 80/443 (default: 0 as root, 8000 otherwise).
        #[arg(long)]
        port_offset: Option<u16>,
        /// The admin listener (metrics, health, /graph). Keep it on loopback.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
    /// The mesh story start to finish in three network namespaces it makes (client, server,
    /// outside): auto mTLS proven on the wire, STRICT resetting plaintext, authorization,
    /// secure naming and the graph's lock; exits 0 when every step held. Needs root.
    Mesh(MeshArgs),
}

#[derive(Args)]
pub struct MeshArgs {
    #[arg(long)]
    pub release: bool,
    /// Where the mesh graph screenshot goes (default: <target>/demo-mesh-graph.png).
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> Result<()> {
    match args.which {
        None => {
            eprintln!(
                "xtask: `cargo xtask demo` is `cargo xtask demo ingress` (the ingress walkthrough, \
                 starting now); the two-node mesh story is `cargo xtask demo mesh`.\n"
            );
            crate::run(false, None, Some(([127, 0, 0, 1], 15000).into()))
        }
        Some(Which::Ingress {
            release,
            port_offset,
            admin,
        }) => crate::run(release, port_offset, Some(admin)),
        Some(Which::Mesh(args)) => {
            let bin = crate::build(args.release)?;
            mesh::run(&bin, args.screenshot)
        }
    }
}
