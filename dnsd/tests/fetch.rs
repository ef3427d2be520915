//! List downloads against a real HTTP/1.1 server on loopback, with conditional requests,
//! failures that keep the previous copy, and the compiled store surviving a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::{Arc, Mutex};

use appliance::model::BlockList;
use dnsd::fetch::{FetchError, ListStore, Outcome, http_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the list server answers, and what it saw.
#[derive(Default)]
struct Served {
    status: u16,
    body: String,
    etag: String,
    requests: u32,
    conditional: u32,
}

/// A minimal HTTP/1.1 list server: one request per connection, ETag validation.
async fn serve(state: Arc<Mutex<Served>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_lowercase();
                let reply = {
                    let mut s = state.lock().unwrap();
                    s.requests += 1;
                    let inm = head
                        .lines()
                        .find_map(|l| l.strip_prefix("if-none-match: "))
                        .map(|v| v.trim().to_owned());
                    if inm.is_some() {
                        s.conditional += 1;
                    }
                    if s.status == 200 && inm.as_deref() == Some(s.etag.to_lowercase().as_str()) {
                        "HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n".to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 {} X\r\netag: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                            s.status,
                            s.etag,
                            s.body.len(),
                            s.body
                        )
                    }
                };
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}/hosts.txt")
}

fn list(url: &str) -> BlockList {
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns.lists.ads]\nurl = \"{url}\"\nformat = \"hosts\"\n"
    ))
    .unwrap();
    cfg.dns.lists.values().next().unwrap().clone()
}

#[tokio::test]
async fn conditional_downloads_and_failures_keep_the_previous_copy() {
    let state = Arc::new(Mutex::new(Served {
        status: 200,
        body: "# ads\n0.0.0.0 ads.example\n0.0.0.0 track.example\n".into(),
        etag: "\"v1\"".into(),
        ..Served::default()
    }));
    let url = serve(Arc::clone(&state)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ListStore::new(dir.path());
    let client = http_client().unwrap();
    let l = list(&url);

    // First download: compiled and stored.
    let Outcome::Updated(c) = store.refresh(&client, "ads", &l).await.unwrap() else {
        panic!("first refresh must update");
    };
    assert!(c.blocks("x.ads.example").is_some());
    assert_eq!(c.stats.entries, 2);
    assert!(dir.path().join("ads.bin").exists());
    assert_eq!(store.meta("ads").unwrap().etag.as_deref(), Some("\"v1\""));

    // Unchanged: the server sees If-None-Match and answers 304.
    assert!(matches!(
        store.refresh(&client, "ads", &l).await.unwrap(),
        Outcome::Unchanged
    ));
    assert_eq!(state.lock().unwrap().conditional, 1);

    // A server error keeps the stored copy.
    state.lock().unwrap().status = 500;
    let e = store.refresh(&client, "ads", &l).await.unwrap_err();
    assert!(matches!(e, FetchError::Status { status: 500, .. }), "{e}");
    let kept = store.load("ads", &url).unwrap();
    assert!(kept.blocks("ads.example").is_some());

    // An empty list (only comments and junk) keeps the stored copy too.
    {
        let mut s = state.lock().unwrap();
        s.status = 200;
        s.body = "# nothing here\n127.0.0.1 localhost\nnot a line\n".into();
        s.etag = "\"v2\"".into();
    }
    let e = store.refresh(&client, "ads", &l).await.unwrap_err();
    assert!(matches!(e, FetchError::Empty { skipped: 1, .. }), "{e}");
    assert!(
        store
            .load("ads", &url)
            .unwrap()
            .blocks("ads.example")
            .is_some()
    );

    // A real change replaces it.
    {
        let mut s = state.lock().unwrap();
        s.body = "0.0.0.0 new.example\n".into();
        s.etag = "\"v3\"".into();
    }
    let Outcome::Updated(c) = store.refresh(&client, "ads", &l).await.unwrap() else {
        panic!("changed list must update");
    };
    assert!(c.blocks("new.example").is_some());
    assert!(c.blocks("ads.example").is_none());

    // After a restart the stored copy blocks before any download.
    let again = ListStore::new(dir.path());
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns.lists.ads]\nurl = \"{url}\"\nformat = \"hosts\"\n[dns.lists.missing]\nurl = \"{url}x\"\n"
    ))
    .unwrap();
    let loaded = again.load_all(cfg.dns.lists.iter().map(|(k, v)| (k.as_str(), v)));
    assert_eq!(loaded.len(), 1);
    assert!(loaded["ads"].blocks("new.example").is_some());

    // A list whose source changed is not taken from the store.
    assert!(again.load("ads", "http://elsewhere.example/list").is_none());
}

#[tokio::test]
async fn unreachable_server_is_an_error_not_a_panic() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = ListStore::new(dir.path());
    let e = store
        .refresh(
            &http_client().unwrap(),
            "ads",
            &list(&format!("http://127.0.0.1:{port}/x")),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Network { .. }), "{e}");
}

#[tokio::test]
async fn file_lists_are_compiled_and_unchanged_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.txt");
    std::fs::write(&file, "||blocked.example^\n@@||ok.blocked.example^\n").unwrap();
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns.lists.local]\nfile = \"{}\"\nformat = \"adblock\"\n",
        file.display()
    ))
    .unwrap();
    let l = &cfg.dns.lists.values().next().unwrap().clone();
    let store = ListStore::new(dir.path().join("store"));
    let client = http_client().unwrap();
    let Outcome::Updated(c) = store.refresh(&client, "local", l).await.unwrap() else {
        panic!("first refresh must update");
    };
    assert!(c.blocks("a.blocked.example").is_some());
    assert!(c.excepts("ok.blocked.example").is_some());
    assert!(matches!(
        store.refresh(&client, "local", l).await.unwrap(),
        Outcome::Unchanged
    ));
}

#[tokio::test]
async fn refresher_fetches_what_is_due_and_starts_from_the_store() {
    let state = Arc::new(Mutex::new(Served {
        status: 200,
        body: "0.0.0.0 ads.example\n".into(),
        etag: "\"a\"".into(),
        ..Served::default()
    }));
    let url = serve(Arc::clone(&state)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns.lists.ads]\nurl = \"{url}\"\nupdate_interval = \"1h\"\n[dns.lists.off]\nurl = \"{url}\"\nenabled = false\n"
    ))
    .unwrap();
    let client = http_client().unwrap();

    let mut r = dnsd::refresh::Refresher::new(ListStore::new(dir.path()), client.clone(), &cfg.dns);
    assert!(r.lists().is_empty());
    assert!(r.run_due().await, "never fetched: due at once");
    assert!(r.lists()["ads"].blocks("ads.example").is_some());
    assert_eq!(
        state.lock().unwrap().requests,
        1,
        "the disabled list is not fetched"
    );
    assert!(!r.run_due().await, "checked a moment ago: not due");
    assert_eq!(state.lock().unwrap().requests, 1);
    assert!(r.until_next() > std::time::Duration::from_secs(3000));

    // A restarted refresher blocks from the store without a request.
    let r2 = dnsd::refresh::Refresher::new(ListStore::new(dir.path()), client, &cfg.dns);
    assert!(r2.lists()["ads"].blocks("ads.example").is_some());
    assert_eq!(state.lock().unwrap().requests, 1);
}

/// A stored copy that no longer loads (one byte flipped) is downloaded again in full, in
/// one request: a conditional one would get a 304 and leave the list missing for good.
#[tokio::test]
async fn a_damaged_stored_copy_is_downloaded_again_unconditionally() {
    let state = Arc::new(Mutex::new(Served {
        status: 200,
        body: "0.0.0.0 ads.example\n".into(),
        etag: "\"v1\"".into(),
        ..Served::default()
    }));
    let url = serve(Arc::clone(&state)).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ListStore::new(dir.path());
    let client = http_client().unwrap();
    let l = list(&url);
    assert!(matches!(
        store.refresh(&client, "ads", &l).await.unwrap(),
        Outcome::Updated(_)
    ));

    let bin = dir.path().join("ads.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&bin, bytes).unwrap();
    assert!(
        store.load("ads", &url).is_none(),
        "the damage went unnoticed"
    );

    let before = state.lock().unwrap().requests;
    let Outcome::Updated(c) = store.refresh(&client, "ads", &l).await.unwrap() else {
        panic!("a damaged copy must be downloaded again");
    };
    assert!(c.blocks("x.ads.example").is_some());
    let s = state.lock().unwrap();
    assert_eq!((s.requests - before, s.conditional), (1, 0));
    drop(s);
    assert!(store.load("ads", &url).is_some());
}
