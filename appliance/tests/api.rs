//! The management API over real HTTPS (rustls on both sides, reqwest as the client): login,
//! roles, 401 and 403, session and token expiry, the login rate limit, TOTP, the audit log,
//! that no secret reaches the logs, and that the committed OpenAPI document is current.
//!
//! The backend is an in-memory double of applianced's engine; the accounts, TLS and HTTP
//! stack are the real ones. Time is a `ManualClock` the tests move.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use appliance::accounts::{Accounts, ManualClock, audit, password, totp};
use appliance::api::backend::{
    ApplyReport, Backend, BackendError, DaemonStatus, DnsLogQuery, HistoryEntry, PeerAdd,
    PeerAdded, PlanView, StoredConfig, UpdateInstall,
};
use appliance::api::{self, AppState, tls};
use appliance::model::{ApiUser, Role};
use appliance::types::{Name, PasswordHash, SecretPath};
use reqwest::StatusCode;
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000;
const SESSION_SECS: u64 = 900;
const ADMIN_PW: &str = "alice-Very-secret-1";
const VIEWER_PW: &str = "victor-Very-secret-2";
const TOTP_PW: &str = "tara-Very-secret-3";
/// The RFC 6238 seed, base32.
const TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

/// The control plane, in memory: generations, the active one, a pending confirmation.
#[derive(Debug, Default)]
struct Engine {
    generations: Vec<String>,
    active: Option<u64>,
    pending: Option<u64>,
}

#[derive(Debug, Default)]
struct MemoryBackend(Mutex<Engine>);

impl MemoryBackend {
    fn report(e: &Engine, generation: u64) -> ApplyReport {
        ApplyReport {
            generation,
            plan: PlanView::default(),
            confirm_deadline: e.pending.map(|_| T0 + 120),
        }
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn config_get(&self) -> Result<StoredConfig, BackendError> {
        let e = self.0.lock().unwrap();
        Ok(StoredConfig {
            generation: Some(e.generations.len() as u64),
            active: e.active,
            text: e.generations.last().cloned().unwrap_or_default(),
        })
    }
    async fn config_put(&self, text: String, _comment: String) -> Result<u64, BackendError> {
        let mut e = self.0.lock().unwrap();
        e.generations.push(text);
        Ok(e.generations.len() as u64)
    }
    async fn plan(&self, generation: Option<u64>) -> Result<PlanView, BackendError> {
        let e = self.0.lock().unwrap();
        let n = generation.unwrap_or(e.generations.len() as u64);
        if n == 0 || n > e.generations.len() as u64 {
            return Err(BackendError::NotFound(format!("no generation {n}")));
        }
        Ok(PlanView::default())
    }
    async fn apply(
        &self,
        generation: Option<u64>,
        confirm_secs: Option<u64>,
    ) -> Result<ApplyReport, BackendError> {
        let mut e = self.0.lock().unwrap();
        let n = generation.unwrap_or(e.generations.len() as u64);
        if n == 0 || n > e.generations.len() as u64 {
            return Err(BackendError::NotFound(format!("no generation {n}")));
        }
        e.pending = confirm_secs.map(|_| n);
        e.active = Some(n);
        Ok(Self::report(&e, n))
    }
    async fn confirm(&self) -> Result<ApplyReport, BackendError> {
        let mut e = self.0.lock().unwrap();
        let n = e
            .pending
            .take()
            .ok_or_else(|| BackendError::Conflict("nothing waits for confirmation".into()))?;
        Ok(Self::report(&e, n))
    }
    async fn rollback(&self, generation: Option<u64>) -> Result<ApplyReport, BackendError> {
        let mut e = self.0.lock().unwrap();
        let n = generation.unwrap_or(1);
        if n == 0 || n > e.generations.len() as u64 {
            return Err(BackendError::NotFound(format!("no generation {n}")));
        }
        e.active = Some(n);
        Ok(Self::report(&e, n))
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, BackendError> {
        let e = self.0.lock().unwrap();
        Ok((1..=e.generations.len() as u64)
            .map(|n| HistoryEntry {
                generation: n,
                created: "2027-01-15T08:00:00Z".into(),
                comment: String::new(),
                active: e.active == Some(n),
            })
            .collect())
    }
    async fn status(&self) -> Result<Vec<DaemonStatus>, BackendError> {
        Ok(vec![DaemonStatus {
            name: "netd".into(),
            state: "running".into(),
            generation: self.0.lock().unwrap().active,
            detail: json!({}),
        }])
    }
    async fn dns_stats(&self) -> Result<Value, BackendError> {
        Ok(json!({"queries": 10, "blocked": 3}))
    }
    async fn dns_log(&self, q: DnsLogQuery) -> Result<Value, BackendError> {
        Ok(json!({"limit": q.limit, "entries": []}))
    }
    async fn storage_status(&self) -> Result<Value, BackendError> {
        Err(BackendError::Unavailable {
            daemon: "stored".into(),
            reason: "connection refused".into(),
        })
    }
    async fn wireguard_peer_add(
        &self,
        tunnel: String,
        peer: PeerAdd,
    ) -> Result<PeerAdded, BackendError> {
        Err(BackendError::NotFound(format!(
            "no tunnel {tunnel:?} for peer {:?}",
            peer.name
        )))
    }
    async fn update_status(&self) -> Result<Value, BackendError> {
        Ok(json!({"slot": "a"}))
    }
    async fn update_install(&self, _req: UpdateInstall) -> Result<Value, BackendError> {
        Err(BackendError::Conflict(
            "an update is being installed".into(),
        ))
    }
}

fn user(role: Role, pw: &str, totp_file: Option<&str>) -> ApiUser {
    // A cheap cost keeps debug-built tests fast; the cost is read from the hash.
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    ApiUser {
        role,
        password_hash: PasswordHash::parse(&password::hash_with(pw, params).unwrap()).unwrap(),
        totp_secret_file: totp_file.map(|f| SecretPath::parse(f).unwrap()),
        disabled: false,
    }
}

struct Server {
    base: String,
    client: reqwest::Client,
    clock: Arc<ManualClock>,
    state_dir: PathBuf,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("data")).unwrap();
        let totp_path = root.join("data/tara.totp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&totp_path)
            .unwrap();
        writeln!(f, "{TOTP_SECRET}").unwrap();

        let mut config = appliance::default_config().unwrap();
        config.api.session_timeout = appliance::types::Duration::from_secs(SESSION_SECS);
        for (name, u) in [
            ("alice", user(Role::Admin, ADMIN_PW, None)),
            ("victor", user(Role::Viewer, VIEWER_PW, None)),
            ("tara", user(Role::Admin, TOTP_PW, Some("/data/tara.totp"))),
        ] {
            config.api.users.insert(Name::parse(name).unwrap(), u);
        }
        let backend = MemoryBackend::default();
        backend
            .0
            .lock()
            .unwrap()
            .generations
            .push(toml::to_string(&config).unwrap());

        let state_dir = dir.path().join("api");
        let clock = Arc::new(ManualClock::new(T0));
        let accounts = Accounts::open(&state_dir, &config.api, clock.clone())
            .unwrap()
            .with_secrets_root(&root);
        let identity = tls::load_or_create(
            &state_dir,
            &["localhost".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = AppState {
            backend: Arc::new(backend),
            accounts: Arc::new(accounts),
        };
        tokio::spawn(api::serve(
            vec![listener],
            identity.config.clone(),
            state,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            base: format!("https://localhost:{port}/api/v1"),
            client: common::client_trusting(&state_dir.join(tls::CERT_FILE)),
            clock,
            state_dir,
            _dir: dir,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login_as(&self, user: &str, pw: &str, totp: Option<&str>) -> reqwest::Response {
        self.client
            .post(self.url("/auth/login"))
            .json(&json!({"user": user, "password": pw, "totp": totp}))
            .send()
            .await
            .unwrap()
    }

    async fn token(&self, user: &str, pw: &str) -> String {
        let r = self.login_as(user, pw, None).await;
        assert_eq!(r.status(), StatusCode::OK, "login of {user}");
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

use std::os::unix::fs::OpenOptionsExt as _;

async fn error_code(r: reqwest::Response) -> String {
    r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_get_401_and_roles_are_enforced() {
    let s = Server::start().await;
    let r = s.client.get(s.url("/config")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(r).await, "unauthenticated");
    let r = s.get("/status", "not-a-token").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = s.login_as("alice", "wrong-password", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "bad_credentials");

    let admin = s.token("alice", ADMIN_PW).await;
    let viewer = s.token("victor", VIEWER_PW).await;

    // Admins see the text; viewers the config without hashes or secret paths.
    let a: Value = s.get("/config", &admin).await.json().await.unwrap();
    let text = a["text"].as_str().unwrap().to_owned();
    assert!(text.contains("$argon2id$"));
    let v = s.get("/config", &viewer).await;
    assert_eq!(v.status(), StatusCode::OK);
    let v = v.text().await.unwrap();
    assert!(!v.contains("argon2id") && !v.contains("tara.totp"), "{v}");
    assert!(v.contains("<redacted>") && !v.contains("\"text\""));

    // Viewers read but do not change.
    for path in ["/status", "/config/history", "/dns/stats", "/update/status"] {
        assert_eq!(
            s.get(path, &viewer).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    let log: Value = s
        .get("/dns/log?limit=5", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(log["limit"], 5);
    let put = json!({"text": text, "comment": "same again"});
    for (method, path, body) in [
        (reqwest::Method::PUT, "/config", put.clone()),
        (reqwest::Method::POST, "/config/apply", json!({})),
        (reqwest::Method::POST, "/config/confirm", json!({})),
        (reqwest::Method::POST, "/config/rollback", json!({})),
        (reqwest::Method::POST, "/config/plan", json!({})),
        (
            reqwest::Method::POST,
            "/auth/tokens",
            json!({"name": "x", "role": "viewer", "expires_in": 60}),
        ),
        (
            reqwest::Method::POST,
            "/update/install",
            json!({"url": "https://example.net/b"}),
        ),
    ] {
        let r = s.send(method, path, &viewer, body).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(error_code(r).await, "forbidden");
    }

    // Admins change: put a new generation, apply it with a window, confirm.
    let changed = text.replace("session_timeout = \"15m\"", "session_timeout = \"20m\"");
    assert_ne!(changed, text, "the test edits the session timeout");
    let r = s
        .send(
            reqwest::Method::PUT,
            "/config",
            &admin,
            json!({"text": changed, "comment": "longer sessions"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let put: Value = r.json().await.unwrap();
    assert_eq!(put["generation"], 2);
    assert_eq!(put["plan"]["changes"][0]["path"], "api.session_timeout");
    let r = s
        .send(
            reqwest::Method::POST,
            "/config/apply",
            &admin,
            json!({"confirm_seconds": 120}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["confirm_deadline"],
        T0 + 120
    );
    let r = s
        .send(reqwest::Method::POST, "/config/confirm", &admin, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Errors keep their own statuses.
    let r = s
        .send(reqwest::Method::POST, "/config/confirm", &admin, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = s
        .send(
            reqwest::Method::POST,
            "/config/rollback",
            &admin,
            json!({"generation": 9}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s.get("/storage/status", &admin).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("systemctl status stored"));
    let r = s
        .send(
            reqwest::Method::PUT,
            "/config",
            &admin,
            json!({"text": "[vlans.x]\nid = 5000\n"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad: Value = r.json().await.unwrap();
    assert_eq!(bad["error"], "invalid_config");
    assert!(
        bad["details"].as_array().is_some_and(|d| !d.is_empty()),
        "{bad}"
    );
    let r = s
        .send(reqwest::Method::PUT, "/config", &admin, json!({"txt": "x"}))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Every change is in the audit log, with the user, generation and key paths.
    let log = audit::read(&s.state_dir).unwrap();
    let actions: Vec<_> = log
        .iter()
        .map(|e| (e.action.as_str(), e.user.as_str(), e.generation))
        .collect();
    assert_eq!(
        actions,
        [
            ("config.put", "alice", Some(2)),
            ("config.apply", "alice", Some(2)),
            ("config.confirm", "alice", Some(2)),
        ]
    );
    assert_eq!(log[0].summary, ["~ api.session_timeout"]);
    assert_eq!(log[0].time, T0);

    // Logout ends the session.
    let r = s
        .send(reqwest::Method::POST, "/auth/logout", &admin, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("/status", &admin).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_api_tokens_expire() {
    let s = Server::start().await;
    let admin = s.token("alice", ADMIN_PW).await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/auth/tokens",
            &admin,
            json!({"name": "ci", "role": "admin", "expires_in": 3600}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let ci: Value = r.json().await.unwrap();
    let ci_token = ci["token"].as_str().unwrap().to_owned();
    assert!(ci_token.starts_with("appl_"));
    assert_eq!(ci["expires"], T0 + 3600);
    let r = s
        .send(
            reqwest::Method::POST,
            "/auth/tokens",
            &admin,
            json!({"name": "ro", "role": "viewer", "expires_in": 60}),
        )
        .await;
    let ro_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .send(
            reqwest::Method::POST,
            "/auth/tokens",
            &admin,
            json!({"name": "ro", "role": "viewer", "expires_in": 60}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let listed: Value = s.get("/auth/tokens", &admin).await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&ci_token),
        "listing never shows a secret"
    );

    // A viewer token reads but may not apply; the admin token may.
    assert_eq!(s.get("/status", &ro_token).await.status(), StatusCode::OK);
    let r = s
        .send(reqwest::Method::POST, "/config/apply", &ro_token, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .send(reqwest::Method::POST, "/config/apply", &ci_token, json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    s.clock.advance(60);
    let r = s.get("/status", &ro_token).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "expired");
    assert_eq!(s.get("/status", &admin).await.status(), StatusCode::OK);

    s.clock.advance(SESSION_SECS - 60);
    let r = s.get("/status", &admin).await;
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the session lasted session_timeout"
    );
    assert_eq!(error_code(r).await, "expired");
    assert_eq!(s.get("/status", &ci_token).await.status(), StatusCode::OK);

    let r = s
        .send(
            reqwest::Method::DELETE,
            "/auth/tokens/ci",
            &ci_token,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.get("/status", &ci_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_rate_limited_with_retry_after() {
    let s = Server::start().await;
    for i in 0..5 {
        let r = s.login_as("alice", "guess-guess", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // Now even the right password waits.
    let r = s.login_as("alice", ADMIN_PW, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_code(r).await, "rate_limited");
    // The address is limited too: another user from here waits as well.
    let r = s.login_as("victor", VIEWER_PW, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    s.clock.advance(1);
    assert_eq!(
        s.login_as("alice", ADMIN_PW, None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_accounts_need_the_current_code() {
    let s = Server::start().await;
    let r = s.login_as("tara", TOTP_PW, None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(r).await, "totp_required");
    let secret = totp::Secret::from_base32(TOTP_SECRET).unwrap();
    let code = format!("{:06}", secret.code_at(T0, 6));
    let wrong = format!("{:06}", (secret.code_at(T0, 6) + 1) % 1_000_000);
    let r = s.login_as("tara", TOTP_PW, Some(&wrong)).await;
    assert_eq!(error_code(r).await, "bad_totp");
    let r = s.login_as("tara", TOTP_PW, Some(&code)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.login_as("tara", TOTP_PW, Some(&code)).await;
    assert_eq!(error_code(r).await, "bad_totp", "a code is good once");
}

/// Captures everything logged, at every level, from every thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_token_or_totp_secret_is_logged() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(capture.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();
    let s = Server::start().await;
    let secret = totp::Secret::from_base32(TOTP_SECRET).unwrap();
    let code = format!("{:06}", secret.code_at(T0, 6));
    let _ = s.login_as("alice", "wrong-Password-9", None).await;
    let _ = s.login_as("nobody", ADMIN_PW, None).await;
    let admin = s.token("alice", ADMIN_PW).await;
    let r = s.login_as("tara", TOTP_PW, Some(&code)).await;
    let tara = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .send(
            reqwest::Method::POST,
            "/auth/tokens",
            &admin,
            json!({"name": "ci", "role": "admin", "expires_in": 60}),
        )
        .await;
    let api_token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let _ = s.get("/status", &api_token).await;
    let _ = s.get("/status", &tara).await;

    let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("logged in") && logged.contains("login refused"),
        "the capture works: {logged}"
    );
    for secret in [
        ADMIN_PW,
        "wrong-Password-9",
        TOTP_PW,
        TOTP_SECRET,
        &code,
        &admin,
        &tara,
        &api_token,
    ] {
        assert!(!logged.contains(secret), "{secret:?} was logged:\n{logged}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_committed_openapi_document_is_current() {
    let generated = api::openapi_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("APPLIANCE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "appliance/openapi.json is stale: run `cargo xtask schema` (or \
         APPLIANCE_BLESS=1 cargo test -p appliance --test api openapi) and commit it"
    );
    // The server serves the same document, without authentication.
    let s = Server::start().await;
    let served = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.text().await.unwrap(), generated);
    let doc: Value = serde_json::from_str(&generated).unwrap();
    for p in [
        "/api/v1/auth/login",
        "/api/v1/config",
        "/api/v1/config/apply",
        "/api/v1/wireguard/{tunnel}/peers",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} documented");
    }
}

#[test]
fn applctl_passwd_prints_a_hash_of_the_password_read_from_stdin() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_applctl"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a-Long-passphrase\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(PasswordHash::parse(hash).is_ok(), "{hash}");
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(password::verify(hash, "a-Long-passphrase"));

    let out = Command::new(env!("CARGO_BIN_EXE_applctl"))
        .arg("passwd")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an empty password is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[test]
fn applctl_fingerprint_shows_the_certificates_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let id = tls::load_or_create(dir.path(), &["gw.home.arpa".into()], &[]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_applctl"))
        .args(["fingerprint", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("SHA-256 {}", id.fingerprint)
    );
}
