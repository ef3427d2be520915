//! The engine against in-memory doubles of the daemons.

use std::sync::Mutex as StdMutex;

use super::*;

/// A daemon that records what it applied and fails the generations it is told to.
#[derive(Debug)]
struct Fake {
    name: &'static str,
    applied: StdMutex<u64>,
    fail_apply: StdMutex<Option<u64>>,
    running: bool,
    calls: Arc<StdMutex<Vec<String>>>,
}

impl Fake {
    fn new(name: &'static str, calls: &Arc<StdMutex<Vec<String>>>) -> Arc<Self> {
        Arc::new(Self {
            name,
            applied: StdMutex::new(1),
            fail_apply: StdMutex::new(None),
            running: true,
            calls: Arc::clone(calls),
        })
    }
    fn applied(&self) -> u64 {
        *self.applied.lock().unwrap()
    }
}

impl Daemon for Fake {
    fn name(&self) -> &str {
        self.name
    }
    fn plan(&self, generation: u64) -> daemon::BoxFuture<'_, Result<Vec<String>, DaemonError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{} plan {generation}", self.name));
        let running = self.running;
        Box::pin(async move {
            if running {
                Ok(vec![format!("reach {generation}")])
            } else {
                Err(DaemonError::NotRunning)
            }
        })
    }
    fn apply(&self, generation: u64) -> daemon::BoxFuture<'_, Result<Vec<String>, DaemonError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{} apply {generation}", self.name));
        Box::pin(async move {
            if *self.fail_apply.lock().unwrap() == Some(generation) {
                return Err(DaemonError::Failed {
                    step: Some("firewall".into()),
                    reason: "nft refused the ruleset".into(),
                });
            }
            *self.applied.lock().unwrap() = generation;
            Ok(vec![])
        })
    }
    fn status(&self) -> daemon::BoxFuture<'_, Result<serde_json::Value, DaemonError>> {
        Box::pin(async move {
            Ok(serde_json::json!({ "daemon": self.name, "generation": self.applied() }))
        })
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    config_dir: std::path::PathBuf,
    state_dir: std::path::PathBuf,
    netd: Arc<Fake>,
    dnsd: Arc<Fake>,
    stored: Arc<Fake>,
    calls: Arc<StdMutex<Vec<String>>>,
}

impl Rig {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(StdMutex::new(Vec::new()));
        let (netd, dnsd, stored) = (
            Fake::new("netd", &calls),
            Fake::new("dnsd", &calls),
            Fake::new("stored", &calls),
        );
        Self {
            config_dir: dir.path().join("config"),
            state_dir: dir.path().join("applianced"),
            _dir: dir,
            netd,
            dnsd,
            stored,
            calls,
        }
    }

    /// A fresh engine on the same directories and daemons, as after a restart.
    fn engine(&self) -> Engine {
        let daemons: Vec<Arc<dyn Daemon>> = vec![
            Arc::clone(&self.netd) as Arc<dyn Daemon>,
            Arc::clone(&self.dnsd) as Arc<dyn Daemon>,
            Arc::clone(&self.stored) as Arc<dyn Daemon>,
        ];
        Engine::new(
            Store::open(&self.config_dir).unwrap(),
            StateDir::open(&self.state_dir).unwrap(),
            daemons,
        )
    }

    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// The default with the LAN's input dropped (a firewall change: needs a confirm) and,
/// with `dns`, a bigger DNS cache too.
fn changed(firewall: bool, dns: bool) -> String {
    let mut text = crate::DEFAULT_CONFIG.to_owned();
    if firewall {
        text = text.replacen(
            "interfaces = [\"lan\"]\ninput = \"accept\"",
            "interfaces = [\"lan\"]\ninput = \"drop\"",
            1,
        );
    }
    if dns {
        text = text.replacen("cache_size = 10000", "cache_size = 20000", 1);
    }
    assert_ne!(text, crate::DEFAULT_CONFIG);
    text
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

#[tokio::test]
async fn a_dns_change_applies_without_a_window_on_dnsd_only() {
    let rig = Rig::new();
    let e = rig.engine();
    let r = e
        .apply(&changed(false, true), "bigger cache", None, t(0))
        .await
        .unwrap();
    // The empty store got the default as generation 1, the change is 2.
    assert_eq!((r.from, r.to, r.active), (1, 2, 2));
    assert_eq!(r.sections, ["dns"]);
    assert_eq!(r.confirm_deadline_unix, None);
    assert_eq!(rig.calls(), ["dnsd plan 2", "dnsd apply 2"]);
    assert_eq!(e.store().active().unwrap(), Some(2));
    assert!(matches!(e.confirm().await, Err(TxnError::NothingPending)));
}

#[tokio::test]
async fn failure_on_the_second_daemon_sends_every_daemon_back() {
    let rig = Rig::new();
    let e = rig.engine();
    *rig.dnsd.fail_apply.lock().unwrap() = Some(2);
    let err = e
        .apply(&changed(true, true), "both", None, t(0))
        .await
        .unwrap_err();
    let TxnError::Failed {
        step,
        reason,
        report,
    } = &err
    else {
        panic!("expected a failed transaction, got {err:?}");
    };
    assert_eq!(step, "apply of generation 2 on dnsd");
    assert!(
        reason.contains("firewall: nft refused the ruleset"),
        "{reason}"
    );
    assert!(
        err.to_string()
            .contains("every daemon touched is back on generation 1"),
        "{err}"
    );
    assert_eq!(
        rig.calls(),
        [
            "netd plan 2",
            "dnsd plan 2",
            "netd apply 2",
            "dnsd apply 2",
            "dnsd apply 1",
            "netd apply 1"
        ]
    );
    assert_eq!(
        (rig.netd.applied(), rig.dnsd.applied(), rig.stored.applied()),
        (1, 1, 1)
    );
    assert_eq!(report.active, 1);
    assert!(report.revert_ms.is_some());
    // Generation 2 stays stored for inspection but is not active, and nothing is pending.
    assert_eq!(e.store().active().unwrap(), Some(1));
    assert!(e.store().get(2).is_ok());
    assert!(matches!(e.confirm().await, Err(TxnError::NothingPending)));
}

#[tokio::test]
async fn a_firewall_change_waits_for_a_confirm_and_stays_once_confirmed() {
    let rig = Rig::new();
    let e = rig.engine();
    let r = e
        .apply(&changed(true, false), "lock lan", None, t(0))
        .await
        .unwrap();
    assert_eq!(r.confirm_seconds, Some(DEFAULT_CONFIRM.as_secs()));
    assert_eq!(rig.netd.applied(), 2);
    // Another change must wait for the decision.
    assert!(matches!(
        e.apply(&changed(true, true), "more", None, t(1)).await,
        Err(TxnError::Pending {
            generation: 2,
            seconds_left: 119
        })
    ));
    assert_eq!(e.confirm().await.unwrap(), 2);
    assert_eq!(e.expire_if_due(t(10_000)).await.unwrap(), None);
    assert_eq!(rig.netd.applied(), 2);
    assert_eq!(e.store().active().unwrap(), Some(2));
}

#[tokio::test]
async fn without_a_confirm_the_change_is_reverted_at_the_deadline() {
    let rig = Rig::new();
    let e = rig.engine();
    e.apply(
        &changed(true, false),
        "lock lan",
        Some(Duration::from_secs(5)),
        t(0),
    )
    .await
    .unwrap();
    rig.calls();
    assert_eq!(e.expire_if_due(t(4)).await.unwrap(), None);
    let r = e.expire_if_due(t(5)).await.unwrap().unwrap();
    assert_eq!((r.from, r.to, r.active), (2, 1, 1));
    assert_eq!(rig.calls(), ["netd apply 1"]);
    assert_eq!(rig.netd.applied(), 1);
    assert_eq!(e.store().active().unwrap(), Some(1));
    assert!(matches!(e.confirm().await, Err(TxnError::NothingPending)));
}

#[tokio::test]
async fn a_restart_reverts_an_expired_change_and_rearms_a_live_one() {
    let rig = Rig::new();
    {
        let e = rig.engine();
        e.apply(
            &changed(true, false),
            "lock lan",
            Some(Duration::from_secs(60)),
            t(0),
        )
        .await
        .unwrap();
    }
    // Restarted within the window: nothing is reverted, the change still waits.
    let e = rig.engine();
    assert_eq!(e.recover(t(30)).await.unwrap(), None);
    let s = e.status(t(30)).await.unwrap();
    assert_eq!(s.pending.as_ref().map(|p| p.seconds_left), Some(30));
    assert_eq!(rig.netd.applied(), 2);
    drop(e);
    // Restarted after the deadline: reverted at once.
    let e = rig.engine();
    let r = e.recover(t(61)).await.unwrap().unwrap();
    assert_eq!(r.active, 1);
    assert_eq!(rig.netd.applied(), 1);
    assert_eq!(e.store().active().unwrap(), Some(1));
    assert!(e.status(t(61)).await.unwrap().pending.is_none());
}

#[tokio::test]
async fn rollback_reverts_a_pending_change_or_returns_to_an_older_generation() {
    let rig = Rig::new();
    let e = rig.engine();
    e.apply(&changed(false, true), "dns", None, t(0))
        .await
        .unwrap();
    e.apply(&changed(true, true), "fw", None, t(1))
        .await
        .unwrap();
    assert_eq!((rig.netd.applied(), rig.dnsd.applied()), (3, 2));
    // Pending: a rollback to anything but the previous generation is refused.
    assert!(matches!(
        e.rollback(Some(1)).await,
        Err(TxnError::BadRequest(_))
    ));
    let r = e.rollback(None).await.unwrap();
    assert_eq!(r.active, 2);
    assert_eq!(rig.netd.applied(), 2);
    rig.calls();
    // Nothing pending: back to the generation before the active one.
    let r = e.rollback(None).await.unwrap();
    assert_eq!((r.from, r.to, r.active), (2, 1, 1));
    assert_eq!(rig.calls(), ["dnsd plan 1", "dnsd apply 1"]);
    assert_eq!(rig.dnsd.applied(), 1);
}

#[tokio::test]
async fn a_daemon_not_running_is_skipped_and_reported() {
    let mut rig = Rig::new();
    rig.stored = Arc::new(Fake {
        running: false,
        ..Arc::into_inner(Fake::new("stored", &rig.calls)).unwrap()
    });
    rig.dnsd = Arc::new(Fake {
        running: false,
        ..Arc::into_inner(Fake::new("dnsd", &rig.calls)).unwrap()
    });
    let e = rig.engine();
    let r = e
        .apply(&changed(false, true), "dns", None, t(0))
        .await
        .unwrap();
    assert_eq!(r.skipped, ["dnsd"]);
    assert_eq!(r.steps[0].outcome, "skipped");
    assert_eq!(r.active, 2);
}

#[tokio::test]
async fn an_invalid_config_changes_nothing() {
    let rig = Rig::new();
    let e = rig.engine();
    let err = e
        .apply("version = 1\n[bogus]\n", "x", None, t(0))
        .await
        .unwrap_err();
    assert!(matches!(err, TxnError::Invalid(_)), "{err:?}");
    assert!(rig.calls().is_empty());
    assert_eq!(e.store().active().unwrap(), None);
}

#[tokio::test]
async fn the_timer_reverts_after_the_window() {
    let rig = Rig::new();
    let e = Arc::new(rig.engine());
    let timer = tokio::spawn(Arc::clone(&e).run_timer());
    e.apply(
        &changed(true, false),
        "lock lan",
        Some(Duration::from_secs(1)),
        SystemTime::now(),
    )
    .await
    .unwrap();
    assert_eq!(rig.netd.applied(), 2);
    // Polls the outcome, not the time it took.
    while e.status(SystemTime::now()).await.unwrap().pending.is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.netd.applied(), 1);
    assert_eq!(e.store().active().unwrap(), Some(1));
    timer.abort();
}

#[tokio::test]
async fn a_stored_generation_applies_like_a_text() {
    let rig = Rig::new();
    let e = rig.engine();
    e.apply(&changed(false, true), "dns", None, t(0))
        .await
        .unwrap();
    let n = e.store().commit(&changed(true, true), "put").unwrap();
    assert_eq!(e.store().active().unwrap(), Some(2));
    let r = e.apply_stored(n, None, t(1)).await.unwrap();
    assert_eq!((r.from, r.to, r.active), (2, 3, 3));
    assert!(r.confirm_deadline_unix.is_some());
    assert_eq!(rig.netd.applied(), 3);
    assert!(matches!(
        e.apply_stored(99, None, t(2)).await,
        Err(TxnError::Store(StoreError::NotFound(99)))
    ));
}
