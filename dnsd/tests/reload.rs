#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! A list reload under a steady stream of queries: a real dnsd server on 127.0.0.1 is
//! queried with hickory's client by several clients at once while its list file changes
//! and the refresher recompiles and swaps it, twice. Every query must be answered, and
//! every name both copies list must be blocked by each answer: the swap leaves no window
//! without the list and drops nothing. The test asserts no time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dnsd::fetch::{ListMeta, ListStore, http_client};
use dnsd::policy::Policy;
use dnsd::refresh::Refresher;
use dnsd::server::{Resolver, Server};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// Large enough that a recompile takes a good many query round trips.
const NAMES: usize = 50_000;
const CLIENTS: usize = 4;

fn hosts(range: std::ops::Range<usize>, extra: &str) -> String {
    let mut s = String::from("# reload test list\n");
    for i in range {
        writeln!(s, "0.0.0.0 h{i}.reload.test").unwrap();
    }
    s.push_str(extra);
    s
}

/// Makes the list due now, as its update interval passing would.
fn make_due(lists: &std::path::Path) {
    let path = lists.join("big.json");
    let mut meta: ListMeta =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    meta.checked_at = 0;
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

/// Asks for names every copy of the list holds (h1000 up to h45000) until `stop`, then
/// `after` more; each query gets one try with a generous timeout, so a dropped query shows
/// as a failure.
async fn ask_until(
    server: SocketAddr,
    seed: usize,
    stop: Arc<AtomicBool>,
    after: u64,
    tally: Arc<Tally>,
) {
    let conn = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(10)))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    tokio::spawn(bg);
    let mut i = seed;
    let mut extra = 0;
    while extra < after {
        if stop.load(Ordering::Relaxed) {
            extra += 1;
        }
        i = (i * 7 + 13) % 44_000;
        let name = Name::from_ascii(format!("x.h{}.reload.test.", 1000 + i)).unwrap();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match client
            .query(name.clone(), DNSClass::IN, RecordType::A)
            .await
        {
            Ok(r)
                if r.metadata.response_code == ResponseCode::NoError
                    && r.answers
                        .iter()
                        .any(|a| matches!(&a.data, RData::A(a) if a.0.is_unspecified())) =>
            {
                tally.answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => {
                eprintln!(
                    "{name}: not blocked: {:?} {:?}",
                    r.metadata.response_code, r.answers
                );
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_queries_answers_every_query() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.txt");
    let lists = dir.path().join("lists");
    std::fs::write(&file, hosts(0..NAMES, "")).unwrap();
    let cfg = Arc::new(
        appliance::load_str(&format!(
            "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[dns.lists.big]\nfile = \"{}\"\nformat = \"hosts\"\n",
            file.display()
        ))
        .unwrap(),
    );
    let mut refresher = Refresher::new(ListStore::new(&lists), http_client().unwrap(), &cfg.dns);
    assert!(refresher.run_due().await, "the first compile");
    let first = Arc::clone(&refresher.lists()["big"]);
    assert_eq!(first.block.len(), NAMES);
    let resolver = Arc::new(Resolver::new(
        &cfg,
        Arc::new(Policy::build(&cfg, refresher.lists()).unwrap()),
    ));
    let server = Server::bind(Arc::clone(&resolver), vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = server.addresses()[0];

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(ask_until(
                addr,
                c * 1000,
                Arc::clone(&stop),
                200,
                Arc::clone(&tally),
            ))
        })
        .collect();
    // Queries flow before the first reload starts.
    while tally.sent.load(Ordering::Relaxed) < 200 {
        tokio::task::yield_now().await;
    }

    // Reload 1: a few names gone, one added; built against the copy in use.
    // Reload 2: a third of the names new, more than a quarter, so the new copy is built flat.
    let mut renamed = String::from("0.0.0.0 added.reload.test\n");
    for i in 0..NAMES / 2 {
        writeln!(renamed, "0.0.0.0 n{i}.reload.test").unwrap();
    }
    let steps = [
        (hosts(500..NAMES, "0.0.0.0 added.reload.test\n"), true),
        (hosts(1000..45_000, &renamed), false),
    ];
    for (text, shared) in steps {
        std::fs::write(&file, text).unwrap();
        make_due(&lists);
        let before = tally.sent.load(Ordering::Relaxed);
        // On the serving runtime, as the daemon's refresher task runs it.
        let mut r = refresher;
        let (cfg2, res2) = (Arc::clone(&cfg), Arc::clone(&resolver));
        refresher = tokio::spawn(async move {
            assert!(r.run_due().await, "the changed file is recompiled");
            let p = Policy::build(&cfg2, r.lists())
                .unwrap()
                .with_pauses_of(&res2.policy());
            res2.swap_policy(Arc::new(p));
            r
        })
        .await
        .unwrap();
        let l = &refresher.lists()["big"];
        assert_eq!(l.block.is_layered(), shared, "{l:?}");
        assert!(l.blocks("added.reload.test").is_some());
        assert!(
            l.blocks("h0.reload.test").is_none(),
            "a removed name is gone"
        );
        assert!(
            tally.sent.load(Ordering::Relaxed) > before,
            "queries were asked while the list recompiled"
        );
    }
    assert!(
        first.blocks("added.reload.test").is_none(),
        "the copy that was in use is never changed under its readers"
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (sent, answered, failed) = (
        tally.sent.load(Ordering::Relaxed),
        tally.answered.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!("{sent} queries, {answered} answered and blocked, {failed} not");
    assert_eq!(failed, 0);
    assert_eq!(answered, sent);
    server.shutdown().await.unwrap();
}

/// Whether a thread of this process waits in `open` of a FIFO for the other end.
fn a_thread_waits_on_a_fifo() -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        std::fs::read_to_string(t.unwrap().path().join("wchan"))
            .is_ok_and(|w| w.trim() == "wait_for_partner")
    })
}

/// The store's files are read and written (fsyncs included) off the runtime's workers: a
/// list check whose metadata write hangs, here on a FIFO put where its temp file goes,
/// leaves the one worker free to answer queries. When the write ran on the worker, a
/// slow disk stalled every query behind it. The test asserts no time: the FIFO holds the
/// write until the query has its answer (or the client gave up).
#[tokio::test]
async fn a_hanging_store_write_does_not_hold_up_queries() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.txt");
    let lists = dir.path().join("lists");
    std::fs::write(&file, hosts(0..1000, "")).unwrap();
    let cfg = appliance::load_str(&format!(
        "version = 1\n[dns]\nupstreams = [\"127.0.0.1:9\"]\n[dns.lists.big]\nfile = \"{}\"\nformat = \"hosts\"\n",
        file.display()
    ))
    .unwrap();
    let mut refresher = Refresher::new(ListStore::new(&lists), http_client().unwrap(), &cfg.dns);
    assert!(refresher.run_due().await, "the first compile");
    let resolver = Arc::new(Resolver::new(
        &cfg,
        Arc::new(Policy::build(&cfg, refresher.lists()).unwrap()),
    ));
    let server = Server::bind(Arc::clone(&resolver), vec!["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = server.addresses()[0];

    // Due again with the same text: the check only records its time in big.json, through
    // big.tmp.
    make_due(&lists);
    let fifo = lists.join("big.tmp");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // The client has a runtime of its own, so that a stalled server shows as a query
    // without an answer rather than as a test that hangs.
    let asker = std::thread::spawn(move || {
        while !a_thread_waits_on_a_fifo() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = rt.block_on(async {
            let conn = UdpClientStream::builder(addr, TokioRuntimeProvider::default())
                .with_timeout(Some(Duration::from_secs(10)))
                .build();
            let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
            tokio::spawn(bg);
            let name = Name::from_ascii("x.h5.reload.test.").unwrap();
            client.query(name, DNSClass::IN, RecordType::A).await
        });
        // Lets the write go on: it ends there, since a FIFO cannot be fsynced.
        drop(std::fs::read(&fifo));
        answer.map(|r| r.metadata.response_code)
    });
    let check = tokio::spawn(async move { refresher.run_due().await });
    assert!(
        !check.await.unwrap(),
        "an unchanged list is not a change, even when its check time cannot be recorded"
    );
    let answer = tokio::task::spawn_blocking(move || asker.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        answer.unwrap(),
        ResponseCode::NoError,
        "answered while the store write waited"
    );
    server.shutdown().await.unwrap();
}
