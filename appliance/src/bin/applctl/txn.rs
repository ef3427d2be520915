//! `applctl apply | confirm | rollback | history | status`: config transactions, run by
//! applianced. Locally over its Unix socket (root only); the HTTPS transport with a token
//! (for use from elsewhere) plugs in as another [`Transport`].

use std::path::PathBuf;
use std::time::Duration;

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
}

/// How applctl reaches applianced: a request, its status and its JSON answer.
pub trait Transport {
    fn request(
        &self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CliError>;
}

/// applianced's Unix socket: blocking, one request per connection (applctl is synchronous
/// and makes one request; a runtime would be dead weight).
pub struct UnixTransport {
    pub socket: PathBuf,
}

impl Transport for UnixTransport {
    fn request(
        &self,
        method: &str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), CliError> {
        let r = super::socket::request("applianced", &self.socket, TIMEOUT, method, target, body)?;
        let status = r.status;
        let v = serde_json::from_slice(&r.body).map_err(|e| {
            CliError::Failed(format!(
                "applianced answered {status} with a body that is not JSON: {e}"
            ))
        })?;
        Ok((status, v))
    }
}

/// A window like `120s`, `2m` or `1m30s`.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let d = appliance::types::Duration::parse(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 {
        return Err("a confirm window of 0 s cannot be met".into());
    }
    Ok(d.as_secs())
}

fn call(
    t: &dyn Transport,
    method: &str,
    target: &str,
    body: Option<&Value>,
) -> Result<Value, CliError> {
    let (status, v) = t.request(method, target, body)?;
    if status == 200 {
        return Ok(v);
    }
    let msg = v
        .get("error")
        .and_then(Value::as_str)
        .map_or_else(|| v.to_string(), str::to_owned);
    if let Some(report) = v.get("report") {
        eprint!("{}", render_report(report));
    }
    // 400, 409 and 422: the request does not fit (bad input, a change awaits a confirm).
    if matches!(status, 400 | 404 | 409 | 422) {
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
    let t = UnixTransport {
        socket: args.socket.clone(),
    };
    let body = json!({ "config": text, "comment": comment, "confirm_seconds": confirm });
    let r = call(&t, "POST", "/v1/apply", Some(&body))?;
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
    let t = UnixTransport {
        socket: args.socket.clone(),
    };
    let r = call(&t, "POST", "/v1/confirm", None)?;
    print(args.json, &r, |r| {
        format!(
            "Generation {} confirmed; it stays.\n",
            r.get("confirmed").and_then(Value::as_u64).unwrap_or(0)
        )
    });
    Ok(())
}

pub fn rollback(args: &TxnArgs, generation: Option<u64>) -> Result<(), CliError> {
    let t = UnixTransport {
        socket: args.socket.clone(),
    };
    let r = call(
        &t,
        "POST",
        "/v1/rollback",
        Some(&json!({ "generation": generation })),
    )?;
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
    let t = UnixTransport {
        socket: args.socket.clone(),
    };
    let r = call(&t, "GET", "/v1/history", None)?;
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
    let t = UnixTransport {
        socket: args.socket.clone(),
    };
    let r = call(&t, "GET", "/v1/status", None)?;
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
