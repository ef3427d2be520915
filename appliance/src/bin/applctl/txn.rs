//! `applctl apply | confirm | rollback | history | status` (and `plan --remote`): config
//! transactions, run by applianced. Locally over its Unix socket (root only: the socket is
//! 0600), or from elsewhere over its HTTPS API with an API token, the self-signed
//! certificate pinned by its fingerprint. Both are a [`Transport`]; the HTTPS one turns the
//! API's answers into the socket's shapes, so the output (and `--json`) is the same.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::CliError;

/// Long enough for every daemon to apply a generation and, on failure, revert it.
const TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct TxnArgs {
    /// applianced's control socket.
    #[arg(long, env = "APPLIANCED_SOCKET", default_value = appliance::txn::http::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the JSON applianced answers instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// Where applianced's HTTPS API is and how to prove who we are to it.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Talk to applianced's HTTPS API, like https://192.168.1.1:443, instead of its Unix
    /// socket.
    #[arg(long, env = "APPLCTL_REMOTE")]
    pub remote: Option<url::Url>,
    /// A file whose first line is an API token (POST /api/v1/auth/tokens); or put the token
    /// itself in APPLCTL_TOKEN.
    #[arg(long, env = "APPLCTL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The SHA-256 fingerprint of the API's certificate, as the appliance's console and
    /// `applctl fingerprint` on it show it (AB:CD:… or plain hex).
    #[arg(long, env = "APPLCTL_FINGERPRINT")]
    pub fingerprint: Option<String>,
}

impl RemoteArgs {
    /// The HTTPS transport when `--remote` is given.
    pub fn https(&self) -> Result<Option<HttpsTransport>, CliError> {
        let Some(url) = &self.remote else {
            if self.token_file.is_some() || self.fingerprint.is_some() {
                return Err(CliError::Invalid(
                    "--token-file and --fingerprint need --remote https://HOST:PORT".into(),
                ));
            }
            return Ok(None);
        };
        HttpsTransport::new(url, self).map(Some)
    }
}

/// How applctl reaches applianced: one method per operation, each answering in the shapes
/// of applianced's Unix socket (see `appliance::txn::http`).
pub trait Transport {
    fn status(&self) -> Result<Value, CliError>;
    /// netd's own status document, passed through by applianced.
    fn net_status(&self) -> Result<Value, CliError>;
    fn history(&self) -> Result<Value, CliError>;
    fn apply(&self, text: &str, comment: &str, confirm: Option<u64>) -> Result<Value, CliError>;
    fn confirm(&self) -> Result<Value, CliError>;
    fn rollback(&self, generation: Option<u64>) -> Result<Value, CliError>;
}

/// applianced's Unix socket: blocking, one request per connection (applctl is synchronous
/// and makes one request; a runtime would be dead weight).
pub struct UnixTransport {
    pub socket: PathBuf,
}

impl UnixTransport {
    fn call(&self, method: &str, target: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let r = super::socket::request("applianced", &self.socket, TIMEOUT, method, target, body)?;
        let status = r.status;
        let v = serde_json::from_slice(&r.body).map_err(|e| {
            CliError::Failed(format!(
                "applianced answered {status} with a body that is not JSON: {e}"
            ))
        })?;
        check(status, v)
    }
}

impl Transport for UnixTransport {
    fn status(&self) -> Result<Value, CliError> {
        self.call("GET", "/v1/status", None)
    }
    fn net_status(&self) -> Result<Value, CliError> {
        self.call("GET", "/v1/status/netd", None)
    }
    fn history(&self) -> Result<Value, CliError> {
        self.call("GET", "/v1/history", None)
    }
    fn apply(&self, text: &str, comment: &str, confirm: Option<u64>) -> Result<Value, CliError> {
        let body = json!({ "config": text, "comment": comment, "confirm_seconds": confirm });
        self.call("POST", "/v1/apply", Some(&body))
    }
    fn confirm(&self) -> Result<Value, CliError> {
        self.call("POST", "/v1/confirm", None)
    }
    fn rollback(&self, generation: Option<u64>) -> Result<Value, CliError> {
        self.call(
            "POST",
            "/v1/rollback",
            Some(&json!({ "generation": generation })),
        )
    }
}

/// applianced's HTTPS API (`/api/v1`), blocking, one connection per request.
pub struct HttpsTransport {
    host: String,
    port: u16,
    /// The URL's path, without a trailing slash (a reverse proxy may put the API under one).
    prefix: String,
    token: String,
    tls: Arc<rustls::ClientConfig>,
}

impl HttpsTransport {
    fn new(url: &url::Url, args: &RemoteArgs) -> Result<Self, CliError> {
        if url.scheme() != "https" {
            return Err(CliError::Invalid(format!(
                "--remote {url}: the API is served over https only"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| CliError::Invalid(format!("--remote {url} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let pin = args.fingerprint.as_deref().ok_or_else(|| {
            CliError::Invalid(
                "--remote needs --fingerprint SHA256 (or APPLCTL_FINGERPRINT): the API's \
                 certificate is self-signed; read its fingerprint on the appliance's console \
                 or with `applctl fingerprint` there"
                    .into(),
            )
        })?;
        let fingerprint = appliance::tlsgen::parse_sha256(pin).ok_or_else(|| {
            CliError::Invalid(format!(
                "--fingerprint {pin:?} is not a SHA-256 fingerprint (32 bytes of hex, like AB:CD:…)"
            ))
        })?;
        let token = read_token(args.token_file.as_ref())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| CliError::Failed(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::fingerprint::pinned(
                fingerprint,
                provider,
            )))
            .with_no_client_auth();
        Ok(Self {
            host,
            port: url.port_or_known_default().unwrap_or(443),
            prefix: url.path().trim_end_matches('/').to_owned(),
            token,
            tls: Arc::new(tls),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            CliError::Failed(format!(
                "{what} applianced's API at {}:{}: {e}",
                self.host, self.port
            ))
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| fail("bad host name for", &e))?;
        let conn = rustls::ClientConnection::new(Arc::clone(&self.tls), name)
            .map_err(|e| fail("cannot start TLS with", &e))?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .map_err(|e| fail("cannot connect to", &e))?;
        tcp.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| fail("cannot use the connection to", &e))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        let target = format!("{}/api/v1{path}", self.prefix);
        let auth = [format!("Authorization: Bearer {}", self.token)];
        let raw = super::socket::exchange(&mut stream, &self.host, &auth, method, &target, body)
            .map_err(|e| fail("cannot talk to", &e))?;
        let r = super::socket::parse_response(&raw)
            .ok_or_else(|| CliError::Failed("applianced's API sent a malformed response".into()))?;
        let status = r.status;
        let v = serde_json::from_slice(&r.body).map_err(|e| {
            CliError::Failed(format!(
                "applianced's API answered {status} with a body that is not JSON: {e}"
            ))
        })?;
        check(status, v)
    }

    /// The stored config's text (admins only), the base `applctl plan --remote` compares a
    /// file with.
    pub fn config_text(&self) -> Result<(String, String), CliError> {
        let v = self.call("GET", "/config", None)?;
        let text = v.get("text").and_then(Value::as_str).ok_or_else(|| {
            CliError::Failed(
                "the API did not send the config's text: planning needs an admin token".into(),
            )
        })?;
        let name = match v.get("generation").and_then(Value::as_u64) {
            Some(n) => format!("generation {n} on the appliance"),
            None => "the appliance's built-in default".to_owned(),
        };
        Ok((text.to_owned(), name))
    }

    fn active(&self) -> Result<Option<u64>, CliError> {
        Ok(self
            .history()?
            .get("generations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|g| g.get("active").and_then(Value::as_bool) == Some(true))
            .and_then(|g| g.get("number").and_then(Value::as_u64)))
    }
}

/// The API's ApplyReport in the socket's report shape.
fn report_from_api(from: u64, r: &Value) -> Value {
    let active = r.get("generation").and_then(Value::as_u64).unwrap_or(0);
    let changes: Vec<Value> = r
        .pointer("/plan/changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("path").cloned())
        .collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let deadline = r.get("confirm_deadline").and_then(Value::as_u64);
    json!({
        "from": from,
        "to": active,
        "active": active,
        "changes": changes,
        "confirm_deadline_unix": deadline,
        "confirm_seconds": deadline.map(|d| d.saturating_sub(now)),
    })
}

impl Transport for HttpsTransport {
    fn status(&self) -> Result<Value, CliError> {
        let list = self.call("GET", "/status", None)?;
        let (mut active, mut pending) = (Value::Null, Value::Null);
        let mut daemons = Vec::new();
        for d in list.as_array().into_iter().flatten() {
            if d.get("name").and_then(Value::as_str) == Some("applianced") {
                active = d.get("generation").cloned().unwrap_or(Value::Null);
                pending = d.pointer("/detail/pending").cloned().unwrap_or(Value::Null);
            } else {
                daemons.push(d.get("detail").cloned().unwrap_or(Value::Null));
            }
        }
        Ok(json!({ "active": active, "pending": pending, "daemons": daemons }))
    }

    fn net_status(&self) -> Result<Value, CliError> {
        self.call("GET", "/network/status", None)
    }

    fn history(&self) -> Result<Value, CliError> {
        let list = self.call("GET", "/config/history", None)?;
        let generations: Vec<Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                json!({
                    "number": g.get("generation"),
                    "created": g.get("created"),
                    "comment": g.get("comment"),
                    "active": g.get("active"),
                })
            })
            .collect();
        Ok(json!({ "generations": generations }))
    }

    fn apply(&self, text: &str, comment: &str, confirm: Option<u64>) -> Result<Value, CliError> {
        let from = self.active()?.unwrap_or(0);
        // Stored, then applied by number: a generation another admin stores in between is
        // not the one applied.
        let put = self.call(
            "PUT",
            "/config",
            Some(&json!({ "text": text, "comment": comment })),
        )?;
        let generation = put.get("generation").and_then(Value::as_u64);
        let r = self.call(
            "POST",
            "/config/apply",
            Some(&json!({ "generation": generation, "confirm_seconds": confirm })),
        )?;
        Ok(report_from_api(from, &r))
    }

    fn confirm(&self) -> Result<Value, CliError> {
        let r = self.call("POST", "/config/confirm", Some(&json!({})))?;
        Ok(json!({ "confirmed": r.get("generation") }))
    }

    fn rollback(&self, generation: Option<u64>) -> Result<Value, CliError> {
        let from = self.active()?.unwrap_or(0);
        let r = self.call(
            "POST",
            "/config/rollback",
            Some(&json!({ "generation": generation })),
        )?;
        Ok(report_from_api(from, &r))
    }
}

/// The token from `--token-file` or APPLCTL_TOKEN; never echoed in an error.
fn read_token(file: Option<&PathBuf>) -> Result<String, CliError> {
    let token = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| CliError::Failed(format!("reading the token file {}: {e}", f.display())))?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        None => std::env::var("APPLCTL_TOKEN")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    };
    if token.is_empty() {
        return Err(CliError::Invalid(
            "--remote needs an API token: --token-file FILE or APPLCTL_TOKEN (an admin makes \
             one with POST /api/v1/auth/tokens)"
                .into(),
        ));
    }
    // A header injection would otherwise be possible from a file with odd bytes.
    if token.chars().any(|c| c.is_control()) {
        return Err(CliError::Invalid(
            "the API token holds control characters; check the token file".into(),
        ));
    }
    Ok(token)
}

/// The config applianced stores, for `applctl plan --remote` to compare a file with.
pub fn remote_base(t: &HttpsTransport) -> Result<(appliance::Config, String), CliError> {
    let (text, name) = t.config_text()?;
    let cfg = appliance::load_str(&text).map_err(|d| {
        CliError::Failed(format!(
            "{name} does not validate with this applctl:\n{}",
            d.render(&text, &name, false)
        ))
    })?;
    Ok((cfg, name))
}

/// The transport the arguments ask for.
pub fn transport(args: &TxnArgs) -> Result<Box<dyn Transport>, CliError> {
    Ok(match args.remote.https()? {
        Some(t) => Box::new(t),
        None => Box::new(UnixTransport {
            socket: args.socket.clone(),
        }),
    })
}

/// A window like `120s`, `2m` or `1m30s`.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let d = appliance::types::Duration::parse(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("a confirm window of 0 s cannot be met".into());
    }
    Ok(d.as_secs())
}

/// A 200 answer's JSON, or the error it carries (the socket's `error` text or the API's
/// `message`) with the exit code its status means.
fn check(status: u16, v: Value) -> Result<Value, CliError> {
    if status == 200 {
        return Ok(v);
    }
    let msg = v
        .get("message")
        .or_else(|| v.get("error"))
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_owned);
    if let Some(report) = v.get("report") {
        eprint!("{}", render_report(report));
    }
    // 400, 409 and 422: the request does not fit (bad input, a change awaits a confirm).
    // 401 and 403: the token is wrong or lacks the admin role; the user must act.
    if matches!(status, 400 | 401 | 403 | 404 | 409 | 422) {
        Err(CliError::Invalid(msg))
    } else {
        Err(CliError::Failed(msg))
    }
}

fn print(json: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print!("{}", text(v));
    }
}

/// A transaction's report as lines a person reads.
fn render_report(r: &Value) -> String {
    let mut out = String::new();
    let num = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    if let Some(steps) = r.get("steps").and_then(Value::as_array) {
        for s in steps {
            let f = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
            out.push_str(&format!(
                "  {:<7} {:<6} generation {:<4} {}",
                f("action"),
                f("daemon"),
                s.get("generation").and_then(Value::as_u64).unwrap_or(0),
                f("outcome")
            ));
            if let Some(reason) = s.get("reason").and_then(Value::as_str) {
                out.push_str(&format!(": {reason}"));
            }
            out.push('\n');
            for a in s
                .get("actions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push_str(&format!("          {}\n", a.as_str().unwrap_or("")));
            }
        }
    }
    // Over HTTPS the API reports the changed key paths instead of per-daemon steps.
    for c in r
        .get("changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!("  changed {}\n", c.as_str().unwrap_or("?")));
    }
    if let Some(ms) = r.get("revert_ms").and_then(Value::as_u64) {
        out.push_str(&format!(
            "Reverted to generation {} in {ms} ms.\n",
            num("from").min(num("to"))
        ));
    }
    out
}

pub fn apply(
    args: &TxnArgs,
    text: String,
    name: &str,
    confirm: Option<u64>,
    comment: &str,
) -> Result<(), CliError> {
    let r = transport(args)?.apply(&text, comment, confirm)?;
    print(args.json, &r, |r| {
        let mut out = render_report(r);
        let (from, active) = (
            r.get("from").and_then(Value::as_u64).unwrap_or(0),
            r.get("active").and_then(Value::as_u64).unwrap_or(0),
        );
        if from == active {
            out.push_str(&format!(
                "{name}: no changes; generation {active} stays active.\n"
            ));
            return out;
        }
        out.push_str(&format!(
            "{name} is generation {active} (active; was {from}).\n"
        ));
        for s in r
            .get("skipped")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!(
                "warning: {} is not running; it loads generation {active} when it starts.\n",
                s.as_str().unwrap_or("?")
            ));
        }
        if let Some(secs) = r.get("confirm_seconds").and_then(Value::as_u64) {
            out.push_str(&format!(
                "Run `applctl confirm` within {secs} s to keep it, or it reverts to generation {from}.\n"
            ));
        }
        out
    });
    Ok(())
}

pub fn confirm(args: &TxnArgs) -> Result<(), CliError> {
    let r = transport(args)?.confirm()?;
    print(args.json, &r, |r| {
        format!(
            "Generation {} confirmed; it stays.\n",
            r.get("confirmed").and_then(Value::as_u64).unwrap_or(0)
        )
    });
    Ok(())
}

pub fn rollback(args: &TxnArgs, generation: Option<u64>) -> Result<(), CliError> {
    let r = transport(args)?.rollback(generation)?;
    print(args.json, &r, |r| {
        format!(
            "{}Generation {} is active.\n",
            render_report(r),
            r.get("active").and_then(Value::as_u64).unwrap_or(0)
        )
    });
    Ok(())
}

pub fn history(args: &TxnArgs) -> Result<(), CliError> {
    let r = transport(args)?.history()?;
    print(args.json, &r, |r| {
        let mut out = String::new();
        for g in r
            .get("generations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mark = if g.get("active").and_then(Value::as_bool) == Some(true) {
                "*"
            } else {
                " "
            };
            out.push_str(&format!(
                "{mark} {:>6}  {}  {}\n",
                g.get("number").and_then(Value::as_u64).unwrap_or(0),
                g.get("created").and_then(Value::as_str).unwrap_or(""),
                g.get("comment").and_then(Value::as_str).unwrap_or("")
            ));
        }
        out
    });
    Ok(())
}

pub fn status(args: &TxnArgs) -> Result<(), CliError> {
    let r = transport(args)?.status()?;
    print(args.json, &r, |r| {
        let mut out = match r.get("active").and_then(Value::as_u64) {
            Some(n) => format!("Active generation: {n}\n"),
            None => "Active generation: none (the built-in default)\n".into(),
        };
        if let Some(p) = r.get("pending").filter(|p| !p.is_null()) {
            let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "Pending: generation {} reverts to {} in {} s unless `applctl confirm`\n",
                n("generation"),
                n("previous"),
                n("seconds_left")
            ));
        }
        for d in r
            .get("daemons")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = d.get("daemon").and_then(Value::as_str).unwrap_or("?");
            if d.get("running").and_then(Value::as_bool) == Some(true) {
                let g = d.pointer("/status/generation").and_then(Value::as_u64);
                out.push_str(&format!(
                    "  {name:<7} running, generation {}\n",
                    g.map_or_else(|| "?".into(), |g| g.to_string())
                ));
            } else {
                out.push_str(&format!(
                    "  {name:<7} {}\n",
                    d.get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("not running")
                ));
            }
        }
        out
    });
    Ok(())
}

/// `applctl status net`: netd's links, leases, WireGuard peers and rule counters.
pub fn net_status(args: &TxnArgs) -> Result<(), CliError> {
    let r = transport(args)?.net_status()?;
    print(args.json, &r, |r| {
        super::status::render_net(r, super::status::now())
    });
    Ok(())
}
