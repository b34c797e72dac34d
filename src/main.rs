//! The `shoal` binary: parses the command line and runs the chosen command.

mod playground;

/// glibc's allocator showed up at 10-12% of a busy node's CPU (many small, short-lived
/// buffers per request); mimalloc handles that pattern with far less work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::Parser;
use shoal::cli::{Cli, Command};
use shoal::config::{NodeConfig, ServerSettings};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every TLS configuration names ring itself; this covers any that would not.
    shoal::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal-worker")
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Server(args) => {
            let settings = ServerSettings::load(args.config.as_deref(), &args.flags)?;
            let config = NodeConfig::try_from(settings.clone())?;
            if args.dry_run {
                shoal::server::check(&config)?;
                println!("# shoal server --dry-run: this configuration is valid (no port was bound, the data folder was not touched)");
                print!("{}", settings.resolved(&config).to_toml()?);
                return Ok(());
            }
            shoal::parent_watch::arm().context("arming the parent-death signal")?;
            let metrics = shoal::telemetry::install().context("installing the metrics recorder")?;
            runtime.block_on(shoal::server::run(config, Some(metrics), shutdown_signal()))?;
            Ok(())
        }
        Command::Playground(args) => runtime.block_on(playground::run(args)),
        Command::Chaos(args) => {
            // On a signal the run is dropped, which kills every server it started.
            let report = runtime.block_on(async {
                tokio::select! {
                    report = shoal::chaos::run(&args) => Ok(report?),
                    () = shutdown_signal() => Err(anyhow::anyhow!("interrupted; every node was stopped")),
                }
            })?;
            print!("{report}");
            if !report.passed() {
                anyhow::bail!("a chaos check failed (seed {})", report.seed);
            }
            Ok(())
        }
        Command::Ctl(args) => {
            let text = runtime.block_on(shoal::ctl::run(&args))?;
            print!("{text}");
            Ok(())
        }
        Command::Snapshot(args) => {
            print!("{}", shoal::snapshot_cli::run(&args)?);
            Ok(())
        }
        Command::Cert(args) => {
            let files = shoal::certs::create(&args)?;
            println!(
                "CA          {}  (key {})\nnode        {}  (key {}; server and client use)\nclient      {}  (key {})\n\n\
                 etcdctl --cacert {} --cert {} --key {} --endpoints=https://127.0.0.1:2379 endpoint status",
                files.ca_cert.display(),
                files.ca_key.display(),
                files.node_cert.display(),
                files.node_key.display(),
                files.client_cert.display(),
                files.client_key.display(),
                files.ca_cert.display(),
                files.client_cert.display(),
                files.client_key.display(),
            );
            Ok(())
        }
        Command::Bench(args) => {
            let report = runtime.block_on(shoal::bench::run(&args))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!();
                print!("{report}");
            }
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
