//! `applctl dns`: talks to dnsd's control socket.
//!
//! Requests go through applctl's blocking socket client (`socket.rs`), shared with the
//! transaction commands.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::CliError;
use super::socket::{enc, json_of, request};

/// dnsd's control socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/dnsd.sock";
/// Every request is answered quickly or dnsd is stuck.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// dnsd's control socket.
    #[arg(long, global = true, env = "DNSD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the JSON dnsd answers instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: DnsCommand,
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Version, uptime, lists in use and pauses.
    Status,
    /// Totals, blocked share, top domains, blocked domains and clients, upstream latency.
    Stats {
        /// How many entries of each top list.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// The newest queries from the query log.
    Log {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only queries from this client.
        #[arg(long)]
        client: Option<IpAddr>,
        /// Only this domain and the names under it.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Pause blocking for MINUTES, for every client or one group.
    Pause {
        minutes: u64,
        #[arg(long)]
        group: Option<String>,
    },
    /// End a pause early.
    Resume {
        #[arg(long)]
        group: Option<String>,
    },
    /// Say whether DOMAIN is blocked, and by which list and rule (or why not).
    Check {
        domain: String,
        /// Decide for this client's group (default: a client in no group).
        #[arg(long)]
        client: Option<IpAddr>,
    },
    /// Re-read the config and the stored block lists.
    Reload,
}

pub fn run(args: &DnsArgs) -> Result<(), CliError> {
    let sock = args.socket.as_path();
    let (method, target, body) = match &args.command {
        DnsCommand::Status => ("GET", "/status".to_owned(), None),
        DnsCommand::Stats { top } => ("GET", format!("/stats?top={top}"), None),
        DnsCommand::Log {
            limit,
            client,
            domain,
        } => {
            let mut t = format!("/log?limit={limit}");
            if let Some(c) = client {
                t.push_str(&format!("&client={}", enc(&c.to_string())));
            }
            if let Some(d) = domain {
                t.push_str(&format!("&domain={}", enc(d)));
            }
            ("GET", t, None)
        }
        DnsCommand::Pause { minutes, group } => (
            "POST",
            "/pause".to_owned(),
            Some(json!({ "minutes": minutes, "group": group })),
        ),
        DnsCommand::Resume { group } => (
            "POST",
            "/resume".to_owned(),
            Some(json!({ "group": group })),
        ),
        DnsCommand::Check { domain, client } => {
            let mut t = format!("/check?name={}", enc(domain));
            if let Some(c) = client {
                t.push_str(&format!("&client={}", enc(&c.to_string())));
            }
            ("GET", t, None)
        }
        DnsCommand::Reload => ("POST", "/reload".to_owned(), None),
    };
    let v = json_of(
        "dnsd",
        request("dnsd", sock, TIMEOUT, method, &target, body.as_ref())?,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print!("{}", human(&args.command, &v));
    Ok(())
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn ms(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_f64)
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.1} ms"))
}

fn top_table(out: &mut String, title: &str, v: &Value, key: &str) {
    out.push_str(&format!("\n{title}:\n"));
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        out.push_str("  (none yet)\n");
    }
    for r in rows {
        out.push_str(&format!("  {:>8}  {}\n", n(&r, "count"), s(&r, key)));
    }
}

fn human(cmd: &DnsCommand, v: &Value) -> String {
    let mut out = String::new();
    match cmd {
        DnsCommand::Status => {
            out.push_str(&format!(
                "dnsd {}, up {} s, listening on {}\n",
                s(v, "version"),
                n(v, "uptime_s"),
                v["listen"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            ));
            for l in v["lists"].as_array().into_iter().flatten() {
                out.push_str(&format!("list {}: {} rules\n", s(l, "name"), n(l, "rules")));
            }
            for p in v["pauses"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "blocking paused for {} for {} more s\n",
                    p["group"].as_str().unwrap_or("every group"),
                    n(p, "remaining_s")
                ));
            }
            match v.get("query_log") {
                Some(l) if !l.is_null() => out.push_str(&format!(
                    "query log {}: {} of {} records\n",
                    s(l, "path"),
                    n(l, "records"),
                    n(l, "capacity")
                )),
                _ => out.push_str("query log off\n"),
            }
        }
        DnsCommand::Stats { .. } => {
            let q = &v["queries"];
            out.push_str(&format!(
                "queries {}: blocked {} ({:.1}%), cached {}, forwarded {}, local {}, stale {}, failed {}, rejected {}\n",
                n(q, "total"),
                n(q, "blocked"),
                v["blocked_share"].as_f64().unwrap_or(0.0) * 100.0,
                n(q, "cached"),
                n(q, "forwarded"),
                n(q, "local"),
                n(q, "stale"),
                n(q, "failed"),
                n(q, "rejected"),
            ));
            top_table(&mut out, "Top domains", &v["top_domains"], "name");
            top_table(&mut out, "Top blocked", &v["top_blocked"], "name");
            top_table(&mut out, "Top clients", &v["top_clients"], "client");
            out.push_str("\nUpstreams:\n");
            for u in v["upstreams"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  {}: {} answers, {} failures, p50 {}, p99 {}\n",
                    s(u, "upstream"),
                    n(u, "answers"),
                    n(u, "failures"),
                    ms(u, "latency_p50_ms"),
                    ms(u, "latency_p99_ms"),
                ));
            }
        }
        DnsCommand::Log { .. } => {
            for r in v["records"].as_array().into_iter().flatten() {
                let secs = n(r, "time_ms") / 1000;
                let how = match s(r, "outcome") {
                    "blocked" => format!("blocked by {} of {}", s(r, "rule"), s(r, "source")),
                    "forwarded" => format!("forwarded to {}", s(r, "upstream")),
                    other => other.to_owned(),
                };
                out.push_str(&format!(
                    "{}  {:<15} {:<6} {}  {}  {}  {} us\n",
                    clock(secs),
                    s(r, "client"),
                    s(r, "type"),
                    s(r, "name"),
                    how,
                    s(r, "rcode"),
                    n(r, "latency_us")
                ));
            }
        }
        DnsCommand::Check { .. } => {
            out.push_str(s(v, "explanation"));
            out.push('\n');
        }
        DnsCommand::Pause { minutes, group } => out.push_str(&format!(
            "Blocking paused for {} for {minutes} min.\n",
            group
                .as_deref()
                .map_or("every group".to_owned(), |g| format!("group {g}"))
        )),
        DnsCommand::Resume { group } => out.push_str(&format!(
            "Blocking resumed for {}.\n",
            group
                .as_deref()
                .map_or("every group".to_owned(), |g| format!("group {g}"))
        )),
        DnsCommand::Reload => {
            out.push_str("Config and lists reloaded.\n");
            for r in v["restart_needed_for"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "note: changes to {} take effect at the next restart of dnsd\n",
                    r.as_str().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` UTC from Unix seconds (civil-from-days, Howard Hinnant's).
fn clock(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_utc() {
        assert_eq!(clock(0), "1970-01-01 00:00:00");
        assert_eq!(clock(1_764_072_000), "2025-11-25 12:00:00");
    }
}
