use super::*;
use crate::shares::FakeShareOs;
use crate::snapshots::Period;
use crate::time::UtcTime;
use crate::zfs::FakeZfs;

const CONFIG: &str = r#"version = 1
[storage.pools.tank]
vdevs = [{ layout = "mirror", disks = ["/dev/disk/by-id/d1", "/dev/disk/by-id/d2"] }]
scrub_interval = "30d"

[storage.datasets."tank/data"]
compression = "zstd"

[snapshots.main]
datasets = ["tank/data"]
frequently = 4
frequent_interval = "15m"
hourly = 24
daily = 7
weekly = 4
monthly = 12
yearly = 1
"#;

fn at(s: &str) -> UtcTime {
    UtcTime::parse_rfc3339(s).unwrap()
}

type Daemon = StoredDaemon<FakeZfs, FakeShareOs>;

struct SharedClock(Arc<FakeClock>);

impl Clock for SharedClock {
    fn now(&self) -> UtcTime {
        self.0.now()
    }
}

/// A daemon whose store holds `text` as active generation 1, over a fake pool `tank`
/// whose layout is the declared one, exported (so the first apply imports it, as at boot).
fn daemon(dir: &std::path::Path, text: &str, clock: Arc<FakeClock>) -> Arc<Daemon> {
    daemon_with(dir, text, clock, Box::new(NoReplicator))
}

fn daemon_with(
    dir: &std::path::Path,
    text: &str,
    clock: Arc<FakeClock>,
    replicator: Box<dyn Replicator>,
) -> Arc<Daemon> {
    let store = Store::open(dir).unwrap();
    let n = store.commit(text, "test").unwrap();
    store.activate(n).unwrap();
    let cfg = appliance::load_str(text).unwrap();
    let mut zfs = FakeZfs::new();
    for (name, pool) in &cfg.storage.pools {
        zfs = zfs.with_pool(name.as_str(), pools::declared_layout(pool), false);
    }
    StoredDaemon::new(
        store,
        zfs,
        FakeShareOs::default(),
        Box::new(SharedClock(clock)),
        replicator,
    )
}

fn names(d: &Daemon) -> Vec<String> {
    let mut n = d.inner().zfs.snapshot_names();
    n.sort();
    n
}

#[test]
fn start_imports_the_pools_and_applies_the_active_generation() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let d = daemon(dir.path(), CONFIG, clock);
    d.apply_active();
    let status = d.status();
    assert_eq!(status["generation"], 1, "{status:#}");
    assert!(status["last_error"].is_null(), "{status:#}");
    assert!(d.inner().zfs.pools["tank"].imported);
    assert!(
        status["datasets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "tank/data"),
        "{status:#}"
    );
    // A second plan of the same generation has nothing to do.
    assert_eq!(d.plan(1).unwrap().actions, [] as [String; 0]);
}

/// A year of 15-minute scheduler passes with a fake clock, with the daemon "down" for three
/// and a half days in March: exactly the expected snapshots remain at the end, the first
/// pass after the outage takes one snapshot per due period (no backlog), the RPO is
/// reported missed during the outage and met again right after, and a pool scrub was
/// started every 30 days.
#[test]
fn a_simulated_year_with_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let start = at("2026-01-01T00:00:00Z");
    let clock = Arc::new(FakeClock::new(start));
    let d = daemon(dir.path(), CONFIG, Arc::clone(&clock));
    d.apply_active();
    let down = at("2026-03-10T05:07:00Z");
    let up = at("2026-03-13T18:00:00Z");
    let end = at("2027-01-01T00:00:00Z");
    let mut t = start;
    let mut first_after_outage = None;
    while t < end {
        if t >= down && t < up {
            t = UtcTime(t.0 + 900);
            continue;
        }
        clock.set(t);
        d.inner().zfs.now = t.0;
        if t == up {
            let s = d.status();
            assert_eq!(s["policies"][0]["rpo_met"], false, "{s:#}");
        }
        let r = d.tick();
        assert!(r.errors.is_empty(), "{t}: {:?}", r.errors);
        if t == up {
            first_after_outage = Some(r.taken.clone());
            let s = d.status();
            assert_eq!(s["policies"][0]["rpo_met"], true, "{s:#}");
        }
        t = UtcTime(t.0 + 900);
    }
    assert_eq!(
        first_after_outage.unwrap(),
        [
            "tank/data@stored_frequently_2026-03-13T18:00:00Z",
            "tank/data@stored_hourly_2026-03-13T18:00:00Z",
            "tank/data@stored_daily_2026-03-13T18:00:00Z",
        ]
    );
    let mut expected: Vec<String> = Vec::new();
    let mut add = |p: Period, times: Vec<String>| {
        expected.extend(times.iter().map(|s| format!("tank/data@stored_{p}_{s}")));
    };
    add(
        Period::Frequently,
        ["23:00", "23:15", "23:30", "23:45"]
            .iter()
            .map(|m| format!("2026-12-31T{m}:00Z"))
            .collect(),
    );
    add(
        Period::Hourly,
        (0..24)
            .map(|h| format!("2026-12-31T{h:02}:00:00Z"))
            .collect(),
    );
    add(
        Period::Daily,
        (25..=31)
            .map(|d| format!("2026-12-{d}T00:00:00Z"))
            .collect(),
    );
    add(
        Period::Weekly,
        [7, 14, 21, 28]
            .iter()
            .map(|d| format!("2026-12-{d:02}T00:00:00Z"))
            .collect(),
    );
    add(
        Period::Monthly,
        (1..=12)
            .map(|m| format!("2026-{m:02}-01T00:00:00Z"))
            .collect(),
    );
    add(Period::Yearly, vec!["2026-01-01T00:00:00Z".into()]);
    expected.sort();
    assert_eq!(names(&d), expected);
    // Day 0, 30, ..., 360: the outage covers no scrub date.
    assert_eq!(d.inner().zfs.pools["tank"].scrubs, 13);
    let m = d.metrics();
    for line in [
        "stored_scrubs_started_total 13",
        "stored_policy_rpo_met{policy=\"main\",dataset=\"tank/data\"} 1",
        "stored_snapshots{policy=\"main\",dataset=\"tank/data\",period=\"hourly\"} 24",
        "stored_pool_healthy{pool=\"tank\",health=\"ONLINE\"} 1",
        "stored_applied_generation 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing from\n{m}");
    }
}

#[test]
fn overlapping_policies_are_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let d = daemon(dir.path(), CONFIG, clock);
    // The config's validation refuses the generation first (appliance's check)...
    let text = format!("{CONFIG}\n[snapshots.again]\ndatasets = [\"tank/data\"]\ndaily = 1\n");
    let n = d.store.commit(&text, "test").unwrap();
    let e = d.apply(n).unwrap_err();
    assert!(
        format!("{e:?}").contains("prune the other's snapshots"),
        "{e:?}"
    );
    assert!(!d.inner().zfs.pools["tank"].imported, "nothing changed");
    assert!(d.status()["generation"].is_null());
    // ...and the daemon's own check, kept as a defense, still finds the pair.
    let mut cfg = appliance::load_str(CONFIG).unwrap();
    let (_, policy) = cfg
        .snapshots
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    cfg.snapshots.insert("again".parse().unwrap(), policy);
    match Daemon::check_policies(&d.inner().zfs, &cfg) {
        Err(ApiError::Invalid(msg)) => assert!(msg.contains("both cover tank/data"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn prune_dry_run_shows_the_plan_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let text = CONFIG.replace("frequently = 4\n", "frequently = 1\n");
    let d = daemon(dir.path(), &text, Arc::clone(&clock));
    d.apply_active();
    d.tick();
    let t = at("2026-01-01T00:15:00Z");
    clock.set(t);
    d.inner().zfs.now = t.0;
    let before = names(&d);
    let writes = d.inner().zfs.writes;
    let dry = d.prune(true, None).unwrap();
    assert_eq!(d.inner().zfs.writes, writes);
    assert_eq!(names(&d), before);
    let p = &dry["policies"][0];
    assert_eq!(
        p["take"],
        json!(["tank/data@stored_frequently_2026-01-01T00:15:00Z"])
    );
    assert_eq!(
        p["destroy"],
        json!(["tank/data@stored_frequently_2026-01-01T00:00:00Z"])
    );
    assert!(matches!(
        d.prune(true, Some("nope")),
        Err(ApiError::Invalid(_))
    ));
    let real = d.prune(false, None).unwrap();
    assert_eq!(real["policies"][0]["destroyed"], p["destroy"]);
}

#[test]
fn snapshots_are_listed_with_their_period() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let d = daemon(dir.path(), CONFIG, clock);
    d.apply_active();
    d.tick();
    let v = d.snapshots(Some("tank/data")).unwrap();
    assert_eq!(v["count"], 6, "{v:#}");
    assert!(
        v["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ours"] == true)
    );
    assert_eq!(d.snapshots(None).unwrap()["count"], 6);
    assert!(matches!(
        d.snapshots(Some("tank/none")),
        Err(ApiError::Invalid(_))
    ));
}

#[test]
fn query_values_are_decoded() {
    assert_eq!(
        query_param(Some("a=1&dataset=tank%2Fdata"), "dataset").unwrap(),
        Some("tank/data".to_owned())
    );
    assert_eq!(query_param(None, "dataset").unwrap(), None);
    assert!(query_param(Some("dataset=%zz"), "dataset").is_err());
}

#[tokio::test]
async fn the_socket_answers_the_control_contract() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let d = daemon(&dir.path().join("store"), CONFIG, clock);
    let sock = dir.path().join("stored.sock");
    let router = {
        let d = Arc::clone(&d);
        move |req| Arc::clone(&d).route(req)
    };
    let server = appliance::control::server::serve(&sock, SOCKET_MODE, router)
        .await
        .unwrap();
    let client = appliance::control::ControlClient::new(&sock);
    let status = client.get_json("/v1/status").await.unwrap();
    assert_eq!(status["daemon"], "stored");
    let plan = client
        .post_json("/v1/plan", &json!({ "generation": 1 }))
        .await
        .unwrap();
    assert!(
        plan["actions"][0]
            .as_str()
            .unwrap()
            .contains("import pool tank"),
        "{plan:#}"
    );
    client
        .post_json("/v1/apply", &json!({ "generation": 1 }))
        .await
        .unwrap();
    let missing = client
        .post_json("/v1/apply", &json!({ "generation": 9 }))
        .await;
    assert!(missing.is_err(), "{missing:?}");
    assert!(d.metrics().contains("stored_applied_generation 1"));
    server.abort();
}

/// Answers every run with the same report and counts the runs.
struct CountingReplicator(Arc<std::sync::atomic::AtomicUsize>);

impl Replicator for CountingReplicator {
    fn run(
        &mut self,
        name: &str,
        _: &ReplicationJob,
    ) -> Result<crate::replication::JobReport, String> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        if n == 1 {
            return Err("connection refused".into());
        }
        Ok(replicate::report(name, 1 << 20, 2, Some(30)))
    }
}

#[test]
fn replication_jobs_run_on_their_interval_and_report_lag() {
    let dir = tempfile::tempdir().unwrap();
    let start = at("2026-01-01T00:00:00Z");
    let clock = Arc::new(FakeClock::new(start));
    let text = format!(
        "{CONFIG}\n[replication.offsite]\ntarget = \"192.0.2.1:7001\"\ntarget_dataset = \"backup/box\"\ndatasets = [\"tank/data\"]\ninterval = \"1h\"\n"
    );
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = daemon_with(
        dir.path(),
        &text,
        Arc::clone(&clock),
        Box::new(CountingReplicator(Arc::clone(&runs))),
    );
    d.apply_active();
    // Due at once after a start, then once an hour, whatever the minute ticks.
    for minute in 0..=120 {
        clock.set(UtcTime(start.0 + minute * 60));
        d.replicate_due();
    }
    // 00:00 ok, 01:00 failed, 02:00 ok.
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    clock.set(UtcTime(start.0 + 7200 + 600));
    let s = d.status();
    let job = &s["replication"][0];
    assert_eq!(job["job"], "offsite", "{s:#}");
    assert_eq!(job["runs_total"], 3);
    assert_eq!(job["failures_total"], 1);
    assert!(job["last_error"].is_null(), "{job:#}");
    // The last success at 02:00 found the target 30 s behind: 630 s at 02:10.
    assert_eq!(job["lag_seconds"], 630);
    assert_eq!(job["throughput_bytes_per_second"], 524_288.0);
    let m = d.metrics();
    for line in [
        "stored_replication_lag_seconds{job=\"offsite\"} 630",
        "stored_replication_failures_total{job=\"offsite\"} 1",
        "stored_replication_last_bytes{job=\"offsite\"} 1048576",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing from\n{m}");
    }
    assert!(matches!(d.replicate("nope"), Err(ApiError::Invalid(_))));
    let r = d.replicate("offsite").unwrap();
    assert_eq!(r["bytes"], 1 << 20);
}

#[test]
fn a_paused_job_is_not_run_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let text = format!(
        "{CONFIG}\n[replication.offsite]\ntarget = \"192.0.2.1:7001\"\ntarget_dataset = \"backup/box\"\ndatasets = [\"tank/data\"]\nenabled = false\n"
    );
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = daemon_with(
        dir.path(),
        &text,
        clock,
        Box::new(CountingReplicator(Arc::clone(&runs))),
    );
    d.apply_active();
    let e = d.replicate("offsite").unwrap_err();
    assert!(
        matches!(&e, ApiError::Conflict(m) if m.contains("paused (enabled = false)")),
        "{e:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Sends nothing but moves the job's hold on a fake source to its newest snapshot, as a
/// run does, and reports the base the hold marks.
struct HoldingReplicator(FakeZfs);

impl Replicator for HoldingReplicator {
    fn run(
        &mut self,
        name: &str,
        job: &ReplicationJob,
    ) -> Result<crate::replication::JobReport, String> {
        let newest = self.0.snapshots("tank/data", false).unwrap().pop().unwrap();
        crate::replication::move_hold(&mut self.0, "tank/data", name, &newest.name).unwrap();
        let mut r = replicate::report(name, 4096, 1, Some(45));
        r.bases = replicate::bases(&self.0, name, job);
        Ok(r)
    }
}

#[test]
fn lag_and_the_last_success_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = at("2026-01-01T00:00:00Z");
    let clock = Arc::new(FakeClock::new(start));
    let text = format!(
        "{CONFIG}\n[replication.offsite]\ntarget = \"192.0.2.1:7001\"\ntarget_dataset = \"backup/box\"\ndatasets = [\"tank/data\"]\ninterval = \"1h\"\n"
    );
    let mut source = FakeZfs::new()
        .with_pool(
            "tank",
            crate::zfs::PoolLayout {
                vdevs: vec![crate::zfs::VdevSpec {
                    layout: crate::zfs::VdevLayout::Single,
                    disks: vec!["/dev/disk/by-id/a".into()],
                }],
                ..Default::default()
            },
            true,
        )
        .with_dataset("tank/data");
    for s in ["a", "b"] {
        source.snapshot(&[format!("tank/data@{s}")], &[]).unwrap();
    }
    let guid = source.snapshots("tank/data", false).unwrap()[1].guid;
    let state_file = dir.path().join("state/replication.json");
    {
        let d = daemon_with(
            &dir.path().join("store"),
            &text,
            Arc::clone(&clock),
            Box::new(HoldingReplicator(source)),
        );
        d.keep_job_state(&state_file);
        d.apply_active();
        d.replicate("offsite").unwrap();
        assert!(state_file.exists());
    }
    // stored restarts an hour later, before the job is due to run again.
    clock.set(UtcTime(start.0 + 3600));
    let store = dir.path().join("store");
    let d = daemon_with(&store, &text, Arc::clone(&clock), Box::new(NoReplicator));
    d.keep_job_state(&state_file);
    d.apply_active();
    let s = d.status();
    let job = &s["replication"][0];
    assert_eq!(job["last_success"], "2026-01-01T00:00:00Z", "{s:#}");
    assert_eq!(job["lag_seconds"], 3645, "{job:#}");
    assert_eq!(job["bytes"], 4096);
    assert_eq!(
        job["runs_total"], 0,
        "counters start again with the process"
    );
    assert_eq!(job["replicated"][0]["dataset"], "tank/data");
    assert_eq!(job["replicated"][0]["snapshot"], "b");
    assert_eq!(job["replicated"][0]["guid"], guid.to_string());
    let m = d.metrics();
    for line in [
        "stored_replication_lag_seconds{job=\"offsite\"} 3645",
        "stored_replication_last_success_timestamp_seconds{job=\"offsite\"} 1767225600",
        "stored_replication_last_bytes{job=\"offsite\"} 4096",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} missing from\n{m}");
    }
    // The restart still runs the job once at once, as after an outage.
    assert_eq!(
        replicate::due(
            &appliance::load_str(&text).unwrap().replication,
            &d.jobs().clone(),
            clock.now()
        )
        .len(),
        1
    );
}

#[test]
fn a_damaged_state_file_is_reported_and_replaced_at_the_next_success() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let text = format!(
        "{CONFIG}\n[replication.offsite]\ntarget = \"192.0.2.1:7001\"\ntarget_dataset = \"backup/box\"\ndatasets = [\"tank/data\"]\n"
    );
    let state_file = dir.path().join("replication.json");
    std::fs::write(&state_file, "{\"version\": 1, \"jobs\": {\"offsite\": 7}}").unwrap();
    assert!(matches!(
        replicate::load(&state_file),
        Err(replicate::JobFileError::Parse { .. })
    ));
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = daemon_with(
        &dir.path().join("store"),
        &text,
        clock,
        Box::new(CountingReplicator(runs)),
    );
    d.keep_job_state(&state_file);
    d.apply_active();
    assert!(d.status()["replication"][0]["last_success"].is_null());
    d.replicate("offsite").unwrap();
    let saved = replicate::load(&state_file).unwrap();
    assert_eq!(saved["offsite"].bytes, 1 << 20);
    assert!(!dir.path().join("replication.tmp").exists());
}

/// The fake whose readers' snapshot listings say when they start and answer only when
/// told to, like a `zfs list` of 10,000 snapshots in the TCG guest. The daemon's own
/// handle (used under its lock) is not slow.
struct SlowLists {
    zfs: FakeZfs,
    gate: Arc<Gate>,
    slow: bool,
}

struct Gate {
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    /// Once set, listings no longer wait.
    open: std::sync::atomic::AtomicBool,
}

impl SlowLists {
    fn wait(&self) {
        if !self.slow || self.gate.open.load(Ordering::SeqCst) {
            return;
        }
        let _ = self.gate.entered.lock().unwrap().send(());
        let _ = self.gate.release.lock().unwrap().recv();
    }
}

impl crate::metrics::ReadHandle for SlowLists {
    type Reader = SlowLists;
    fn reader(&self) -> Result<SlowLists, crate::zfs::ZfsError> {
        Ok(SlowLists {
            zfs: self.zfs.clone(),
            gate: Arc::clone(&self.gate),
            slow: true,
        })
    }
}

impl crate::metrics::DatasetSpaces for SlowLists {
    fn dataset_spaces(&self) -> Result<Vec<crate::metrics::DatasetSpace>, crate::zfs::ZfsError> {
        self.zfs.dataset_spaces()
    }
}

/// Everything as the fake does it; only listings of snapshots wait for the gate, and only
/// on a reader (the daemon's own handle, used under its lock, never waits).
impl crate::zfs::Zfs for SlowLists {
    fn pools(&self) -> Result<Vec<crate::zfs::PoolState>, crate::zfs::ZfsError> {
        self.zfs.pools()
    }
    fn importable_pools(&self) -> Result<Vec<crate::zfs::PoolState>, crate::zfs::ZfsError> {
        self.zfs.importable_pools()
    }
    fn pool_usage(&self) -> Result<Vec<crate::zfs::PoolUsage>, crate::zfs::ZfsError> {
        self.zfs.pool_usage()
    }
    fn disk(&self, path: &str) -> Result<crate::zfs::DiskState, crate::zfs::ZfsError> {
        self.zfs.disk(path)
    }
    fn create_pool(&mut self, spec: &crate::zfs::PoolSpec) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.create_pool(spec)
    }
    fn import_pool(&mut self, name: &str) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.import_pool(name)
    }
    fn scrub(&mut self, pool: &str) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.scrub(pool)
    }
    fn pool_history(&self, pool: &str) -> Result<String, crate::zfs::ZfsError> {
        self.zfs.pool_history(pool)
    }
    fn datasets(&self) -> Result<Vec<crate::zfs::DatasetState>, crate::zfs::ZfsError> {
        self.zfs.datasets()
    }
    fn create_dataset(
        &mut self,
        name: &str,
        props: &[(crate::zfs::Prop, String)],
    ) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.create_dataset(name, props)
    }
    fn set_property(
        &mut self,
        dataset: &str,
        prop: crate::zfs::Prop,
        value: &str,
    ) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.set_property(dataset, prop, value)
    }
    fn inherit_property(
        &mut self,
        dataset: &str,
        prop: crate::zfs::Prop,
    ) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.inherit_property(dataset, prop)
    }
    fn snapshots(
        &self,
        dataset: &str,
        recursive: bool,
    ) -> Result<Vec<crate::zfs::Snapshot>, crate::zfs::ZfsError> {
        self.wait();
        self.zfs.snapshots(dataset, recursive)
    }
    fn snapshot_names_under(
        &self,
        dataset: &str,
        recursive: bool,
    ) -> Result<crate::zfs::TreeNames, crate::zfs::ZfsError> {
        self.zfs.snapshot_names_under(dataset, recursive)
    }
    fn snapshot(
        &mut self,
        names: &[String],
        props: &[(String, String)],
    ) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.snapshot(names, props)
    }
    fn destroy_snapshots(&mut self, names: &[String]) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.destroy_snapshots(names)
    }
    fn hold(&mut self, holds: &[(String, String)]) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.hold(holds)
    }
    fn release(&mut self, holds: &[(String, String)]) -> Result<(), crate::zfs::ZfsError> {
        self.zfs.release(holds)
    }
    fn holds(
        &self,
        snapshot: &str,
    ) -> Result<std::collections::BTreeMap<String, u64>, crate::zfs::ZfsError> {
        self.zfs.holds(snapshot)
    }
}

#[test]
fn status_metrics_and_snapshots_list_without_the_daemon_lock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let store = Store::open(dir.path()).unwrap();
    let n = store.commit(CONFIG, "test").unwrap();
    store.activate(n).unwrap();
    let cfg = appliance::load_str(CONFIG).unwrap();
    let mut zfs = FakeZfs::new();
    for (name, pool) in &cfg.storage.pools {
        zfs = zfs.with_pool(name.as_str(), pools::declared_layout(pool), false);
    }
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(Gate {
        entered: std::sync::Mutex::new(entered_tx),
        release: std::sync::Mutex::new(release_rx),
        open: std::sync::atomic::AtomicBool::new(false),
    });
    let d = StoredDaemon::new(
        store,
        SlowLists {
            zfs,
            gate: Arc::clone(&gate),
            slow: false,
        },
        FakeShareOs::default(),
        Box::new(SharedClock(Arc::clone(&clock))),
        Box::new(NoReplicator),
    );
    d.apply_active();
    d.tick();

    type Call = fn(&StoredDaemon<SlowLists, FakeShareOs>) -> String;
    let calls: [(&str, Call); 3] = [
        ("status", |d| d.status().to_string()),
        ("metrics", |d| d.metrics()),
        ("snapshots", |d| d.snapshots(None).unwrap().to_string()),
    ];
    for (what, call) in calls {
        gate.open.store(false, Ordering::SeqCst);
        let daemon = Arc::clone(&d);
        let reading = std::thread::spawn(move || call(&daemon));
        entered.recv().unwrap();
        // The listing hangs: the lock is free, and an apply and a tick go through.
        assert!(
            d.inner.try_lock().is_ok(),
            "{what} holds the lock while listing"
        );
        assert_eq!(d.apply(1).unwrap().generation, 1);
        assert!(d.tick().errors.is_empty());
        gate.open.store(true, Ordering::SeqCst);
        release.send(()).unwrap();
        let out = reading.join().unwrap();
        assert!(out.contains("tank/data"), "{what}: {out}");
    }
}

/// One TLS handshake in memory between the listener's current config and a sender.
fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: rustls::ClientConfig,
) -> Result<(), rustls::Error> {
    let name = rustls::pki_types::ServerName::try_from(crate::replication::tls::SERVER_NAME)
        .unwrap()
        .to_owned();
    let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
    let mut s = rustls::ServerConnection::new(server)?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets()?;
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn an_apply_updates_the_running_listener_in_place() {
    use crate::replication::tls::{Identity, client_config};
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let receiver = Identity::create(&path("receiver.pem")).unwrap();
    let sender = Identity::create(&path("sender.pem")).unwrap();
    let other = Identity::create(&path("other.pem")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The model wants identity files under /data; the daemon gets the settings the same
    // way from an applied generation (`apply` calls `sync_receiver` with them).
    let config = |allowed: &str, dataset: &str| ReceiverConfig {
        listen: format!("127.0.0.1:{port}"),
        identity_file: path("receiver.pem"),
        allowed_clients: vec![allowed.to_owned()],
        datasets: vec![dataset.to_owned()],
    };
    // A sender's client config, pinning the receiver.
    let client = |file: &str| {
        client_config(
            Identity::load(&path(file)).unwrap(),
            &receiver.fingerprint(),
        )
        .unwrap()
    };
    let clock = Arc::new(FakeClock::new(at("2026-11-26T06:00:00Z")));
    let d = daemon(&path("store"), "version = 1\n", clock);
    d.set_accounts(crate::accounts::Accounts::at(
        path("userdb"),
        path("accounts.json"),
    ));
    d.apply_active();
    assert!(d.receiver_settings().is_none(), "no listener declared");
    d.sync_receiver(Some(&config(&sender.fingerprint(), "vault")));
    let settings = d.receiver_settings().expect("the listener started");
    let (tls, datasets) = settings.current();
    assert_eq!(*datasets, ["vault"]);
    handshake(Arc::clone(&tls), client("sender.pem")).unwrap();
    handshake(tls, client("other.pem")).unwrap_err();

    // The next generation allows the other sender and another dataset: same listener (the
    // port is still bound by it), new settings for the next connection.
    d.sync_receiver(Some(&config(&other.fingerprint(), "backup")));
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    let (tls, datasets) = d.receiver_settings().unwrap().current();
    assert_eq!(*datasets, ["backup"]);
    handshake(Arc::clone(&tls), client("other.pem")).unwrap();
    handshake(tls, client("sender.pem")).unwrap_err();

    // An identity that cannot be read: the listener keeps the identity it serves (the
    // senders pin it) but the allowed set and datasets follow the config all the same.
    let mut broken = config(&sender.fingerprint(), "vault");
    broken.identity_file = path("missing.pem");
    d.sync_receiver(Some(&broken));
    let (tls, datasets) = d.receiver_settings().unwrap().current();
    assert_eq!(*datasets, ["vault"]);
    handshake(Arc::clone(&tls), client("sender.pem")).unwrap();
    handshake(tls, client("other.pem")).unwrap_err();
    d.sync_receiver(Some(&config(&other.fingerprint(), "backup")));

    // A generation without the listener leaves it bound but refusing everyone.
    let n = d
        .store
        .commit("version = 1\n# no listener\n", "test")
        .unwrap();
    d.apply(n).unwrap();
    let (tls, datasets) = d.receiver_settings().unwrap().current();
    assert!(datasets.is_empty());
    handshake(Arc::clone(&tls), client("other.pem")).unwrap_err();
    handshake(tls, client("sender.pem")).unwrap_err();
}

/// The audit's case: the listener removed from the config together with its identity
/// file. Closing needs no identity, so the old allowed clients are refused at the apply,
/// not at the next restart.
#[test]
fn removing_the_listener_with_its_identity_file_refuses_the_old_clients_at_once() {
    use crate::replication::tls::{Identity, client_config};
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let receiver = Identity::create(&path("receiver.pem")).unwrap();
    let sender = Identity::create(&path("sender.pem")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let clock = Arc::new(FakeClock::new(at("2026-11-26T06:00:00Z")));
    let d = daemon(&path("store"), "version = 1\n", clock);
    d.set_accounts(crate::accounts::Accounts::at(
        path("userdb"),
        path("accounts.json"),
    ));
    d.apply_active();
    d.sync_receiver(Some(&ReceiverConfig {
        listen: format!("127.0.0.1:{port}"),
        identity_file: path("receiver.pem"),
        allowed_clients: vec![sender.fingerprint()],
        datasets: vec!["vault".to_owned()],
    }));
    let client = || {
        client_config(
            Identity::load(&path("sender.pem")).unwrap(),
            &receiver.fingerprint(),
        )
        .unwrap()
    };
    let (tls, _) = d.receiver_settings().unwrap().current();
    handshake(tls, client()).unwrap();

    std::fs::remove_file(path("receiver.pem")).unwrap();
    let n = d
        .store
        .commit("version = 1\n# listener and identity gone\n", "test")
        .unwrap();
    d.apply(n).unwrap();
    let (tls, datasets) = d.receiver_settings().unwrap().current();
    assert!(datasets.is_empty());
    handshake(tls, client()).unwrap_err();
}

#[test]
fn an_apply_makes_the_nas_users_accounts_before_the_shares() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{CONFIG}\n[storage.users.alice]\n[storage.users.bob]\nuid = 2500\n");
    let clock = Arc::new(FakeClock::new(at("2026-11-26T06:00:00Z")));
    let d = daemon(&dir.path().join("store"), &text, clock);
    let userdb = dir.path().join("userdb");
    d.set_accounts(crate::accounts::Accounts::at(
        &userdb,
        dir.path().join("accounts.json"),
    ));
    let plan = d.plan(1).unwrap();
    assert!(
        plan.actions
            .contains(&"accounts: create Unix account alice (uid 2000)".to_owned()),
        "{:?}",
        plan.actions
    );
    let done = d.apply(1).unwrap();
    assert!(
        done.actions
            .contains(&"accounts: create Unix account bob (uid 2500)".to_owned()),
        "{:?}",
        done.actions
    );
    assert!(userdb.join("2000.user").exists());
    // Applied again: nothing to do for the accounts.
    let again = d.apply(1).unwrap();
    assert!(
        !again.actions.iter().any(|a| a.starts_with("accounts:")),
        "{:?}",
        again.actions
    );
}

/// Signals when a run starts and finishes it when told.
struct GatedReplicator {
    started: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

impl Replicator for GatedReplicator {
    fn run(
        &mut self,
        name: &str,
        _: &ReplicationJob,
    ) -> Result<crate::replication::JobReport, String> {
        let _ = self.started.send(());
        let _ = self.go.recv();
        Ok(replicate::report(name, 1, 1, Some(1)))
    }
}

/// A run sends the snapshots it listed at its start, one by one: a pass of the scheduler
/// meanwhile must not prune them (the run would fail at that step). They go with the
/// first pass after the run.
#[test]
fn a_running_job_keeps_its_datasets_snapshots_from_the_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let text = format!(
        "{}\n[replication.offsite]\ntarget = \"192.0.2.1:7001\"\ntarget_dataset = \"backup/box\"\ndatasets = [\"tank/data\"]\ninterval = \"1h\"\n",
        CONFIG.replace("frequently = 4\n", "frequently = 1\n")
    );
    let (started_tx, started) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let d = daemon_with(
        dir.path(),
        &text,
        Arc::clone(&clock),
        Box::new(GatedReplicator {
            started: started_tx,
            go: go_rx,
        }),
    );
    d.apply_active();
    d.tick();
    let first = "tank/data@stored_frequently_2026-01-01T00:00:00Z".to_owned();
    assert!(names(&d).contains(&first));
    let d2 = Arc::clone(&d);
    let run = std::thread::spawn(move || d2.replicate("offsite"));
    started.recv().unwrap();

    let set = |t: &str| {
        let t = at(t);
        clock.set(t);
        d.inner().zfs.now = t.0;
    };
    set("2026-01-01T00:15:00Z");
    let dry = d.prune(true, None).unwrap();
    assert!(
        dry["policies"][0]["protected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == first.as_str() && k["why"] == "needed by replication"),
        "{dry:#}"
    );
    let r = d.tick();
    assert!(r.destroyed.is_empty(), "pruned during the run: {r:?}");
    assert!(names(&d).contains(&first));

    go.send(()).unwrap();
    run.join().unwrap().unwrap();
    set("2026-01-01T00:30:00Z");
    let r = d.tick();
    assert!(r.destroyed.contains(&first), "{r:?}");
    assert!(
        r.destroyed
            .contains(&"tank/data@stored_frequently_2026-01-01T00:15:00Z".to_owned()),
        "{r:?}"
    );
}

#[test]
fn a_refused_shares_step_takes_back_the_accounts_the_apply_made() {
    let dir = tempfile::tempdir().unwrap();
    // The fake share OS has no mounts: the share's dataset is refused after the accounts
    // step made alice's.
    let text = format!(
        "{CONFIG}\n[storage.users.alice]\n\n[shares.data]\ndataset = \"tank/data\"\nsmb = {{ guest = true }}\n"
    );
    let clock = Arc::new(FakeClock::new(at("2026-11-26T06:00:00Z")));
    let d = daemon(&dir.path().join("store"), &text, clock);
    let userdb = dir.path().join("userdb");
    d.set_accounts(crate::accounts::Accounts::at(
        &userdb,
        dir.path().join("accounts.json"),
    ));
    let e = d.apply(1).unwrap_err().to_string();
    assert!(e.contains("dataset tank/data does not exist"), "{e}");
    assert!(e.contains("the account changes were undone"), "{e}");
    assert!(!userdb.join("alice.user").exists());
    assert!(!userdb.join("2000.user").exists());
}

#[test]
fn an_apply_that_removes_a_job_releases_its_holds_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let job = "\n[replication.offsite]\ntarget = \"192.0.2.1:7001\"\ntarget_dataset = \"backup/box\"\ndatasets = [\"tank/data\"]\ninterval = \"1h\"\n";
    let d = daemon(dir.path(), &format!("{CONFIG}{job}"), clock);
    d.apply_active();
    let snap = "tank/data@s1".to_owned();
    let tags = ["stored-repl:offsite", "stored-repl:gone", "keep"];
    {
        let mut inner = d.inner();
        inner
            .zfs
            .snapshot(std::slice::from_ref(&snap), &[])
            .unwrap();
        let holds: Vec<(String, String)> = tags
            .iter()
            .map(|t| (snap.clone(), (*t).to_owned()))
            .collect();
        inner.zfs.hold(&holds).unwrap();
    }
    let held =
        |d: &Daemon| -> Vec<String> { d.inner().zfs.holds(&snap).unwrap().into_keys().collect() };
    // The same jobs again: no job went, the holds stay (even the stale one, until then).
    let same = d.store.commit(&format!("{CONFIG}{job}"), "same").unwrap();
    d.apply(same).unwrap();
    assert_eq!(held(&d).len(), 3);
    // offsite leaves the config: its hold goes with the stale one, a user's hold stays.
    let without = d.store.commit(CONFIG, "no job").unwrap();
    d.apply(without).unwrap();
    assert_eq!(held(&d), ["keep"]);
}

#[test]
fn an_active_generation_that_fails_at_start_is_tried_again_by_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(at("2026-01-01T00:00:00Z")));
    let d = daemon(dir.path(), CONFIG, Arc::clone(&clock));
    // The pool's import fails once (a disk not there yet at boot).
    d.inner().zfs.fail_next = Some("cannot import 'tank': no such pool available".into());
    d.apply_active();
    assert!(d.inner().applied.is_none());
    d.retry_start();
    assert!(d.inner().applied.is_some(), "{:?}", d.inner().last_error);
    d.tick();
    assert!(
        names(&d).iter().any(|n| n.starts_with("tank/data@stored_")),
        "{:?}",
        names(&d)
    );
    // Nothing left to retry: a later pass applies nothing again.
    assert!(!d.start_failed.load(Ordering::SeqCst));
}
