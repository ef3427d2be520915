//! Start-up steps every netd subcommand shares; each failure is logged for the operator
//! and turned into the exit code the subcommand returns.

use std::path::Path;
use std::process::ExitCode;

/// Reads and validates the config at `path`. A file that cannot be read or is invalid
/// exits 2, with every validation error rendered against the file's text.
pub fn load_config(path: &Path) -> Result<appliance::Config, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        tracing::error!("cannot read {}: {e}", path.display());
        ExitCode::from(2)
    })?;
    let name = path.display().to_string();
    appliance::load_str(&text).map_err(|d| {
        tracing::error!("{name} is invalid:\n{}", d.render(&text, &name, false));
        ExitCode::from(2)
    })
}

/// A current-thread tokio runtime; exit code 1 when the OS refuses one.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start the runtime");
            ExitCode::from(1)
        })
}
