//! Helpers shared by the integration tests of this crate.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The `.toml` files of `tests/<dir>`, sorted, so that failures list in a stable order.
pub fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Kills a daemon the test started when the test ends, passed or not.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port of 127.0.0.1 that was free a moment ago, for a daemon told to listen on it.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The applianced command with the layout every test here gives it under `dir`: the store in
/// `config/`, its state in `state/`, the API's keys in `api/`, and every daemon's socket and
/// the API's fingerprint in `run/` (which the caller makes). The caller adds the rest and
/// spawns it.
pub fn applianced(dir: &Path, api_listen: &str) -> Command {
    let run = dir.join("run");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_applianced"));
    cmd.arg("--socket")
        .arg(run.join("applianced.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--data-dir")
        .arg(dir.join("config"))
        .arg("--netd-socket")
        .arg(run.join("netd.sock"))
        .arg("--dnsd-socket")
        .arg(run.join("dnsd.sock"))
        .arg("--stored-socket")
        .arg(run.join("stored.sock"))
        .arg("--api-dir")
        .arg(dir.join("api"))
        .arg("--api-listen")
        .arg(api_listen)
        .arg("--fingerprint-file")
        .arg(run.join("api-fingerprint"));
    cmd
}
