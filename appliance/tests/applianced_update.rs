//! An update installed over the API with the real installer: applianced's updater pointed
//! at a fake device in a temporary directory (`--esp`, `--slot-dir`, `--update-*`), as the
//! installer's own tests build it: a GRUB boot state on the "ESP", two 8 MiB slot files,
//! the release running from slot A. A bundle signed by a key the config trusts
//! (`update.trusted_keys`) is served over HTTP by the test, which holds the download
//! halfway until `GET /update/status` has shown the install's progress. Then: the slot
//! holds the payload, B boots next on trial. A bundle signed by another key, and bytes
//! that are no bundle, are refused with 400; a viewer gets 403.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use appliance::api::tls;
use image::bootstate::{BootEnv, BootState};
use image::bundle::{self, CHUNK_SIZE, SecretKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{ADMIN_PW, Daemon, VIEWER_PW, client_trusting, free_port, token, users_toml};

const SLOT_SIZE: u64 = 8 << 20;

/// Serves `files` (path → bytes) over HTTP/1.1, one request per connection; the file at
/// `gated` stops after `split` bytes until `go` receives.
fn serve(
    files: Vec<(&'static str, Vec<u8>)>,
    gated: &'static str,
    split: usize,
    go: mpsc::Receiver<()>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).into_owned();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
            let Some((_, body)) = files.iter().find(|(p, _)| *p == path) else {
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            };
            assert!(!req.contains("Range:"), "no resume expected: {req}");
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).unwrap();
            if path == gated {
                conn.write_all(&body[..split]).unwrap();
                conn.flush().unwrap();
                go.recv_timeout(Duration::from_secs(300)).unwrap();
                conn.write_all(&body[split..]).unwrap();
            } else {
                let _ = conn.write_all(body);
            }
        }
    });
    addr
}

fn bundle_of(payload: &Path, version: &str, key: &SecretKey, out: &Path) -> Vec<u8> {
    let now = bundle::cli::now();
    bundle::create(
        payload,
        &bundle::Release {
            compatible: bundle::cli::COMPATIBLE.into(),
            version: version.parse().unwrap(),
            security_version: 4,
            min_version: None,
            created: now - 10,
            expires: now + 86_400,
            allow_downgrade: false,
        },
        &[key],
        out,
    )
    .unwrap();
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_bundle_installs_over_the_api_with_progress_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);

    // The device, as image's installer tests make it.
    let esp = p("esp");
    std::fs::create_dir_all(esp.join("EFI/appliance")).unwrap();
    BootEnv::new(&esp).init(&BootState::initial()).unwrap();
    std::fs::create_dir(p("slots")).unwrap();
    for s in ["rootA", "rootB"] {
        std::fs::File::create(p("slots").join(s))
            .unwrap()
            .set_len(SLOT_SIZE)
            .unwrap();
    }
    std::fs::write(
        p("release"),
        format!(
            "VERSION=1.2.0\nSECURITY_VERSION=3\nCOMPATIBLE={}\n",
            bundle::cli::COMPATIBLE
        ),
    )
    .unwrap();
    std::fs::write(p("cmdline"), "root=PARTLABEL=rootA ro appliance.slot=A\n").unwrap();
    // The built-in keyring holds a key nobody signs with; the signer is trusted through
    // the config's update.trusted_keys.
    let (builtin, _) = SecretKey::generate().unwrap();
    std::fs::write(p("update-keys"), format!("{}\n", builtin.public())).unwrap();
    let (signer, _) = SecretKey::generate().unwrap();
    let (stranger, _) = SecretKey::generate().unwrap();

    let len = (CHUNK_SIZE * 5 + CHUNK_SIZE / 2) as usize;
    let payload: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    std::fs::write(p("rootfs.squashfs"), &payload).unwrap();
    let good = bundle_of(&p("rootfs.squashfs"), "1.3.0", &signer, &p("good.bundle"));
    let untrusted = bundle_of(
        &p("rootfs.squashfs"),
        "1.3.0",
        &stranger,
        &p("untrusted.bundle"),
    );
    // Past the header and two chunks: the install has written something by then.
    let split = good.len() - payload.len() + 2 * CHUNK_SIZE as usize;
    let (go, gate) = mpsc::channel();
    let http = serve(
        vec![
            ("/good.bundle", good),
            ("/untrusted.bundle", untrusted),
            ("/junk.bundle", vec![0x42; 4096]),
        ],
        "/good.bundle",
        split,
        gate,
    );

    // applianced with users and the signer's key in its config.
    std::fs::create_dir(p("run")).unwrap();
    let store = appliance::store::Store::open(p("config")).unwrap();
    let text = format!(
        "{}\n{}\n",
        appliance::DEFAULT_CONFIG.replace(
            "[api]",
            &format!(
                "[update]\ntrusted_keys = [\"{}\"]\n\n[api]",
                signer.public()
            )
        ),
        users_toml()
    );
    let first = store.commit(&text, "test: update keys").unwrap();
    store.activate(first).unwrap();
    let api = free_port();
    let child = common::applianced(dir.path(), &api.to_string())
        .arg("--esp")
        .arg(&esp)
        .arg("--slot-dir")
        .arg(p("slots"))
        .arg("--update-state-dir")
        .arg(p("update"))
        .arg("--update-release")
        .arg(p("release"))
        .arg("--update-keyring")
        .arg(p("update-keys"))
        .arg("--update-cmdline")
        .arg(p("cmdline"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Daemon(child);
    common::wait_ready(&mut child.0, &p("run/api-fingerprint"), api);
    let client = client_trusting(&p("api").join(tls::CERT_FILE));
    let base = format!("https://{api}/api/v1");
    let admin = token(&client, &base, "alice", ADMIN_PW).await;
    let viewer = token(&client, &base, "victor", VIEWER_PW).await;
    let install = |token: &str, file: &str| {
        client
            .post(format!("{base}/update/install"))
            .bearer_auth(token)
            .json(&json!({"url": format!("http://{http}/{file}")}))
            .send()
    };
    let status = || async {
        let r = client
            .get(format!("{base}/update/status"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };

    let s = status().await;
    assert_eq!(s["running"], "A", "{s:#}");
    assert_eq!(s["version"], "1.2.0", "{s:#}");
    assert!(s["installing"].is_null(), "{s:#}");

    // A viewer may not install; bad bundles are the caller's fault (400), and change
    // nothing.
    let r = install(&viewer, "good.bundle").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for (file, why) in [("untrusted.bundle", "trusted"), ("junk.bundle", "bundle")] {
        let r = install(&admin, file).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{file}");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{file}: {message}");
    }
    assert!(
        std::fs::read(p("slots/rootB"))
            .unwrap()
            .iter()
            .all(|&b| b == 0),
        "a refused bundle wrote to the slot"
    );

    // The good one, held halfway: the status shows how far it is.
    let running = tokio::spawn(install(&admin, "good.bundle"));
    let mut seen = Value::Null;
    for _ in 0..600 {
        seen = status().await["installing"].clone();
        if seen["chunks_done"].as_u64().is_some_and(|n| n >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen["chunks_done"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["chunks"], 6, "{seen}");
    assert_eq!(
        seen["source"],
        format!("http://{http}/good.bundle"),
        "{seen}"
    );
    // A second install while one runs is refused.
    let r = install(&admin, "good.bundle").await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    go.send(()).unwrap();
    let r = running.await.unwrap().unwrap();
    let code = r.status();
    let report: Value = r.json().await.unwrap();
    assert_eq!(code, StatusCode::OK, "{report}");
    assert_eq!(report["version"], "1.3.0");
    assert_eq!(report["slot"], "B");

    let s = status().await;
    assert!(s["installing"].is_null(), "{s:#}");
    assert_eq!(s["next_boot"], json!({"slot": "B", "trial": true}), "{s:#}");
    let slot = std::fs::read(p("slots/rootB")).unwrap();
    assert_eq!(&slot[..payload.len()], &payload[..]);

    // applctl update on the box trusts the config's keys the same way: the signer's
    // 1.4.0 installs from a file, the stranger's is refused (exit 2).
    bundle_of(&p("rootfs.squashfs"), "1.4.0", &signer, &p("newer.bundle"));
    let applctl = |bundle: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_applctl"))
            .arg("--data-dir")
            .arg(p("config"))
            .args(["update", "install", p(bundle).to_str().unwrap()])
            .arg("--esp")
            .arg(&esp)
            .arg("--slot-dir")
            .arg(p("slots"))
            .arg("--state-dir")
            .arg(p("update"))
            .arg("--release")
            .arg(p("release"))
            .arg("--keyring")
            .arg(p("update-keys"))
            .arg("--cmdline")
            .arg(p("cmdline"))
            .output()
            .unwrap()
    };
    let out = applctl("untrusted.bundle");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = applctl("newer.bundle");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("installed 1.4.0 into slot B"),
        "{out:?}"
    );
}
