//! `portcullis httpbin`: runs the built-in backend in the foreground.

use std::net::SocketAddr;

use anyhow::Context as _;

/// Arguments of `portcullis httpbin`.
#[derive(Debug, Clone, clap::Args)]
#[command(about = "Serve an httpbin-compatible backend (HTTP/1.1 and h2c) until Ctrl-C")]
pub struct HttpbinArgs {
    /// Address to listen on; use 0.0.0.0:PORT to accept from other hosts.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
}

/// Binds `args.listen` and serves until Ctrl-C.
pub async fn run(args: HttpbinArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the httpbin listener on {}", args.listen))?;
    let local = listener
        .local_addr()
        .context("reading the httpbin listener's address")?;
    tracing::info!(%local, "httpbin listening");
    super::serve(listener, async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            // Without a signal handler we cannot be stopped politely; keep serving.
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
    .await
    .with_context(|| format!("serving httpbin on {local}"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: HttpbinArgs,
    }

    #[test]
    fn listen_defaults_to_loopback_8000() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["httpbin"]).expect("parse");
        assert_eq!(cli.args.listen, SocketAddr::from(([127, 0, 0, 1], 8000)));
        let cli = Cli::try_parse_from(["httpbin", "--listen", "0.0.0.0:9000"]).expect("parse");
        assert_eq!(cli.args.listen.port(), 9000);
        assert!(Cli::try_parse_from(["httpbin", "--listen", "nowhere"]).is_err());
    }
}
