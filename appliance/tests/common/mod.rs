//! Helpers shared by the integration tests of this crate.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use appliance::accounts::password;
use appliance::store::Store;
use reqwest::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

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

/// A temporary directory in the layout of [`applianced`], `run/` made and the store opened
/// in `config/`, for tests that start the daemons themselves.
pub fn daemon_dir() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let store = Store::open(dir.path().join("config")).unwrap();
    (dir, store)
}

/// The arguments of `netd serve` in the layout of [`applianced`]: its socket in `run/`, the
/// store in `config/`, and its own files beside them under `dir`, never in the system's
/// places. The caller runs `netd` with them in a network namespace of the test's own.
pub fn netd_serve_args(dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["serve".into()];
    for (flag, path) in [
        ("--socket", "run/netd.sock"),
        ("--data-dir", "config"),
        ("--firewall-state", "firewall.json"),
        ("--dhcp-dir", "dhcp"),
        ("--wan-dns-file", "wan-dns.json"),
        ("--wireguard-dir", "wireguard"),
    ] {
        args.push(flag.into());
        args.push(dir.join(path).into());
    }
    args
}

/// The binaries of netd and dnsd beside applianced's, brought up to date in one cargo run
/// (they are other packages of the workspace, which `cargo test -p appliance` does not
/// build).
pub fn sibling_bins() -> (PathBuf, PathBuf) {
    let beside = |name: &str| Path::new(env!("CARGO_BIN_EXE_applianced")).with_file_name(name);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build", "--quiet", "-p", "netd", "--bin", "netd", "-p", "dnsd", "--bin", "dnsd",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "building netd and dnsd: {out:?}");
    (beside("netd"), beside("dnsd"))
}

/// Daemons the test started, killed when the test ends.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Children {
    /// Starts [`applianced`] with its stderr in `applianced.log` under `dir` and waits for
    /// its socket; fails, with the logs, when a daemon exits first.
    pub fn start_applianced(&mut self, dir: &Path, api_listen: &str) {
        let log = std::fs::File::create(dir.join("applianced.log")).unwrap();
        self.0.push(
            applianced(dir, api_listen)
                .stdin(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_for(self, &dir.join("run/applianced.sock"), dir);
    }
}

/// The `*.log` files the test's daemons write their stderr to, for failure messages.
pub fn read_logs(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["netd.log", "dnsd.log", "applianced.log"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        out.push_str(&format!("--- {name}\n{text}\n"));
    }
    out
}

/// Waits for `path` (a daemon's socket) to appear; fails when a child exits first.
pub fn wait_for(children: &mut Children, path: &Path, logs: &Path) {
    for _ in 0..600 {
        if path.exists() {
            return;
        }
        for c in &mut children.0 {
            if let Some(status) = c.try_wait().unwrap() {
                panic!(
                    "a daemon exited ({status}) before {} appeared; logs in {}:\n{}",
                    path.display(),
                    logs.display(),
                    read_logs(logs)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} did not appear:\n{}", path.display(), read_logs(logs));
}

pub const ADMIN_PW: &str = "alice-Very-secret-1";
pub const VIEWER_PW: &str = "victor-Very-secret-2";

pub fn hash(pw: &str) -> String {
    // A cheap cost keeps the debug-built test fast; the cost is read from the hash.
    password::hash_with(pw, argon2::Params::new(8, 1, 1, None).unwrap()).unwrap()
}

/// `[api.users]` with alice (admin, [`ADMIN_PW`]) and victor (viewer, [`VIEWER_PW`]).
pub fn users_toml() -> String {
    format!(
        "[api.users.alice]\nrole = \"admin\"\npassword_hash = \"{}\"\n\n\
         [api.users.victor]\nrole = \"viewer\"\npassword_hash = \"{}\"\n",
        hash(ADMIN_PW),
        hash(VIEWER_PW)
    )
}

/// A client that trusts only the certificate applianced made.
pub fn client_trusting(cert: &Path) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .build()
        .unwrap()
}

/// A session token of `user`.
pub async fn token(client: &reqwest::Client, base: &str, user: &str, pw: &str) -> String {
    let r = client
        .post(format!("{base}/auth/login"))
        .json(&json!({"user": user, "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "login of {user}");
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Waits until applianced has written its fingerprint and accepts connections; fails with
/// its exit status when it died.
pub fn wait_ready(child: &mut Child, fingerprint: &Path, addr: SocketAddr) {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("applianced exited before serving the API: {status}");
        }
        if fingerprint.exists() && TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("applianced did not serve the API on {addr}");
}

/// An API token made by alice with `role`, written to a file under `dir`.
pub async fn token_file(
    client: &reqwest::Client,
    base: &str,
    session: &str,
    role: &str,
    dir: &Path,
) -> std::path::PathBuf {
    let r = client
        .post(format!("{base}/auth/tokens"))
        .bearer_auth(session)
        .json(&json!({"name": format!("applctl-{role}"), "role": role, "expires_in": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = dir.join(format!("{role}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// Runs the applctl binary; returns its exit code, stdout and stderr. The environment
/// variables that would pick a transport are cleared so only the arguments count.
pub fn applctl(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_applctl"))
        .args(args)
        .env_remove("APPLCTL_REMOTE")
        .env_remove("APPLCTL_TOKEN")
        .env_remove("APPLCTL_TOKEN_FILE")
        .env_remove("APPLCTL_FINGERPRINT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
