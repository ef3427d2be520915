//! `netd ra`: router advertisements on the LAN links of a config until SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, clap::Args)]
pub struct RaArgs {
    /// The appliance.toml whose LAN links with a static global IPv6 address get
    /// advertisements.
    #[arg(long)]
    config: PathBuf,
}

pub fn run(args: RaArgs) -> ExitCode {
    let cfg = match crate::cli::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let links = super::advertised_links(&cfg);
    if links.is_empty() {
        tracing::info!("no LAN link has a static global IPv6 address: nothing to advertise");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = match crate::cli::current_thread_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        let flag = Arc::clone(&stop);
        let mut worker = tokio::task::spawn_blocking(move || super::run(&cfg, flag));
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut worker => return r,
            _ = terminated => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Each link's thread sees the flag within its read timeout and says goodbye.
        stop.store(true, Ordering::SeqCst);
        worker.await
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!("{e}");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = %e, "the advertiser ended abnormally");
            ExitCode::from(1)
        }
    }
}
