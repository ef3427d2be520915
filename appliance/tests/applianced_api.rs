//! applianced serving the REST API, as real processes: the applianced binary with temporary
//! directories (no daemon runs, so the engine skips them), reqwest over real HTTPS trusting
//! the certificate applianced made. Login with a user from the config, config get, put and
//! apply of a DNS-only change, the history, a viewer's 403 and the audit log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use appliance::accounts::audit;
use appliance::api::tls;
use appliance::store::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{
    ADMIN_PW, Daemon, VIEWER_PW, applctl, client_trusting, free_port, token, token_file,
    users_toml, wait_ready,
};

fn config_with_users() -> String {
    format!("{}\n{}", appliance::DEFAULT_CONFIG, users_toml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applianced_serves_the_api_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr, api_dir, store) = spawn_applianced(dir.path(), "", &[]);
    let fingerprint_file = dir.path().join("run/api-fingerprint");
    let first = store.active().unwrap().unwrap();
    let initial = store.get(first).unwrap().text;

    // The fingerprint the console shows is the certificate's.
    assert_eq!(
        std::fs::read_to_string(&fingerprint_file).unwrap().trim(),
        tls::fingerprint(&api_dir).unwrap()
    );

    let client = client_trusting(&api_dir.join(tls::CERT_FILE));
    let base = format!("https://{addr}/api/v1");
    let admin = token(&client, &base, "alice", ADMIN_PW).await;
    let viewer = token(&client, &base, "victor", VIEWER_PW).await;

    let r = client
        .get(format!("{base}/config"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["generation"], json!(first));
    assert_eq!(got["text"], json!(initial));

    // A DNS-only change applies without a confirm window.
    let changed = initial.replace("cache_size = 10000", "cache_size = 20000");
    assert_ne!(changed, initial);
    let r = client
        .put(format!("{base}/config"))
        .bearer_auth(&admin)
        .json(&json!({"text": changed, "comment": "bigger cache"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let second = first + 1;

    // A viewer may read but not apply.
    let r = client
        .post(format!("{base}/config/apply"))
        .bearer_auth(&viewer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = client
        .post(format!("{base}/config/apply"))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let report: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["generation"], json!(second), "{report}");
    assert_eq!(report["confirm_deadline"], Value::Null, "{report}");
    assert!(
        report["plan"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "dns.cache_size"),
        "{report}"
    );

    let r = client
        .get(format!("{base}/config/history"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let history: Value = r.json().await.unwrap();
    let newest = &history.as_array().unwrap()[0];
    assert_eq!(newest["generation"], json!(second), "{history}");
    assert_eq!(newest["active"], json!(true), "{history}");
    assert_eq!(store.active().unwrap(), Some(second));

    // No daemon runs: the status says so for each, and storage is unavailable (503).
    let r = client
        .get(format!("{base}/status"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    let status: Value = r.json().await.unwrap();
    let states: Vec<_> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("applianced", "running"),
            ("netd", "unreachable"),
            ("dnsd", "unreachable"),
            ("stored", "unreachable"),
        ]
    );
    let r = client
        .get(format!("{base}/storage/status"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    let log = audit::read(&api_dir).unwrap();
    let actions: Vec<_> = log
        .iter()
        .map(|e| (e.action.as_str(), e.user.as_str(), e.generation))
        .collect();
    assert_eq!(
        actions,
        [
            ("config.put", "alice", Some(second)),
            ("config.apply", "alice", Some(second)),
        ]
    );
}

/// applianced with the users of [`config_with_users`] plus `extra` as generation 1, its API
/// on a free port of 127.0.0.1 and `args` added; returns the process, the address, the
/// API's directory and the store.
fn spawn_applianced(
    dir: &Path,
    extra: &str,
    args: &[&std::ffi::OsStr],
) -> (Daemon, SocketAddr, std::path::PathBuf, Store) {
    std::fs::create_dir(dir.join("run")).unwrap();
    let store = Store::open(dir.join("config")).unwrap();
    let text = format!("{}{extra}", config_with_users());
    let first = store.commit(&text, "test: users").unwrap();
    store.activate(first).unwrap();
    let addr = free_port();
    let fingerprint_file = dir.join("run/api-fingerprint");
    let mut child = common::applianced(dir, &addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(&mut child, &fingerprint_file, addr);
    (Daemon(child), addr, dir.join("api"), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applctl_drives_applianced_over_https_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, addr, api_dir, store) = spawn_applianced(dir.path(), "", &[]);
    let client = client_trusting(&api_dir.join(tls::CERT_FILE));
    let base = format!("https://{addr}/api/v1");
    let session = token(&client, &base, "alice", ADMIN_PW).await;
    let admin = token_file(&client, &base, &session, "admin", dir.path()).await;
    let viewer = token_file(&client, &base, &session, "viewer", dir.path()).await;
    // As typed by someone who copied it without colons from the console.
    let fingerprint = tls::fingerprint(&api_dir).unwrap().replace(':', "");
    let remote = format!("https://{addr}");

    let with = |token: &Path, fp: &str, cmd: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = cmd.to_vec();
        args.extend([
            "--remote".as_ref(),
            remote.as_ref(),
            "--token-file".as_ref(),
            token.as_os_str(),
            "--fingerprint".as_ref(),
            fp.as_ref(),
        ]);
        applctl(&args)
    };
    let (code, out, err) = with(&viewer, &fingerprint, &["status".as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Active generation: 1"), "{out}");
    assert!(out.contains("netd"), "{out}");

    // A DNS-only change: stored and applied without a window.
    // From the stored text: another config_with_users() would hash the passwords anew,
    // an API change that waits for a confirm.
    let (current, _) = store.current().unwrap();
    let changed = current
        .unwrap()
        .text
        .replace("cache_size = 10000", "cache_size = 20000");
    let file = dir.path().join("appliance.toml");
    std::fs::write(&file, &changed).unwrap();
    let (code, out, err) = with(&admin, &fingerprint, &["plan".as_ref(), file.as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dns.cache_size"), "{out}");

    // A viewer token may not apply: 403, exit 2, nothing stored.
    let (code, _, err) = with(&viewer, &fingerprint, &["apply".as_ref(), file.as_ref()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin role"), "{err}");
    assert_eq!(store.history().unwrap().0.len(), 1);

    let (code, out, err) = with(&admin, &fingerprint, &["apply".as_ref(), file.as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("generation 2 (active; was 1)"), "{out}");
    assert!(out.contains("dns.cache_size"), "{out}");
    assert!(!out.contains("applctl confirm"), "{out}");
    assert_eq!(store.active().unwrap(), Some(2));

    let (code, out, err) = with(&viewer, &fingerprint, &["history".as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().next().unwrap().starts_with("*      2"), "{out}");

    // Nothing waits for a confirm: 409, exit 2.
    let (code, out, err) = with(&admin, &fingerprint, &["confirm".as_ref()]);
    assert_eq!(code, 2, "{out}{err}");

    let (code, out, err) = with(&admin, &fingerprint, &["rollback".as_ref(), "1".as_ref()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Generation 1 is active"), "{out}");
    assert_eq!(store.active().unwrap(), Some(1));

    // Another certificate's fingerprint: refused before the token is sent.
    let wrong = "00".repeat(32);
    let (code, _, err) = with(&admin, &wrong, &["status".as_ref()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not the pinned"), "{err}");
    let audit_users: Vec<_> = audit::read(&api_dir)
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.user))
        .collect();
    assert!(
        audit_users.contains(&("config.apply".to_owned(), "alice".to_owned())),
        "{audit_users:?}"
    );

    // Without a fingerprint applctl does not guess.
    let (code, _, err) = applctl(&[
        "status".as_ref(),
        "--remote".as_ref(),
        remote.as_ref(),
        "--token-file".as_ref(),
        admin.as_os_str(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--fingerprint"), "{err}");
}

/// One `name{labels} value` sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the text format strictly enough to catch a malformed line: every line is a
/// comment (`# HELP`/`# TYPE`) or a sample whose value is a float.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(
                c.starts_with("HELP ") || c.starts_with("TYPE "),
                "comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect(line);
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect(line);
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n, labels)
            }
            None => (series, Vec::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name in {line}"
        );
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

fn find<'a>(samples: &'a [Sample], name: &str, label: Option<(&str, &str)>) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && label.is_none_or(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_adds_wireguard_peers_forwards_to_daemons_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("wg");
    std::fs::create_dir(&keys).unwrap();
    let server_key = wireguard_control::Key([7; 32]);
    std::fs::write(keys.join("wg0.key"), server_key.to_base64()).unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir(&esp).unwrap();
    let tunnel = "\n[wireguard.wg0]\nlisten_port = 51820\naddresses = [\"10.8.0.1/24\"]\n";
    let (_daemon, addr, api_dir, store) = spawn_applianced(
        dir.path(),
        tunnel,
        &[
            "--wireguard-key-dir".as_ref(),
            keys.as_os_str(),
            "--esp".as_ref(),
            esp.as_os_str(),
            "--metrics-filesystem".as_ref(),
            dir.path().as_os_str(),
        ],
    );
    let client = client_trusting(&api_dir.join(tls::CERT_FILE));
    let base = format!("https://{addr}/api/v1");
    let admin = token(&client, &base, "alice", ADMIN_PW).await;
    let viewer = token(&client, &base, "victor", VIEWER_PW).await;
    let post = |path: &str, token: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let get = |path: &str, token: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
    };

    // A peer: its keys made here, the entry added as generation 2 and applied, with a
    // confirm window since WireGuard changes could cut someone off.
    let peer = json!({"name": "phone", "endpoint": "vpn.example.net"});
    let r = post("/wireguard/wg0/peers", &viewer, peer.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post("/wireguard/wg0/peers", &admin, peer.clone())
        .await
        .unwrap();
    let status = r.status();
    let added: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["generation"], json!(2), "{added}");
    assert!(added["confirm_deadline"].is_u64(), "{added}");
    let config = added["client_config"].as_str().unwrap();
    assert!(config.contains("Address = 10.8.0.2/32"), "{config}");
    assert!(
        config.contains("Endpoint = vpn.example.net:51820"),
        "{config}"
    );
    assert!(
        config.contains(&format!(
            "PublicKey = {}",
            server_key.get_public().to_base64()
        )),
        "{config}"
    );
    let stored = store.get(2).unwrap().text;
    let public_key = added["public_key"].as_str().unwrap();
    assert!(
        stored.contains(&format!(
            "[wireguard.wg0.peers.phone]\npublic_key = \"{public_key}\"\nallowed_ips = [\"10.8.0.2/32\"]"
        )),
        "{stored}"
    );
    assert_eq!(store.active().unwrap(), Some(2));
    let r = post("/config/confirm", &admin, json!({})).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The name is taken now; an unknown tunnel is 404.
    let r = post("/wireguard/wg0/peers", &admin, peer.clone())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = post("/wireguard/wg9/peers", &admin, peer).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Daemons that do not run: 503 naming each.
    for (path, daemon) in [
        ("/dns/stats", "dnsd"),
        ("/dns/log?limit=5", "dnsd"),
        ("/storage/status", "stored"),
    ] {
        let r = get(path, &viewer).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{daemon} does not answer")),
            "{message}"
        );
    }

    // The updater answers for itself now: this host is no appliance, so the boot state
    // cannot be read (500 with the reason), and a non-http source is refused.
    let r = get("/update/status", &viewer).await.unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let r = post(
        "/update/install",
        &admin,
        json!({"url": "file:///tmp/x.bundle"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // /metrics: for any logged-in role, at /api/v1/metrics and /metrics.
    let r = client
        .get(format!("https://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(format!("https://{addr}/metrics"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let samples = parse_prometheus(&text);
    for d in ["netd", "dnsd", "stored"] {
        let up = find(&samples, "appliance_daemon_up", Some(("daemon", d))).expect(d);
        assert_eq!(up.value, 0.0, "{d} is down");
    }
    assert_eq!(
        find(&samples, "applianced_active_generation", None)
            .unwrap()
            .value,
        2.0
    );
    assert!(find(&samples, "node_cpu_seconds_total", Some(("mode", "idle"))).is_some());
    assert!(
        find(&samples, "node_memory_MemTotal_bytes", None)
            .unwrap()
            .value
            > 0.0
    );
    assert!(find(&samples, "node_load1", None).is_some());
    assert!(
        find(
            &samples,
            "node_network_receive_bytes_total",
            Some(("device", "lo"))
        )
        .is_some()
    );
    let mount = dir.path().to_str().unwrap();
    let size = find(
        &samples,
        "node_filesystem_size_bytes",
        Some(("mountpoint", mount)),
    )
    .expect("the filesystem asked for");
    assert!(size.value > 0.0);
    let r = get("/metrics", &admin).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    parse_prometheus(&r.text().await.unwrap());
    // The same document on the root-only Unix socket.
    let local = appliance::control::ControlClient::new(dir.path().join("run/applianced.sock"))
        .get_json("/metrics")
        .await
        .unwrap();
    let samples = parse_prometheus(local.as_str().unwrap());
    assert!(find(&samples, "appliance_daemon_up", Some(("daemon", "stored"))).is_some());
    assert!(find(&samples, "node_memory_MemTotal_bytes", None).is_some());
}
