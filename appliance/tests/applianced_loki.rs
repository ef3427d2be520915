//! applianced pushing its logs to Loki (`[logging] loki_url`), against a receiver in the
//! test that speaks Loki's push API (`POST /loki/api/v1/push`, JSON) and checks the
//! documented shape: `{"streams": [{"stream": {labels}, "values": [["<ns>", "<line>"]]}]}`.
//! Debian ships no Loki, so the receiver stands in for it. Its first answer is a 500: the
//! lines of that push must arrive with a later one, and the failure must show in
//! applianced's /metrics. With `json = true` the journal (stderr) gets JSON lines too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance::control::ControlClient;
use appliance::store::Store;
use axum::http::StatusCode;
use serde_json::Value;

use common::{Children, free_port, read_logs, wait_for};

#[derive(Default)]
struct Received {
    /// Every request's body and the status it was answered with.
    pushes: Vec<(Value, StatusCode)>,
}

async fn receiver(received: Arc<Mutex<Received>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/loki/api/v1/push",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = Arc::clone(&received);
                async move {
                    assert_eq!(headers["content-type"], "application/json");
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let mut r = received.lock().unwrap();
                    // Loki is briefly away at first.
                    let status = if r.pushes.is_empty() {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    };
                    r.pushes.push((v, status));
                    status
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Checks one push body against Loki's JSON push format; returns its lines.
fn lines_of(body: &Value) -> Vec<String> {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut lines = Vec::new();
    let streams = body["streams"].as_array().expect("streams is an array");
    assert!(!streams.is_empty(), "{body}");
    for s in streams {
        let labels = s["stream"]
            .as_object()
            .expect("stream is an object of labels");
        assert_eq!(labels["job"], "appliance", "{s}");
        assert_eq!(labels["host"], "appliance", "{s}");
        assert_eq!(labels["unit"], "applianced", "{s}");
        assert_eq!(labels["site"], "test", "{s}");
        assert!(
            ["error", "warn", "info"].contains(&labels["level"].as_str().unwrap()),
            "{s}"
        );
        assert!(labels.values().all(Value::is_string), "{s}");
        for v in s["values"].as_array().expect("values is an array") {
            let pair = v.as_array().unwrap();
            assert_eq!(pair.len(), 2, "{v}");
            let ns: u128 = pair[0]
                .as_str()
                .expect("the timestamp is a string")
                .parse()
                .expect("of nanoseconds");
            // Same clock, same machine: within the hour is plausibility, not timing.
            assert!(now_ns.abs_diff(ns) < 3_600_000_000_000, "{v}");
            lines.push(pair[1].as_str().expect("the line is a string").to_owned());
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applianced_pushes_its_logs_to_loki_and_retries() {
    let received = Arc::new(Mutex::new(Received::default()));
    let loki = receiver(Arc::clone(&received)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::create_dir(p("run")).unwrap();
    let store = Store::open(p("config")).unwrap();
    let text = format!(
        "{}\n[logging]\njson = true\nloki_url = \"http://{loki}\"\nloki_labels = {{ site = \"test\" }}\n",
        appliance::DEFAULT_CONFIG
    );
    let first = store.commit(&text, "test: loki").unwrap();
    store.activate(first).unwrap();
    let mut children = Children(Vec::new());
    children.0.push(
        common::applianced(dir.path(), &free_port().to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(p("applianced.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&mut children, &p("run/applianced.sock"), dir.path());

    // "API listening" is logged at start; it must reach Loki even though the first push
    // was answered 500.
    let mut delivered = Vec::new();
    for _ in 0..300 {
        delivered = received
            .lock()
            .unwrap()
            .pushes
            .iter()
            .filter(|(_, s)| s.is_success())
            .flat_map(|(b, _)| lines_of(b))
            .collect();
        if delivered.iter().any(|l| l.contains("API listening")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pushes: Vec<(Value, StatusCode)> = received.lock().unwrap().pushes.clone();
    assert!(
        delivered.iter().any(|l| l.contains("API listening")),
        "pushes: {pushes:#?}\n{}",
        read_logs(dir.path())
    );
    let refused = lines_of(&pushes[0].0);
    assert_eq!(pushes[0].1, StatusCode::INTERNAL_SERVER_ERROR);
    for line in &refused {
        assert!(
            delivered.contains(line),
            "{line:?} of the failed push was not sent again"
        );
    }
    // json = true: each line is a JSON object with the event's message and level.
    let parsed: Vec<Value> = delivered
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        parsed.iter().any(|v| v["message"] == "API listening"
            && v["level"] == "info"
            && v["target"] == "appliance::api"
            && v["addr"].is_string()),
        "{parsed:#?}"
    );

    // The journal's copy is JSON as well.
    let log = std::fs::read_to_string(p("applianced.log")).unwrap();
    let journal: Value = serde_json::from_str(
        log.lines()
            .find(|l| l.contains("API listening"))
            .expect("logged to stderr too"),
    )
    .unwrap();
    assert_eq!(journal["message"], "API listening");

    // The counters in /metrics.
    let metrics = ControlClient::new(p("run/applianced.sock"))
        .get_json("/metrics")
        .await
        .unwrap();
    let metrics = metrics.as_str().unwrap();
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{unit=\"applianced\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("appliance_loki_push_failures_total") >= 1.0);
    assert!(value("appliance_loki_pushed_lines_total") > 0.0);
    assert_eq!(value("appliance_loki_dropped_lines_total"), 0.0);
}
