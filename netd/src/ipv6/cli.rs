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
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("cannot read {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let name = args.config.display().to_string();
    let cfg = match appliance::load_str(&text) {
        Ok(c) => c,
        Err(d) => {
            tracing::error!("{name} is invalid:\n{}", d.render(&text, &name, false));
            return ExitCode::from(2);
        }
    };
    let links = super::advertised_links(&cfg);
    if links.is_empty() {
        tracing::info!("no LAN link has a static global IPv6 address: nothing to advertise");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
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
