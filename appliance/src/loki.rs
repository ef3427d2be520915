//! Logs as JSON lines for the journal, and a copy pushed to Loki (`[logging]`).
//!
//! A `tracing` layer rather than a journal follower: each daemon ships exactly its own
//! events, with their fields, without reading the journal back (which needs the journal
//! group and a `journalctl` child per daemon) and without depending on journald keeping
//! up. The layer only formats the event and appends it to a bounded queue under a short
//! lock; a thread of its own batches the queue and POSTs it to Loki's
//! `/loki/api/v1/push` (JSON push format), so a slow or absent Loki never blocks the
//! daemon. When the queue is full the oldest line is dropped and counted; a failed push is
//! retried with exponential backoff (1 s to 60 s), the batch kept at the queue's front.
//! Loki refusing a batch outright (4xx other than 429) drops it, counted, since sending it
//! again cannot succeed.
//!
//! Counters are in [`Loki::metrics`] (`appliance_loki_*`), served in applianced's
//! `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use crate::model::Logging;

/// Lines kept while Loki is slow or away (about 8 MiB at 800 bytes a line).
pub const QUEUE_LINES: usize = 10_000;
/// Lines per push at most.
const BATCH: usize = 1000;
/// How long a line may wait for others to join its batch.
const LINGER: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The push request's own timeout: a Loki that accepts but never answers is a failure.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One line waiting for Loki.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Nanoseconds since the Unix epoch.
    ns: u128,
    level: &'static str,
    line: String,
}

/// Where the lines go and with which labels; `None` while `[logging] loki_url` is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    url: String,
    labels: BTreeMap<String, String>,
    json: bool,
}

#[derive(Debug, Default)]
struct Stats {
    pushed: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    unit: String,
    capacity: usize,
    queue: Mutex<VecDeque<Entry>>,
    wake: Condvar,
    target: RwLock<Option<Target>>,
    /// Mirrors `target.is_some()`, read on every event without a lock.
    enabled: AtomicBool,
    stats: Stats,
}

thread_local! {
    /// Set on the pusher thread: its own events (and the HTTP client's) are not queued,
    /// or a failing push would feed itself.
    static PUSHER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The Loki push of one daemon: a handle to configure it, its layer, its counters.
#[derive(Debug, Clone)]
pub struct Loki {
    shared: Arc<Shared>,
}

impl Loki {
    /// A push for `unit` (the daemon's name, the `unit` label), idle until
    /// [`Loki::configure`] gives it a URL; its thread starts here.
    pub fn start(unit: &str) -> std::io::Result<Self> {
        let loki = Self::idle(unit, QUEUE_LINES);
        let s = Arc::clone(&loki.shared);
        std::thread::Builder::new()
            .name("loki-push".into())
            .spawn(move || {
                PUSHER.with(|p| p.set(true));
                pusher(&s);
            })?;
        Ok(loki)
    }

    /// Without the pusher thread: the queue changes only by events and the caller.
    fn idle(unit: &str, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            unit: unit.to_owned(),
            capacity,
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            target: RwLock::new(None),
            enabled: AtomicBool::new(false),
            stats: Stats::default(),
        });
        Self { shared }
    }

    /// The layer that queues every event that passes the subscriber's filter.
    pub fn layer(&self) -> LokiLayer {
        LokiLayer {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Takes `[logging]` of the config the daemon runs (and `system.hostname` for the
    /// `host` label); an unset `loki_url` stops the push and empties the queue.
    pub fn configure(&self, logging: &Logging, hostname: &str) {
        let target = logging.loki_url.as_ref().map(|u| {
            let mut url = u.as_url().clone();
            if url.path().is_empty() || url.path() == "/" {
                url.set_path("/loki/api/v1/push");
            }
            let mut labels = BTreeMap::from([
                ("job".to_owned(), "appliance".to_owned()),
                ("host".to_owned(), hostname.to_owned()),
            ]);
            for (k, v) in &logging.loki_labels {
                labels.insert(k.as_str().to_owned(), v.clone());
            }
            labels.insert("unit".into(), self.shared.unit.clone());
            Target {
                url: url.to_string(),
                labels,
                json: logging.json,
            }
        });
        let on = target.is_some();
        if let Ok(mut t) = self.shared.target.write() {
            if *t != target {
                match &target {
                    Some(t) => tracing::info!(url = %t.url, "pushing logs to Loki"),
                    None if t.is_some() => tracing::info!("no longer pushing logs to Loki"),
                    None => {}
                }
            }
            *t = target;
        }
        self.shared.enabled.store(on, Ordering::Relaxed);
        if !on && let Ok(mut q) = self.shared.queue.lock() {
            q.clear();
        }
        self.shared.wake.notify_all();
    }

    /// Prometheus text of the push's counters.
    pub fn metrics(&self) -> String {
        let s = &self.shared.stats;
        let queued = self.shared.queue.lock().map_or(0, |q| q.len());
        let unit = &self.shared.unit;
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "appliance_loki_pushed_lines_total",
                "counter",
                "Log lines Loki accepted.",
                s.pushed.load(Ordering::Relaxed),
            ),
            (
                "appliance_loki_dropped_lines_total",
                "counter",
                "Log lines dropped because the queue for Loki was full (oldest first).",
                s.dropped.load(Ordering::Relaxed),
            ),
            (
                "appliance_loki_refused_lines_total",
                "counter",
                "Log lines Loki refused (a 4xx answer other than 429): not sent again.",
                s.refused.load(Ordering::Relaxed),
            ),
            (
                "appliance_loki_push_failures_total",
                "counter",
                "Pushes to Loki that failed and were retried.",
                s.failures.load(Ordering::Relaxed),
            ),
            (
                "appliance_loki_queued_lines",
                "gauge",
                "Log lines waiting for Loki.",
                queued as u64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{unit=\"{unit}\"}} {value}");
        }
        out
    }
}

static GLOBAL: std::sync::OnceLock<Loki> = std::sync::OnceLock::new();

impl Loki {
    /// Makes this the push whose counters [`global_metrics`] reports (the daemon's one).
    pub fn install_global(&self) {
        let _ = GLOBAL.set(self.clone());
    }
}

/// The push installed with [`Loki::install_global`].
pub fn global() -> Option<&'static Loki> {
    GLOBAL.get()
}

/// The counters of the push installed with [`Loki::install_global`]; empty without one.
pub fn global_metrics() -> String {
    GLOBAL.get().map(Loki::metrics).unwrap_or_default()
}

/// `[logging]` and the host name of the active generation in the store at `config_dir`
/// (the built-in default's before the first), read before logging starts; a store or
/// config that cannot be read comes back as a problem to report once logging runs, and the
/// default's settings hold until then.
pub fn active_logging(config_dir: &std::path::Path) -> (Logging, String, Option<String>) {
    let text = match crate::store::Store::open(config_dir).and_then(|s| s.current()) {
        Ok((Some(g), _)) => g.text,
        Ok((None, _)) => crate::DEFAULT_CONFIG.to_owned(),
        Err(e) => {
            return (
                Logging::default(),
                "appliance".into(),
                Some(format!("the config store cannot be read: {e}")),
            );
        }
    };
    match crate::load_str(&text) {
        Ok(cfg) => (cfg.logging, cfg.system.hostname.to_string(), None),
        Err(d) => (
            Logging::default(),
            "appliance".into(),
            Some(format!(
                "the active config does not validate ({} mistakes): default logging",
                d.0.len()
            )),
        ),
    }
}

/// The tracing start-up every daemon shares: stderr as text or JSON lines as `[logging]`
/// says, filtered by `RUST_LOG` or else `default_filter`, and the push to Loki for `unit`
/// configured from `[logging]` of the active generation in `config_dir`. Returns the push
/// (also installed as the [`global`] one) so that a later generation can reconfigure it;
/// `None` when its thread could not start, which is logged.
pub fn init_daemon(unit: &str, default_filter: &str, config_dir: &std::path::Path) -> Option<Loki> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (logging, hostname, problem) = active_logging(config_dir);
    let loki = Loki::start(unit);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let text = (!logging.json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let json = logging.json.then_some(JsonStderr);
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(loki.as_ref().ok().map(Loki::layer))
        .init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
    match loki {
        Ok(l) => {
            l.install_global();
            l.configure(&logging, &hostname);
            Some(l)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the Loki push thread: no push");
            None
        }
    }
}

impl Shared {
    fn enqueue(&self, entry: Entry) {
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        while q.len() >= self.capacity {
            q.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(entry);
        if q.len() >= BATCH {
            self.wake.notify_all();
        } else if q.len() == 1 {
            // The pusher may sleep without a deadline on an empty queue.
            self.wake.notify_all();
        }
    }

    /// Puts a batch that failed back in front of newer lines, as far as room allows:
    /// when it does not fit, its oldest lines are the ones dropped.
    fn requeue(&self, batch: Vec<Entry>) {
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        let room = self.capacity.saturating_sub(q.len());
        let skip = batch.len().saturating_sub(room);
        self.stats.dropped.fetch_add(skip as u64, Ordering::Relaxed);
        for e in batch.into_iter().skip(skip).rev() {
            q.push_front(e);
        }
    }

    /// Waits until a batch is due (full, or its first line waited [`LINGER`]) and takes it.
    fn next_batch(&self) -> Vec<Entry> {
        let Ok(mut q) = self.queue.lock() else {
            return Vec::new();
        };
        while q.is_empty() {
            q = match self.wake.wait(q) {
                Ok(q) => q,
                Err(_) => return Vec::new(),
            };
        }
        let due = Instant::now() + LINGER;
        while q.len() < BATCH {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = match self.wake.wait_timeout(q, left) {
                Ok((q, _)) => q,
                Err(_) => return Vec::new(),
            };
        }
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    }

    /// Sleeps `d` unless the config changes meanwhile.
    fn pause(&self, d: Duration) {
        if let Ok(q) = self.queue.lock() {
            let _ = self.wake.wait_timeout(q, d);
        }
    }
}

/// The push body: one stream per level, each line `[ns as a string, line]`, oldest first.
fn push_body(labels: &BTreeMap<String, String>, batch: &[Entry]) -> Value {
    let mut by_level: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for e in batch {
        by_level
            .entry(e.level)
            .or_default()
            .push(json!([e.ns.to_string(), e.line]));
    }
    let streams: Vec<Value> = by_level
        .into_iter()
        .map(|(level, values)| {
            let mut stream: Map<String, Value> = labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            stream.insert("level".into(), Value::String(level.into()));
            json!({ "stream": stream, "values": values })
        })
        .collect();
    json!({ "streams": streams })
}

enum Outcome {
    Pushed,
    /// Loki will never take this batch.
    Refused(String),
    /// Worth trying again.
    Failed(String),
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Outcome {
    let text = body.to_string();
    match agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(text.as_bytes())
    {
        Ok(r) if r.status().is_success() => Outcome::Pushed,
        Ok(r) => {
            let status = r.status().as_u16();
            if (400..500).contains(&status) && status != 429 {
                Outcome::Refused(format!("HTTP {status}"))
            } else {
                Outcome::Failed(format!("HTTP {status}"))
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn pusher(shared: &Shared) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PUSH_TIMEOUT))
        // A 4xx/5xx is an answer to act on, not a transport error.
        .http_status_as_error(false)
        .build()
        .into();
    let mut backoff = BACKOFF_MIN;
    loop {
        let batch = shared.next_batch();
        if batch.is_empty() {
            continue;
        }
        let target = shared.target.read().ok().and_then(|t| t.clone());
        let Some(target) = target else {
            continue;
        };
        let n = batch.len() as u64;
        match post(&agent, &target.url, &push_body(&target.labels, &batch)) {
            Outcome::Pushed => {
                shared.stats.pushed.fetch_add(n, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
            }
            Outcome::Refused(why) => {
                shared.stats.refused.fetch_add(n, Ordering::Relaxed);
                // Not through tracing (this thread's events are not pushed anyway): the
                // journal still learns why lines are missing in Loki.
                let _ = writeln!(
                    std::io::stderr(),
                    "loki: {} refused {n} log lines ({why}); they are dropped",
                    target.url
                );
                backoff = BACKOFF_MIN;
            }
            Outcome::Failed(why) => {
                shared.stats.failures.fetch_add(1, Ordering::Relaxed);
                let _ = writeln!(
                    std::io::stderr(),
                    "loki: pushing to {} failed ({why}); retrying in {} s",
                    target.url,
                    backoff.as_secs()
                );
                shared.requeue(batch);
                shared.pause(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// An event's fields as JSON values, in the event's order.
#[derive(Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn insert(&mut self, name: &str, value: Value) {
        self.0.push((name.to_owned(), value));
    }

    fn message(&mut self) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k == "message")?;
        Some(self.0.remove(i).1)
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field.name(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field.name(), Value::String(value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field.name(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field.name(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field.name(), Value::String(value.to_string()));
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The event as one JSON object: `ts` (Unix seconds), `level`, `target`, `message`, fields.
fn json_line(event: &Event<'_>, ns: u128) -> String {
    let mut f = Fields::default();
    event.record(&mut f);
    let meta = event.metadata();
    let mut obj = Map::new();
    obj.insert("ts".into(), json!(ns as f64 / 1e9));
    obj.insert("level".into(), json!(level_name(meta.level())));
    obj.insert("target".into(), json!(meta.target()));
    if let Some(m) = f.message() {
        obj.insert("message".into(), m);
    }
    obj.extend(f.0);
    Value::Object(obj).to_string()
}

/// The event as text: `target: message key=value ...` (the level is a label).
fn text_line(event: &Event<'_>) -> String {
    let mut f = Fields::default();
    event.record(&mut f);
    let mut line = format!("{}:", event.metadata().target());
    if let Some(Value::String(m)) = f.message() {
        line.push(' ');
        line.push_str(&m);
    }
    for (k, v) in f.0 {
        match v {
            Value::String(s) => {
                let _ = write!(line, " {k}={s:?}");
            }
            other => {
                let _ = write!(line, " {k}={other}");
            }
        }
    }
    line
}

/// Queues events for Loki (see [`Loki::layer`]).
#[derive(Debug)]
pub struct LokiLayer {
    shared: Arc<Shared>,
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for LokiLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !self.shared.enabled.load(Ordering::Relaxed) || PUSHER.with(std::cell::Cell::get) {
            return;
        }
        let json = self
            .shared
            .target
            .read()
            .ok()
            .and_then(|t| t.as_ref().map(|t| t.json))
            .unwrap_or(false);
        let ns = now_ns();
        let line = if json {
            json_line(event, ns)
        } else {
            text_line(event)
        };
        self.shared.enqueue(Entry {
            ns,
            level: level_name(event.metadata().level()),
            line,
        });
    }
}

/// JSON lines on stderr (the journal) instead of `tracing_subscriber::fmt`'s text, for
/// `[logging] json = true`.
#[derive(Debug, Default)]
pub struct JsonStderr;

impl<S: Subscriber> tracing_subscriber::Layer<S> for JsonStderr {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = json_line(event, now_ns());
        line.push('\n');
        // One write per line, so lines of concurrent threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn entry(n: u128) -> Entry {
        Entry {
            ns: n,
            level: "info",
            line: format!("line {n}"),
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let loki = Loki::idle("test", 3);
        let s = &loki.shared;
        for n in 0..5 {
            s.enqueue(entry(n));
        }
        let q: Vec<u128> = s.queue.lock().unwrap().iter().map(|e| e.ns).collect();
        assert_eq!(q, [2, 3, 4]);
        assert_eq!(s.stats.dropped.load(Ordering::Relaxed), 2);
        // A failed batch goes back before newer lines, its oldest dropped for room.
        let batch: Vec<Entry> = s.queue.lock().unwrap().drain(..2).collect();
        s.enqueue(entry(5));
        s.enqueue(entry(6));
        s.requeue(batch);
        let q: Vec<u128> = s.queue.lock().unwrap().iter().map(|e| e.ns).collect();
        assert_eq!(q, [4, 5, 6]);
        assert_eq!(s.stats.dropped.load(Ordering::Relaxed), 4);
        assert!(
            loki.metrics()
                .contains("appliance_loki_dropped_lines_total{unit=\"test\"} 4")
        );
    }

    #[test]
    fn the_push_body_has_one_stream_per_level_with_ns_strings() {
        let labels = BTreeMap::from([("job".to_owned(), "appliance".to_owned())]);
        let mut warn = entry(7);
        warn.level = "warn";
        let body = push_body(&labels, &[entry(5), warn, entry(9)]);
        assert_eq!(
            body,
            json!({"streams": [
                {"stream": {"job": "appliance", "level": "info"},
                 "values": [["5", "line 5"], ["9", "line 9"]]},
                {"stream": {"job": "appliance", "level": "warn"},
                 "values": [["7", "line 7"]]},
            ]})
        );
    }

    #[test]
    fn events_are_queued_only_while_a_url_is_set() {
        let loki = Loki::idle("applianced", 100);
        let mut logging = Logging::default();
        let subscriber = tracing_subscriber::registry().with(loki.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            logging.loki_url = Some(crate::types::HttpUrl::parse("http://127.0.0.1:9/").unwrap());
            loki.configure(&logging, "gw");
            tracing::warn!(peer = "phone", bytes = 42u64, "handshake");
        });
        let t = loki.shared.target.read().unwrap().clone().unwrap();
        assert_eq!(t.url, "http://127.0.0.1:9/loki/api/v1/push");
        assert_eq!(t.labels["host"], "gw");
        assert_eq!(t.labels["unit"], "applianced");
        assert_eq!(t.labels["job"], "appliance");
        let q = loki.shared.queue.lock().unwrap();
        let lines: Vec<(&str, &str)> = q.iter().map(|e| (e.level, e.line.as_str())).collect();
        // The warning; not the line before the URL was set.
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, "warn");
        assert!(
            lines[0].1.ends_with(": handshake peer=\"phone\" bytes=42"),
            "{lines:?}"
        );
        drop(q);
        logging.json = true;
        logging.loki_labels.insert(
            crate::types::LabelName::parse("host").unwrap(),
            "router".into(),
        );
        loki.configure(&logging, "gw");
        let subscriber = tracing_subscriber::registry().with(loki.layer());
        tracing::subscriber::with_default(subscriber, || tracing::error!(code = 7, "boom"));
        let last = loki.shared.queue.lock().unwrap().back().cloned().unwrap();
        let v: Value = serde_json::from_str(&last.line).unwrap();
        assert_eq!(v["message"], "boom");
        assert_eq!(v["code"], 7);
        assert_eq!(v["level"], "error");
        assert_eq!(
            loki.shared.target.read().unwrap().as_ref().unwrap().labels["host"],
            "router"
        );
        // Unset: the queue is emptied and nothing more is queued.
        logging.loki_url = None;
        loki.configure(&logging, "gw");
        assert!(loki.shared.queue.lock().unwrap().is_empty());
    }

    #[test]
    fn the_daemons_take_logging_from_the_active_generation() {
        let dir = tempfile::tempdir().unwrap();
        let (logging, _, problem) = active_logging(dir.path());
        assert_eq!(problem, None);
        assert!(logging.loki_url.is_none());
        let store = crate::store::Store::open(dir.path()).unwrap();
        let n = store
            .commit(include_str!("../tests/valid/full.toml"), "test")
            .unwrap();
        store.activate(n).unwrap();
        let (logging, _, problem) = active_logging(dir.path());
        assert_eq!(problem, None);
        assert!(logging.json);
        assert_eq!(
            logging.loki_url.unwrap().as_url().as_str(),
            "http://192.168.1.20:3100/loki/api/v1/push"
        );
    }
}
