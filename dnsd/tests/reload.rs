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
//!
//! Then the daemon itself, under an open-loop load as dnsperf makes it: queries keep
//! coming at a fixed rate whether or not the earlier ones were answered, so a listener that
//! stops reading for a moment (behind a lock the compile or the swap holds, or a
//! background thread that keeps the core) loses queries once the buffers fill, and a
//! closed-loop client would only slow down.

mod common;

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    hosts_named("h", range, extra)
}

/// A hosts list of `<prefix><i>.reload.test` for every `i` in `range`, then `extra`.
fn hosts_named(prefix: &str, range: std::ops::Range<usize>, extra: &str) -> String {
    let mut s = String::from("# reload test list\n");
    for i in range {
        writeln!(s, "0.0.0.0 {prefix}{i}.reload.test").unwrap();
    }
    s.push_str(extra);
    s
}

/// The daemon binary on `server` with the hosts list `file` (stored compiled under
/// `d/lists`) and `upstream`, its control socket at `d/dnsd.sock`; returns once the first
/// compile blocks `h5.reload.test`.
fn start_with_list(
    d: &std::path::Path,
    file: &std::path::Path,
    upstream: &str,
    server: SocketAddr,
) -> (common::Killed, std::path::PathBuf) {
    std::fs::write(
        d.join("appliance.toml"),
        format!(
            "version = 1\n[dns]\nupstreams = [\"{upstream}\"]\n\
             [dns.lists.big]\nfile = \"{}\"\nformat = \"hosts\"\n",
            file.display()
        ),
    )
    .unwrap();
    let sock = d.join("dnsd.sock");
    let mut dnsd = common::Killed::spawn(
        common::dnsd(&d.join("appliance.toml"))
            .arg("--lists-dir")
            .arg(d.join("lists"))
            .arg("--listen")
            .arg(server.to_string())
            .arg("--control")
            .arg(&sock)
            .arg("--query-log")
            .arg(d.join("querylog")),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !blocked_now(server, "h5.reload.test") {
        dnsd.assert_running("dnsd");
        assert!(Instant::now() < deadline, "the list never blocked");
        std::thread::sleep(Duration::from_millis(100));
    }
    (dnsd, sock)
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

    // Reload 1: a few names gone, one added.
    // Reload 2: a third of the names new.
    let mut renamed = String::from("0.0.0.0 added.reload.test\n");
    for i in 0..NAMES / 2 {
        writeln!(renamed, "0.0.0.0 n{i}.reload.test").unwrap();
    }
    let steps = [
        hosts(500..NAMES, "0.0.0.0 added.reload.test\n"),
        hosts(1000..45_000, &renamed),
    ];
    for text in steps {
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

/// The load: queries sent at a fixed rate from a few sockets, each answer matched to its
/// query by ID (unique per socket), whether or not earlier ones were answered.
struct OpenLoop {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Sockets of the load; each sends up to 65,535 queries (its ID space).
const SOCKETS: usize = 4;
/// Queries a second in all: about a tenth of what a debug build answers on one core.
const RATE: u64 = 4000;

/// A plain recursive A query for `h<i>.reload.test` with `id`.
fn a_query(id: u16, i: usize) -> Vec<u8> {
    let mut q = Vec::with_capacity(40);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in [format!("h{i}"), "reload".into(), "test".into()] {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `answer` blocks its name: NOERROR, one answer, and that one the null address
/// (the A record's data ends the packet, since the query had no EDNS).
fn blocks(answer: &[u8]) -> bool {
    answer.len() > 16
        && answer[3] & 0x0f == 0
        && answer[6..8] == [0, 1]
        && answer[answer.len() - 4..] == [0, 0, 0, 0]
}

impl OpenLoop {
    fn start(server: SocketAddr, names: std::ops::Range<usize>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (sent, answered, failed) = Default::default();
        let mut me = Self {
            stop,
            sent: Arc::new(sent),
            answered: Arc::new(answered),
            failed: Arc::new(failed),
            threads: Vec::new(),
        };
        for s in 0..SOCKETS {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            // Room for every answer of a burst, so that a loss is the server's.
            use nix::sys::socket::{setsockopt, sockopt};
            if setsockopt(&sock, sockopt::RcvBufForce, &(4 << 20)).is_err() {
                setsockopt(&sock, sockopt::RcvBuf, &(4 << 20)).unwrap();
            }
            sock.connect(server).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let receiver = sock.try_clone().unwrap();
            let (stop, sent, names) = (Arc::clone(&me.stop), Arc::clone(&me.sent), names.clone());
            me.threads.push(std::thread::spawn(move || {
                // Every 2 ms, as many queries as the rate asks for by then.
                let per_socket = RATE / SOCKETS as u64;
                let started = Instant::now();
                let mut id: u16 = 0;
                let mut i = names.start + s * 7919;
                while !stop.load(Ordering::Relaxed) && id < u16::MAX {
                    let due = started.elapsed().as_millis() as u64 * per_socket / 1000;
                    while u64::from(id) < due && id < u16::MAX {
                        i = names.start + (i * 31 + 17) % names.len();
                        sock.send(&a_query(id, i)).unwrap();
                        sent.fetch_add(1, Ordering::Relaxed);
                        id += 1;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
            let (stop, answered, failed) = (
                Arc::clone(&me.stop),
                Arc::clone(&me.answered),
                Arc::clone(&me.failed),
            );
            me.threads.push(std::thread::spawn(move || {
                let mut seen = vec![false; 1 << 16];
                let mut buf = [0u8; 512];
                // After the stop, until 5 s pass without an answer.
                let mut quiet_since: Option<Instant> = None;
                loop {
                    match receiver.recv(&mut buf) {
                        Ok(n) => {
                            quiet_since = None;
                            let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                            if std::mem::replace(&mut seen[id], true) {
                                eprintln!("socket {s}: a second answer to {id}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            } else if blocks(&buf[..n]) {
                                answered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                eprintln!("socket {s}: not blocked: {:?}", &buf[..n]);
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) if stop.load(Ordering::Relaxed) => {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_secs(5) {
                                return;
                            }
                        }
                        Err(_) => {}
                    }
                }
            }));
        }
        me
    }

    /// Waits until `n` queries have been sent in all.
    fn wait_sent(&self, n: u64) {
        let mut last = (self.sent.load(Ordering::Relaxed), Instant::now());
        while last.0 < n {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.sent.load(Ordering::Relaxed);
            if now > last.0 {
                last = (now, Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(5),
                "the load stopped at {now} queries (each socket's 65,535 IDs used up?)"
            );
        }
    }

    /// Stops sending, waits for the last answers; (sent, answered, failed).
    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `POST /reload` over the daemon's control socket; the status code.
fn post_reload(sock: &Path) -> u16 {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /reload HTTP/1.1\r\nHost: dnsd\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Whether `name` is answered with the null address now.
fn blocked_now(server: SocketAddr, name: &str) -> bool {
    let m = common::ask(server, name, RecordType::A);
    common::answers(&m) == ["0.0.0.0"]
}

/// The daemon binary with a 200,000-name list file, under 4,000 queries a second for
/// names every copy of the list holds: `POST /reload` (the stored list read again on a
/// background thread and swapped in), then the refresher it restarts recompiles the
/// changed file against the copy in use and swaps again. No query may go unanswered and
/// every answer must block. The load runs from before the reload until after the second
/// swap is seen (a name only the new copy has is blocked).
#[test]
fn the_daemon_loses_no_query_under_an_open_loop_load_while_it_reloads() {
    const NAMES: usize = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("big.txt");
    let lists = d.join("lists");
    std::fs::write(&file, hosts(0..NAMES, "")).unwrap();
    let server = common::free_addr();
    // The first compile, at the start with an empty store.
    let (mut dnsd, sock) = start_with_list(d, &file, "127.0.0.1:9", server);

    let load = OpenLoop::start(server, 1000..NAMES);
    load.wait_sent(RATE);
    std::fs::write(&file, hosts(0..NAMES, "0.0.0.0 added.reload.test\n")).unwrap();
    make_due(&lists);
    assert_eq!(post_reload(&sock), 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !blocked_now(server, "added.reload.test") {
        dnsd.assert_running("dnsd");
        assert!(Instant::now() < deadline, "the changed list never blocked");
        std::thread::sleep(Duration::from_millis(100));
    }
    let at_swap = load.sent.load(Ordering::Relaxed);
    load.wait_sent(at_swap + RATE);
    let (sent, answered, failed) = load.finish();
    dnsd.assert_running("dnsd");
    eprintln!(
        "{sent} queries at {RATE}/s ({at_swap} when the second swap was seen): \
         {answered} answered and blocked, {failed} failed"
    );
    assert_eq!(failed, 0, "every answer blocks");
    assert_eq!(answered, sent, "no query lost");
}

/// dnsmasq on `127.0.0.<ip>`, answering every name under reload.test with 192.0.2.10: the
/// upstream for names a list no longer blocks, so they get an answer, not a SERVFAIL.
fn upstream() -> (common::Killed, SocketAddr) {
    let bin = common::require("dnsmasq", "dnsmasq-base");
    let ip = "127.0.0.43";
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 43], common::free_port(ip)));
        let child = common::Killed::spawn(
            std::process::Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--pid-file=",
                    &format!("--listen-address={ip}"),
                    &format!("--port={}", addr.port()),
                    "--address=/reload.test/192.0.2.10",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if common::ask_until(
                addr,
                "up.reload.test",
                RecordType::A,
                Instant::now() + Duration::from_millis(200),
            )
            .is_some_and(|m| common::answers(&m) == ["192.0.2.10"])
            {
                return (child, addr);
            }
        }
    }
    panic!("dnsmasq did not start on {ip}");
}

/// What dnsperf's summary says.
#[derive(Debug, Default)]
struct PerfSummary {
    sent: u64,
    completed: u64,
    lost: u64,
    interrupted: u64,
    /// `Response codes:` as (code, count).
    rcodes: Vec<(String, u64)>,
}

/// Parses dnsperf 2.x's statistics ("Queries sent:  N", "Response codes:  NOERROR N (..%),
/// SERVFAIL N (..%)").
fn perf_summary(out: &str) -> PerfSummary {
    let mut s = PerfSummary::default();
    let first_number = |rest: &str| -> u64 {
        rest.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in `{rest}` of dnsperf's summary:\n{out}"))
    };
    for line in out.lines() {
        let Some((key, rest)) = line.trim().split_once(':') else {
            continue;
        };
        match key {
            "Queries sent" => s.sent = first_number(rest),
            "Queries completed" => s.completed = first_number(rest),
            "Queries lost" => s.lost = first_number(rest),
            "Queries interrupted" => s.interrupted = first_number(rest),
            "Response codes" => {
                for part in rest.split(',') {
                    let mut w = part.split_whitespace();
                    if let (Some(code), Some(n)) = (w.next(), w.next()) {
                        s.rcodes.push((code.to_owned(), n.parse().unwrap()));
                    }
                }
            }
            _ => {}
        }
    }
    assert!(
        s.sent > 0,
        "dnsperf sent nothing or printed no summary:\n{out}"
    );
    s
}

#[test]
fn dnsperf_summaries_are_read() {
    let s = perf_summary(
        "Statistics:\n\n  Queries sent:         5989\n  Queries completed:    5980 (99.85%)\n  \
         Queries lost:         9 (0.15%)\n\n  Response codes:       NOERROR 5970 (99.83%), SERVFAIL 10 (0.17%)\n",
    );
    assert_eq!(
        (s.sent, s.completed, s.lost, s.interrupted),
        (5989, 5980, 9, 0)
    );
    assert_eq!(
        s.rcodes,
        [("NOERROR".to_owned(), 5970), ("SERVFAIL".to_owned(), 10)]
    );
}

/// Whether `name` is answered by the upstream (not blocked) now.
fn forwarded_now(server: SocketAddr, name: &str) -> bool {
    let m = common::ask(server, name, RecordType::A);
    common::answers(&m) == ["192.0.2.10"]
}

/// Debian's dnsperf at a fixed rate (`-Q`) against the daemon binary while its list is
/// reloaded twice through `POST /reload`: first a full replacement (every one of 200,000
/// names new, the old ones forwarded to dnsmasq from then on), then a small change. dnsperf
/// asks names of both copies throughout. It must report no query lost and every answer
/// NOERROR (a blocked name's null address or dnsmasq's answer; no SERVFAIL), and the names
/// only the new copies hold must be blocked after the reloads. dnsperf runs until the second
/// swap has been seen and 2 s more, then is stopped with SIGINT, which makes it print its
/// statistics; its timeout (`-t 10`) is generous, so a loaded machine slows the test rather
/// than failing it.
#[test]
fn dnsperf_loses_no_query_while_the_list_is_replaced_and_changed() {
    const NAMES: usize = 200_000;
    let dnsperf = common::require("dnsperf", "dnsperf");
    let (_upstream, up) = upstream();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("big.txt");
    let lists = d.join("lists");
    let list = |prefix: &str, extra: &str| hosts_named(prefix, 0..NAMES, extra);
    std::fs::write(&file, list("h", "")).unwrap();
    // Names of the first copy and of the replacement, alternating, spread over each list.
    let queries = d.join("queries.txt");
    let mut q = String::new();
    for i in 0..20_000 {
        let n = (i * 7919) % NAMES;
        writeln!(q, "h{n}.reload.test A\nn{n}.reload.test A").unwrap();
    }
    std::fs::write(&queries, q).unwrap();

    let server = SocketAddr::from(([127, 0, 0, 42], common::free_port("127.0.0.42")));
    let (mut dnsd, sock) = start_with_list(d, &file, &up.to_string(), server);
    assert!(forwarded_now(server, "n5.reload.test"));

    let out_path = d.join("dnsperf.out");
    let mut perf = common::Killed::spawn(
        std::process::Command::new(&dnsperf)
            .args([
                "-s",
                &server.ip().to_string(),
                "-p",
                &server.port().to_string(),
            ])
            .arg("-d")
            .arg(&queries)
            // A moderate rate, four sockets, a long run that SIGINT ends, a generous timeout.
            .args([
                "-Q", "2000", "-c", "4", "-l", "600", "-t", "10", "-q", "1000",
            ])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::process::Stdio::null()),
    );
    // Load before the first reload: dnsperf has sent for a while.
    std::thread::sleep(Duration::from_secs(2));
    perf.assert_running("dnsperf");

    // Reload 1: a full replacement.
    std::fs::write(&file, list("n", "")).unwrap();
    make_due(&lists);
    assert_eq!(post_reload(&sock), 200);
    let deadline = Instant::now() + Duration::from_secs(180);
    while !blocked_now(server, "n5.reload.test") {
        dnsd.assert_running("dnsd");
        assert!(Instant::now() < deadline, "the replaced list never blocked");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reload 2: one name more.
    std::fs::write(&file, list("n", "0.0.0.0 added.reload.test\n")).unwrap();
    make_due(&lists);
    assert_eq!(post_reload(&sock), 200);
    while !blocked_now(server, "added.reload.test") {
        dnsd.assert_running("dnsd");
        assert!(Instant::now() < deadline, "the changed list never blocked");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    perf.assert_running("dnsperf");
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &perf.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    // Not `terminate`: its SIGTERM could cut the summary dnsperf prints after SIGINT.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = perf.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "dnsperf did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert!(status.success(), "dnsperf: {status}\n{out}");
    let s = perf_summary(&out);
    eprintln!("dnsperf: {s:?}");
    dnsd.assert_running("dnsd");

    assert_eq!(s.lost, 0, "no query lost:\n{out}");
    assert_eq!(s.completed + s.interrupted, s.sent, "{out}");
    assert!(
        s.rcodes.iter().all(|(code, _)| code == "NOERROR"),
        "every answer NOERROR, none SERVFAIL:\n{out}"
    );
    assert!(
        s.sent > 8000,
        "the load ran through both reloads (4 s at least at 2,000 a second):\n{out}"
    );
    for n in ["n5.reload.test", "n199999.reload.test", "added.reload.test"] {
        assert!(blocked_now(server, n), "{n} is blocked by the new copies");
    }
    assert!(
        forwarded_now(server, "h5.reload.test"),
        "a name only the first copy held is forwarded"
    );
}
