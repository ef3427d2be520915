//! `applctl storage`: talks to stored's control socket (docs/storage.md) through applctl's
//! shared socket client.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::CliError;
use super::socket::{enc, json_of, request};

/// stored's control socket unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/appliance/stored.sock";
/// Reads answer quickly or stored is stuck.
const TIMEOUT: Duration = Duration::from_secs(30);
/// A prune of thousands of snapshots or a replication run takes longer.
const LONG_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, clap::Args)]
pub struct StorageArgs {
    /// stored's control socket.
    #[arg(long, global = true, env = "STORED_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the JSON stored answers instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: StorageCommand,
}

#[derive(Debug, Subcommand)]
enum StorageCommand {
    /// Pools (health, space, scrubs), datasets, snapshot policies and their RPO.
    Status,
    /// Snapshots of DATASET, or of every pool.
    Snapshots { dataset: Option<String> },
    /// Run the snapshot policies now: take what is due, prune what the retention drops.
    Prune {
        /// Show what would be taken and destroyed, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
    },
    /// Run replication job JOB now.
    Replicate { job: String },
    /// stored's Prometheus metrics (pools, policies, replication lag and bytes per job), as
    /// its /metrics serves them.
    Metrics,
}

pub fn run(args: &StorageArgs) -> Result<(), CliError> {
    let (method, target, body, timeout) = match &args.command {
        StorageCommand::Metrics => {
            let reply = request("stored", &args.socket, TIMEOUT, "GET", "/metrics", None)?;
            if reply.status != 200 {
                // The error body is JSON, as for every other request.
                json_of("stored", reply)?;
                return Err(CliError::Failed("stored refused /metrics".into()));
            }
            print!("{}", String::from_utf8_lossy(&reply.body));
            return Ok(());
        }
        StorageCommand::Status => ("GET", "/v1/status".to_owned(), None, TIMEOUT),
        StorageCommand::Snapshots { dataset } => (
            "GET",
            match dataset {
                Some(d) => format!("/v1/snapshots?dataset={}", enc(d)),
                None => "/v1/snapshots".to_owned(),
            },
            None,
            TIMEOUT,
        ),
        StorageCommand::Prune { dry_run, policy } => (
            "POST",
            "/v1/prune".to_owned(),
            Some(json!({ "dry_run": dry_run, "policy": policy })),
            LONG_TIMEOUT,
        ),
        StorageCommand::Replicate { job } => (
            "POST",
            "/v1/replicate".to_owned(),
            Some(json!({ "job": job })),
            LONG_TIMEOUT,
        ),
    };
    let reply = request(
        "stored",
        &args.socket,
        timeout,
        method,
        &target,
        body.as_ref(),
    )?;
    let v = json_of("stored", reply)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    print!(
        "{}",
        match &args.command {
            StorageCommand::Status => render_status(&v),
            StorageCommand::Snapshots { .. } => render_snapshots(&v),
            StorageCommand::Prune { .. } => render_prune(&v),
            StorageCommand::Replicate { .. } | StorageCommand::Metrics => format!("{v:#}\n"),
        }
    );
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// Bytes as KiB, MiB, ... with one decimal.
fn bytes(v: &Value) -> String {
    let Some(n) = v.as_u64() else {
        return "-".to_owned();
    };
    let mut x = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if x < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{x:.1} {unit}")
            };
        }
        x /= 1024.0;
    }
    format!("{n} B")
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn render_status(v: &Value) -> String {
    let mut o = format!(
        "stored {} generation {} up {} s\n",
        s(&v["version"]),
        s(&v["generation"]),
        s(&v["uptime_seconds"])
    );
    if !v["last_error"].is_null() {
        o.push_str(&format!("last apply failed: {}\n", s(&v["last_error"])));
    }
    o.push_str("\npools:\n");
    for p in list(&v["pools"]) {
        o.push_str(&format!(
            "  {}  {}  size {}  alloc {}  free {}  frag {}%  data errors {}  scrub {} {}\n",
            s(&p["name"]),
            s(&p["health"]),
            bytes(&p["size"]),
            bytes(&p["allocated"]),
            bytes(&p["free"]),
            s(&p["fragmentation_percent"]),
            s(&p["data_errors"]),
            p.pointer("/scrub/state").map_or_else(|| "-".to_owned(), s),
            p.pointer("/scrub/last").map_or_else(|| "-".to_owned(), s),
        ));
    }
    o.push_str("\ndatasets:\n");
    for d in list(&v["datasets"]) {
        o.push_str(&format!(
            "  {}  used {}  avail {}\n",
            s(&d["name"]),
            bytes(&d["used"]),
            bytes(&d["available"])
        ));
    }
    o.push_str("\nsnapshot policies:\n");
    for p in list(&v["policies"]) {
        let met = if p["rpo_met"] == true {
            "RPO met"
        } else {
            "RPO MISSED"
        };
        o.push_str(&format!(
            "  {}  {} ({} s, {})\n",
            s(&p["name"]),
            met,
            s(&p["rpo_target_seconds"]),
            s(&p["rpo_period"])
        ));
        for d in list(&p["datasets"]) {
            let counts: Vec<String> = d["snapshots"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect()
                })
                .unwrap_or_default();
            o.push_str(&format!(
                "    {}  newest {}  lag {} s  [{}]\n",
                s(&d["dataset"]),
                s(&d["newest"]),
                s(&d["lag_seconds"]),
                counts.join(", ")
            ));
        }
    }
    if !list(&v["replication"]).is_empty() {
        o.push_str("\nreplication:\n");
        for j in list(&v["replication"]) {
            // The lag is the target's recovery point: the age of the newest snapshot it has.
            let state = if j["running"] == true {
                "running"
            } else if !j["last_error"].is_null() {
                "FAILED"
            } else if j["last_success"].is_null() {
                "not run yet"
            } else {
                "ok"
            };
            let rate = j["throughput_bytes_per_second"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |r| bytes(&json!(r as u64)));
            o.push_str(&format!(
                "  {}  {}  lag {} s  last success {}  last run {} at {}/s  runs {}  failures {}\n",
                s(&j["job"]),
                state,
                s(&j["lag_seconds"]),
                s(&j["last_success"]),
                bytes(&j["bytes"]),
                rate,
                s(&j["runs_total"]),
                s(&j["failures_total"]),
            ));
            // Kept across restarts of stored: what an incremental continues from.
            for r in list(&j["replicated"]) {
                o.push_str(&format!(
                    "    on the target: {}@{}  guid {}\n",
                    s(&r["dataset"]),
                    s(&r["snapshot"]),
                    s(&r["guid"]),
                ));
            }
            if !j["last_error"].is_null() {
                o.push_str(&format!("    last error: {}\n", s(&j["last_error"])));
            }
        }
    }
    for e in list(&v["errors"]) {
        o.push_str(&format!("could not read: {}\n", s(e)));
    }
    o
}

fn render_snapshots(v: &Value) -> String {
    let mut o = String::new();
    for x in list(&v["snapshots"]) {
        let holds = x["holds"].as_u64().unwrap_or(0);
        o.push_str(&format!(
            "{}  {}{}\n",
            s(&x["name"]),
            if x["ours"] == true {
                s(&x["period"])
            } else {
                "foreign".to_owned()
            },
            if holds > 0 {
                format!("  held ({holds})")
            } else {
                String::new()
            }
        ));
    }
    o.push_str(&format!("{} snapshots\n", s(&v["count"])));
    o
}

fn render_prune(v: &Value) -> String {
    let dry = v["dry_run"] == true;
    let mut o = String::new();
    for p in list(&v["policies"]) {
        o.push_str(&format!("policy {}:\n", s(&p["policy"])));
        let take = if dry { "would take" } else { "took" };
        for t in list(&p["take"]) {
            o.push_str(&format!("  {take}: {}\n", s(t)));
        }
        let destroy = if dry { "would destroy" } else { "destroyed" };
        let gone = if dry { &p["destroy"] } else { &p["destroyed"] };
        for d in list(gone) {
            o.push_str(&format!("  {destroy}: {}\n", s(d)));
        }
        for k in list(&p["protected"]) {
            o.push_str(&format!("  kept: {} ({})\n", s(&k["name"]), s(&k["why"])));
        }
        o.push_str(&format!(
            "  {} kept, {} to destroy\n",
            s(&p["kept"]),
            list(gone).len()
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_shows_each_jobs_lag_and_each_policys_rpo() {
        let v = json!({
            "version": "0.1.0", "generation": 3, "uptime_seconds": 60,
            "pools": [], "datasets": [],
            "policies": [{"name": "main", "rpo_met": false, "rpo_target_seconds": 900,
                          "rpo_period": "frequently", "datasets": []}],
            "replication": [
                {"job": "offsite", "running": false, "last_success": "2026-11-26T06:00:00Z",
                 "last_error": null, "lag_seconds": 420, "bytes": 2_097_152,
                 "throughput_bytes_per_second": 1_048_576.0, "runs_total": 4,
                 "failures_total": 1,
                 "replicated": [{"dataset": "tank/data", "snapshot": "stored_hourly_2026-11-26T06:00:00Z",
                                 "guid": "9024837213386437283"}]},
                {"job": "cold", "running": false, "last_success": null,
                 "last_error": "TLS with b:7410 failed", "lag_seconds": null, "bytes": 0,
                 "throughput_bytes_per_second": 0.0, "runs_total": 1, "failures_total": 1}
            ]
        });
        let out = render_status(&v);
        assert!(
            out.contains("main  RPO MISSED (900 s, frequently)"),
            "{out}"
        );
        assert!(
            out.contains("offsite  ok  lag 420 s  last success 2026-11-26T06:00:00Z  last run 2.0 MiB at 1.0 MiB/s  runs 4  failures 1"),
            "{out}"
        );
        assert!(
            out.contains("    on the target: tank/data@stored_hourly_2026-11-26T06:00:00Z  guid 9024837213386437283"),
            "{out}"
        );
        assert!(out.contains("cold  FAILED  lag - s"), "{out}");
        assert!(
            out.contains("    last error: TLS with b:7410 failed"),
            "{out}"
        );
    }

    #[test]
    fn a_dry_prune_reads_as_a_plan() {
        let v = json!({"dry_run": true, "policies": [{
            "policy": "main",
            "take": ["tank/a@stored_hourly_2026-01-01T01:00:00Z"],
            "destroy": ["tank/a@stored_hourly_2026-01-01T00:00:00Z"],
            "destroyed": [],
            "kept": 3,
            "protected": [{"name": "tank/a@stored_daily_2025-12-01T00:00:00Z", "why": "1 hold(s)"}],
        }]});
        let text = render_prune(&v);
        assert!(text.contains("would destroy: tank/a@stored_hourly_2026-01-01T00:00:00Z"));
        assert!(text.contains("kept: tank/a@stored_daily_2025-12-01T00:00:00Z (1 hold(s))"));
        assert!(text.contains("3 kept, 1 to destroy"));
        assert_eq!(bytes(&json!(1536)), "1.5 KiB");
        assert_eq!(bytes(&json!(12)), "12 B");
    }
}
