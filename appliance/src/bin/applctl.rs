//! applctl: check, compare and manage the appliance's configuration.
//!
//! Exit codes: 0 success, 2 invalid input (a config with mistakes, a bad argument, a
//! request dnsd rejects), 1 any other failure (an unreadable file, a corrupt store, dnsd
//! not answering).

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;

use appliance::store::{Store, StoreError};
use appliance::{Config, Diagnostics, plan};
use clap::{Parser, Subcommand, ValueEnum};

#[path = "applctl/dns.rs"]
mod dns;
#[path = "applctl/fingerprint.rs"]
mod fingerprint;
#[path = "applctl/passwd.rs"]
mod passwd;
#[path = "applctl/socket.rs"]
mod socket;
#[path = "applctl/status.rs"]
mod status;
#[path = "applctl/storage.rs"]
mod storage;
#[path = "applctl/txn.rs"]
mod txn;
#[path = "applctl/update.rs"]
mod update;
#[path = "applctl/wg.rs"]
mod wg;

#[derive(Debug, Parser)]
#[command(
    name = "applctl",
    version,
    about = "Check, compare and manage the appliance's configuration"
)]
struct Cli {
    /// Where config generations are kept.
    #[arg(long, global = true, env = "APPLIANCE_CONFIG_DIR", default_value = appliance::store::DEFAULT_DIR)]
    data_dir: PathBuf,
    /// Colour in the output: auto (only on a terminal, and not with NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// What `applctl schema` prints.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaFormat {
    /// The JSON Schema of appliance.toml (editors validate against it).
    JsonSchema,
    /// The config reference in Markdown (docs/config.md).
    Reference,
    /// The HTTPS API's OpenAPI document.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a config file and report every mistake with its key path and line. `-` reads stdin.
    Validate {
        file: PathBuf,
        /// Print the diagnostics as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what a config file would change, section by section, against the current generation.
    Plan {
        file: PathBuf,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Plan against the config on applianced's HTTPS API instead of the local store.
        #[command(flatten)]
        remote: txn::RemoteArgs,
    },
    /// Config generations: history, show, diff, rollback, save, default.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the JSON Schema of appliance.toml, or the config reference or the API's
    /// OpenAPI document generated from the same code (`cargo xtask schema` commits all three).
    Schema {
        #[arg(long, value_enum, default_value_t = SchemaFormat::JsonSchema)]
        format: SchemaFormat,
    },
    /// Ask dnsd: stats, log, pause, resume, check DOMAIN, reload (over its control socket).
    Dns(dns::DnsArgs),
    /// Ask stored: status, snapshots [DATASET], prune --dry-run, replicate JOB.
    Storage(storage::StorageArgs),
    /// Signed OTA updates: install FILE|URL, status, rollback, mark-good, check-boot.
    Update(update::UpdateArgs),
    /// Read a password (from the terminal, or the first line of stdin) and print its
    /// argon2id hash for api.users.<name>.password_hash.
    Passwd,
    /// Print the SHA-256 fingerprint of the API's HTTPS certificate.
    Fingerprint {
        /// The API's state directory.
        #[arg(long, default_value = appliance::accounts::DEFAULT_STATE_DIR)]
        dir: PathBuf,
    },
    /// WireGuard: add-peer NAME --interface IF prints a client config and its QR code.
    Wg(wg::WgArgs),
    /// Apply a config file through applianced: every daemon or none, with a confirm window
    /// for changes that could cut you off (interfaces, firewall, WireGuard, the API).
    Apply {
        file: PathBuf,
        /// Revert unless `applctl confirm` arrives within this window (like 120s or 5m).
        #[arg(long, value_parser = txn::parse_window)]
        confirm: Option<u64>,
        /// Why, for the history.
        #[arg(long, default_value = "applctl apply")]
        comment: String,
        #[command(flatten)]
        txn: txn::TxnArgs,
    },
    /// Keep the change that waits for a confirm.
    Confirm(txn::TxnArgs),
    /// Revert the change that waits for a confirm, or go back to generation N (default: the
    /// one before the active one) on every daemon.
    Rollback {
        generation: Option<u64>,
        #[command(flatten)]
        txn: txn::TxnArgs,
    },
    /// The generations applianced keeps; `*` marks the active one.
    History(txn::TxnArgs),
    /// The active generation, a change waiting for a confirm, and each daemon; `status net`
    /// shows netd's links, leases, WireGuard peers and firewall counters.
    Status {
        what: Option<status::StatusOf>,
        #[command(flatten)]
        txn: txn::TxnArgs,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// List the stored generations, newest first; `*` marks the active one.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Print a generation's config text (`current` for the active one).
    Show { generation: GenRef },
    /// Show what changed from generation A to generation B (`current`, `default` allowed).
    Diff {
        a: GenRef,
        b: GenRef,
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier generation the active one again.
    Rollback { generation: u64 },
    /// Validate a file and store it as a new active generation.
    Save {
        file: PathBuf,
        /// Why, for the history.
        #[arg(long, default_value = "applctl config save")]
        comment: String,
    },
    /// Print the built-in default config (a working home router).
    Default,
}

/// A generation number, `current` or `default`.
#[derive(Debug, Clone, Copy)]
enum GenRef {
    Number(u64),
    Current,
    Default,
}

impl std::str::FromStr for GenRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "current" => Ok(Self::Current),
            "default" => Ok(Self::Default),
            n => n
                .parse()
                .map(Self::Number)
                .map_err(|_| format!("{n:?} is not a generation number, `current` or `default`")),
        }
    }
}

/// Why applctl failed, which decides its exit code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The input is wrong: exit 2. Already reported in detail on stderr.
    #[error("{0}")]
    Invalid(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Failed(String),
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::Invalid(e.to_string()),
            other => Self::Failed(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_target(false)
        .without_time()
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Invalid(msg)) => {
            if !msg.is_empty() {
                eprintln!("applctl: {msg}");
            }
            ExitCode::from(2)
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("applctl: {msg}");
            ExitCode::from(1)
        }
    }
}

fn color(choice: ColorChoice, stream_is_tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stream_is_tty && std::env::var_os("NO_COLOR").is_none(),
    }
}

fn read_input(file: &PathBuf) -> Result<(String, String), CliError> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Failed(format!("reading stdin: {e}")))?;
        return Ok((s, "<stdin>".into()));
    }
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Failed(format!("reading {name}: {e}")))?;
    Ok((text, name))
}

/// Loads a config, printing its diagnostics (as text or JSON) when it is invalid.
fn load_reporting(src: &str, name: &str, json: bool, cli: &Cli) -> Result<Config, CliError> {
    appliance::load_str(src).map_err(|d: Diagnostics| {
        if json {
            println!(
                "{}",
                serde_json::json!({ "file": name, "valid": false, "errors": d })
            );
        } else {
            eprint!(
                "{}",
                d.render(src, name, color(cli.color, std::io::stderr().is_terminal()))
            );
        }
        CliError::Invalid(String::new())
    })
}

fn run(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Validate { file, json } => {
            let (src, name) = read_input(file)?;
            load_reporting(&src, &name, *json, cli)?;
            if *json {
                println!(
                    "{}",
                    serde_json::json!({ "file": name, "valid": true, "errors": [] })
                );
            } else {
                println!("{name}: valid");
            }
            Ok(())
        }
        Command::Plan { file, json, remote } => {
            let (src, name) = read_input(file)?;
            let new = load_reporting(&src, &name, *json, cli)?;
            let (base, base_name) = match remote.https()? {
                Some(t) => txn::remote_base(&t)?,
                None => current_or_default(cli)?,
            };
            let p = plan::diff(Some(&base), &new);
            if *json {
                let v = serde_json::json!({ "base": base_name, "file": name, "plan": p });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("Plan for {name} against {base_name}:\n");
                print!(
                    "{}",
                    p.render(color(cli.color, std::io::stdout().is_terminal()))
                );
            }
            Ok(())
        }
        Command::Schema { format } => {
            print!(
                "{}",
                match format {
                    SchemaFormat::JsonSchema => appliance::schema::json_schema_string(),
                    SchemaFormat::Reference => appliance::schema::config_reference_markdown(),
                    SchemaFormat::Openapi => appliance::api::openapi_json(),
                }
            );
            Ok(())
        }
        Command::Config(c) => config(cli, c),
        Command::Dns(d) => dns::run(d),
        Command::Storage(s) => storage::run(s),
        Command::Update(u) => update::run(u, &cli.data_dir),
        Command::Passwd => passwd::run(),
        Command::Fingerprint { dir } => fingerprint::run(dir),
        Command::Apply {
            file,
            confirm,
            comment,
            txn: t,
        } => {
            let (src, name) = read_input(file)?;
            // Checked here too, for diagnostics with line and column before anything is sent.
            load_reporting(&src, &name, t.json, cli)?;
            txn::apply(t, src, &name, *confirm, comment)
        }
        Command::Confirm(t) => txn::confirm(t),
        Command::Rollback { generation, txn: t } => txn::rollback(t, *generation),
        Command::History(t) => txn::history(t),
        Command::Status { what: None, txn: t } => txn::status(t),
        Command::Status {
            what: Some(status::StatusOf::Net),
            txn: t,
        } => txn::net_status(t),
        Command::Wg(w) => wg::run(cli, w),
    }
}

fn open_store(cli: &Cli) -> Result<Store, CliError> {
    Ok(Store::open(&cli.data_dir)?)
}

/// The active generation's config, or the built-in default when nothing is stored yet.
fn current_or_default(cli: &Cli) -> Result<(Config, String), CliError> {
    if cli.data_dir.exists() {
        let store = open_store(cli)?;
        let (current, _warnings) = store.current()?;
        if let Some(g) = current {
            let cfg = appliance::load_str(&g.text).map_err(|d| {
                CliError::Failed(format!(
                    "generation {} no longer validates:\n{}",
                    g.info.number,
                    d.render(&g.text, &format!("generation {}", g.info.number), false)
                ))
            })?;
            return Ok((cfg, format!("generation {}", g.info.number)));
        }
    }
    let cfg = appliance::default_config()
        .map_err(|d| CliError::Failed(format!("the built-in default is invalid: {d}")))?;
    Ok((cfg, "the built-in default".into()))
}

fn text_of(cli: &Cli, g: GenRef) -> Result<(String, String), CliError> {
    match g {
        GenRef::Default => Ok((
            appliance::DEFAULT_CONFIG.to_owned(),
            "the built-in default".into(),
        )),
        GenRef::Number(n) => {
            let gen_ = open_store(cli)?.get(n)?;
            Ok((gen_.text, format!("generation {n}")))
        }
        GenRef::Current => {
            let (cur, _) = open_store(cli)?.current()?;
            match cur {
                Some(g) => Ok((g.text, format!("generation {}", g.info.number))),
                None => Ok((
                    appliance::DEFAULT_CONFIG.to_owned(),
                    "the built-in default".into(),
                )),
            }
        }
    }
}

fn config(cli: &Cli, c: &ConfigCommand) -> Result<(), CliError> {
    match c {
        ConfigCommand::Default => {
            print!("{}", appliance::DEFAULT_CONFIG);
            Ok(())
        }
        ConfigCommand::History { json } => {
            let store = open_store(cli)?;
            let (history, warnings) = store.history()?;
            if *json {
                let v = serde_json::json!({ "generations": history, "warnings": warnings });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            if history.is_empty() {
                println!(
                    "No generations stored in {}; the built-in default is in use.",
                    store.dir().display()
                );
            }
            for g in &history {
                let mark = if g.active { "*" } else { " " };
                println!("{mark} {:>6}  {}  {}", g.number, g.created, g.comment);
            }
            for w in &warnings {
                eprintln!("warning: {}: {}", w.file.display(), w.message);
            }
            Ok(())
        }
        ConfigCommand::Show { generation } => {
            let (text, _) = text_of(cli, *generation)?;
            print!("{text}");
            Ok(())
        }
        ConfigCommand::Diff { a, b, json } => {
            let (ta, na) = text_of(cli, *a)?;
            let (tb, nb) = text_of(cli, *b)?;
            let ca = appliance::load_str(&ta)
                .map_err(|d| CliError::Failed(format!("{na} does not validate: {d}")))?;
            let cb = appliance::load_str(&tb)
                .map_err(|d| CliError::Failed(format!("{nb} does not validate: {d}")))?;
            let p = plan::diff(Some(&ca), &cb);
            if *json {
                let v = serde_json::json!({ "from": na, "to": nb, "plan": p });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!("From {na} to {nb}:\n");
                print!(
                    "{}",
                    p.render(color(cli.color, std::io::stdout().is_terminal()))
                );
            }
            Ok(())
        }
        ConfigCommand::Rollback { generation } => {
            let store = open_store(cli)?;
            let g = store.get(*generation)?;
            // A generation written by other firmware may not validate here; never activate one.
            if let Err(d) = appliance::load_str(&g.text) {
                eprint!(
                    "{}",
                    d.render(&g.text, &format!("generation {generation}"), false)
                );
                return Err(CliError::Invalid(format!(
                    "generation {generation} does not validate; not rolled back"
                )));
            }
            store.rollback(*generation)?;
            println!("Generation {generation} is active again.");
            Ok(())
        }
        ConfigCommand::Save { file, comment } => {
            let (src, name) = read_input(file)?;
            load_reporting(&src, &name, false, cli)?;
            let store = open_store(cli)?;
            let n = store.commit(&src, comment)?;
            store.activate(n)?;
            println!("Stored {name} as generation {n} (active).");
            Ok(())
        }
    }
}
