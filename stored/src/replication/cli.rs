//! The replication subcommands of the `stored` binary:
//!
//! - `stored replicate JOB --config FILE [--bwlimit BYTES]`: one run of a job, its report
//!   printed; holds of jobs in neither FILE nor the daemon's active generation are
//!   released (when the jobs or pools changed since the last such sweep).
//! - `stored receive --config FILE` (the `storage.replication_listener` section) or
//!   `stored receive --listen ADDR --identity FILE --allow FP.. --dataset DS..`: the
//!   receiver, in the foreground.
//! - `stored replication serve-stdio --dataset DS.. [--job JOB]`: the receiver on stdin and
//!   stdout, for the ssh transport (`ssh.rs`).
//! - `stored replication identity FILE`: makes this box's key and certificate (once) and
//!   prints the fingerprint the other side pins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use appliance::Config;

use super::holds::{SWEEP_FILE, release_stale_holds_if_changed};
use super::tls::Identity;
use super::{ReceiverConfig, ReplError, RunOptions, run_job, serve_receiver};
use crate::zfs::RealZfs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run a replication job once: send what the target lacks.
    Replicate {
        /// The job's name (`[replication.NAME]`).
        job: String,
        #[arg(long)]
        config: PathBuf,
        /// Bandwidth limit in bytes per second for this run (0 = none); overrides the job's.
        #[arg(long)]
        bwlimit: Option<u64>,
    },
    /// Run the replication receiver in the foreground.
    Receive {
        /// Take the listener from `storage.replication_listener` of this config.
        #[arg(long, conflicts_with_all = ["listen", "identity", "allow", "dataset"])]
        config: Option<PathBuf>,
        /// Address to listen on, like 0.0.0.0:7410.
        #[arg(long, required_unless_present = "config")]
        listen: Option<String>,
        /// PEM file with this box's key and certificate.
        #[arg(long, required_unless_present = "config")]
        identity: Option<PathBuf>,
        /// Fingerprint (sha256:...) of a sender allowed to push; repeat for several.
        #[arg(long)]
        allow: Vec<String>,
        /// Dataset under which senders may receive; repeat for several.
        #[arg(long)]
        dataset: Vec<String>,
    },
    /// Replication identities.
    #[command(subcommand)]
    Replication(IdentityCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Make a key and self-signed certificate in FILE (kept if it exists) and print its
    /// fingerprint.
    Identity { file: PathBuf },
    /// Serve one sender on stdin and stdout: what a `transport = "ssh"` job runs on the
    /// target, best as the forced command of its key in authorized_keys.
    ServeStdio {
        /// Dataset under which the sender may receive; repeat for several.
        #[arg(long, required = true)]
        dataset: Vec<String>,
        /// Accept only this job's hello.
        #[arg(long)]
        job: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Repl(#[from] ReplError),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error(transparent)]
    Zfs(#[from] crate::zfs::ZfsError),
    #[error("{0}")]
    Usage(String),
}

/// Runs a replication subcommand; `load` reads and validates a config the way the other
/// subcommands do (so that its errors and exit codes are the same).
pub fn run<F>(command: Command, load: impl Fn(&Path) -> Result<Config, F>) -> Result<(), F>
where
    F: From<CliError>,
{
    match command {
        Command::Replicate {
            job,
            config,
            bwlimit,
        } => {
            let config = load(&config)?;
            replicate(&config, &job, bwlimit).map_err(F::from)
        }
        Command::Receive {
            config,
            listen,
            identity,
            allow,
            dataset,
        } => {
            let cfg = match config {
                Some(path) => {
                    let config = load(&path)?;
                    let l = config
                        .storage
                        .replication_listener
                        .as_ref()
                        .ok_or_else(|| {
                            CliError::Usage(format!(
                                "{} has no [storage.replication_listener]",
                                path.display()
                            ))
                        })?;
                    ReceiverConfig::from_model(l)
                }
                None => {
                    let allowed = allow
                        .iter()
                        .map(|a| {
                            appliance::types::Fingerprint::parse(a)
                                .map(|f| f.to_string())
                                .map_err(|e| CliError::Usage(format!("--allow {a}: {e}")))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    ReceiverConfig {
                        listen: listen.unwrap_or_default(),
                        identity_file: identity.unwrap_or_default(),
                        allowed_clients: allowed,
                        datasets: dataset,
                    }
                }
            };
            if cfg.allowed_clients.is_empty() || cfg.datasets.is_empty() {
                return Err(F::from(CliError::Usage(
                    "the receiver needs at least one allowed client fingerprint and one dataset"
                        .into(),
                )));
            }
            serve_receiver(&cfg).map_err(|e| F::from(e.into()))
        }
        Command::Replication(IdentityCommand::ServeStdio { dataset, job }) => {
            super::ssh::serve_stdio(&dataset, job.as_deref()).map_err(|e| F::from(e.into()))
        }
        Command::Replication(IdentityCommand::Identity { file }) => {
            let id = if file.exists() {
                Identity::load(&file)
            } else {
                Identity::create(&file)
            }
            .map_err(|e| F::from(e.into()))?;
            println!("{}", id.fingerprint());
            Ok(())
        }
    }
}

fn replicate(config: &Config, name: &str, bwlimit: Option<u64>) -> Result<(), CliError> {
    let (key, job) = config
        .replication
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = config.replication.keys().map(|k| k.as_str()).collect();
            CliError::Usage(format!(
                "no replication job {name:?} in the config (jobs: {})",
                known.join(", ")
            ))
        })?;
    let mut zfs = RealZfs::open()?;
    let mut jobs: BTreeSet<String> = config
        .replication
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect();
    match daemon_jobs(Path::new(appliance::store::DEFAULT_DIR)) {
        Ok(daemon) => {
            jobs.extend(daemon);
            release_stale_holds_if_changed(&mut zfs, &jobs, Path::new(SWEEP_FILE))?;
        }
        // Releasing what might be the daemon's job's base would cost that job a full
        // send: no sweep rather than a guess.
        Err(why) => {
            tracing::warn!(%why, "stale replication holds not swept: the daemon's jobs are unknown")
        }
    }
    if !job.enabled {
        println!("job {key} is disabled (enabled = false); nothing sent");
        return Ok(());
    }
    let report = run_job(
        &mut zfs,
        key.as_str(),
        job,
        &RunOptions {
            bandwidth_limit: bwlimit,
        },
    )?;
    for aborted in &report.aborted {
        println!("aborted the interrupted receive into {aborted}");
    }
    for (source, target, steps) in &report.datasets {
        println!("{source} -> {target}: {steps} snapshot(s)");
    }
    let secs = report.duration.as_secs_f64();
    println!(
        "replicated {}: snapshots={} bytes={} seconds={secs:.3} throughput_mib_s={:.2} resumed={} lag_s={}",
        report.job,
        report.snapshots,
        report.bytes,
        report.bytes as f64 / 1_048_576.0 / secs.max(1e-9),
        report.resumed,
        report
            .lag
            .map_or_else(|| "none".to_owned(), |l| l.as_secs().to_string()),
    );
    Ok(())
}

/// The replication jobs of the config generation the daemon runs (`dir` is its store):
/// the CLI's FILE may be another config, and the daemon's jobs' holds are not stale. No
/// store (a box whose daemon never ran) is no jobs; a store whose active generation cannot
/// be read is an error.
fn daemon_jobs(dir: &Path) -> Result<BTreeSet<String>, String> {
    if !dir.is_dir() {
        return Ok(BTreeSet::new());
    }
    let store =
        appliance::store::Store::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (generation, _) = store
        .current()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let Some(generation) = generation else {
        return Ok(BTreeSet::new());
    };
    let config = appliance::load_str(&generation.text)
        .map_err(|_| format!("{}: the active generation does not validate", dir.display()))?;
    Ok(config
        .replication
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit's case: a job only the daemon's generation has keeps its hold when
    /// `stored replicate` runs with another FILE.
    #[test]
    fn the_daemons_jobs_count_as_known() {
        let dir = tempfile::tempdir().unwrap();
        assert!(daemon_jobs(&dir.path().join("none")).unwrap().is_empty());
        let store = appliance::store::Store::open(dir.path()).unwrap();
        assert!(daemon_jobs(dir.path()).unwrap().is_empty());
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../appliance/tests/valid/nas_only.toml"
        ))
        .unwrap();
        let n = store.commit(&text, "test").unwrap();
        store.activate(n).unwrap();
        let jobs = daemon_jobs(dir.path()).unwrap();
        assert_eq!(jobs, BTreeSet::from(["cloud".to_owned()]));
    }
}
