//! `applctl update`: installs signed bundles into the inactive slot, shows the update
//! state, rolls back, and (from the boot health check) commits the running slot.

use std::path::{Path, PathBuf};
use std::process::Command;

use appliance::migrate;
use appliance::store::{Store, StoreError};
use clap::Subcommand;
use image::bootstate::Slot;
use image::bundle::PublicKey;
use image::install::{ConfigStep, Device, Paths, UpdateError, source};

use super::CliError;

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// The mounted ESP that holds the boot state.
    #[arg(
        long,
        global = true,
        env = "APPLIANCE_ESP",
        default_value = "/boot/efi"
    )]
    esp: PathBuf,
    /// Where the slot devices are (rootA, rootB).
    #[arg(long, global = true, default_value = "/dev/disk/by-partlabel")]
    slot_dir: PathBuf,
    /// The updater's state on the data partition.
    #[arg(long, global = true, default_value = "/data/update")]
    state_dir: PathBuf,
    /// The running release's VERSION=, SECURITY_VERSION= and COMPATIBLE= (the image's).
    #[arg(long, global = true, default_value = "/usr/lib/appliance/release")]
    release: PathBuf,
    /// The keyring of trusted update keys (the image's built-in one).
    #[arg(
        long,
        global = true,
        default_value = "/usr/share/appliance/update-keys"
    )]
    keyring: PathBuf,
    /// Where `appliance.slot=A|B` is read (the kernel command line).
    #[arg(long, global = true, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    #[command(subcommand)]
    command: UpdateCommand,
}

#[derive(Debug, Subcommand)]
enum UpdateCommand {
    /// Verify a bundle (file or http(s) URL) and write it to the inactive slot, which then
    /// boots on trial. A cut download resumes when run again.
    Install {
        source: String,
        /// Reboot into the new slot when the install succeeded.
        #[arg(long)]
        reboot: bool,
        /// An extra trusted public key (base64), on top of the built-in keyring.
        #[arg(long = "trust")]
        trust: Vec<String>,
    },
    /// The running slot and release, what boots next, the security floor, the last install.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Boot the other slot next (on trial), when it holds a committed system.
    Rollback {
        #[arg(long)]
        reboot: bool,
    },
    /// Commit the running slot: what the boot health check runs once every daemon answers.
    MarkGood,
    /// Early at boot: repair the boot state and report an update that rolled back.
    CheckBoot,
    /// The boot health check failed: reboot when the running slot is on trial (spending a
    /// try), else leave the system up.
    HealthFailed,
}

fn failed(e: UpdateError) -> CliError {
    // The bundle or the request is wrong: exit 2, like any other bad input.
    if appliance::api::update::is_input_error(&e) {
        CliError::Invalid(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}

/// `config_dir` is the config store: an install records its active generation, the new
/// release's first boot migrates it, a rollback activates the recorded one again.
pub fn run(args: &UpdateArgs, config_dir: &Path) -> Result<(), CliError> {
    let mut device = Device::new(Paths {
        esp: args.esp.clone(),
        slot_dir: args.slot_dir.clone(),
        state_dir: args.state_dir.clone(),
        release: args.release.clone(),
        keyring: args.keyring.clone(),
        cmdline: args.cmdline.clone(),
    });
    match &args.command {
        UpdateCommand::Install {
            source: spec,
            reboot,
            trust,
        } => {
            for k in trust {
                device.extra_keys.push(PublicKey::parse(k).ok_or_else(|| {
                    CliError::Invalid(format!("--trust {k}: not a base64 ed25519 public key"))
                })?);
            }
            if config_dir.exists() {
                let store = Store::open(config_dir)?;
                device.config_generation = store.active()?;
                // The keys the admin trusts in the active config, like the API's updater.
                if let (Some(g), _) = store.current()?
                    && let Ok(cfg) = appliance::load_str(&g.text)
                {
                    device.extra_keys.extend(
                        cfg.update
                            .trusted_keys
                            .iter()
                            .filter_map(|k| PublicKey::parse(&k.to_string())),
                    );
                }
            }
            let mut src = source::open(spec);
            let mut last_percent = None;
            let report = device
                .install(src.as_mut(), |done, total| {
                    let percent = done * 100 / total.max(1);
                    if last_percent != Some(percent / 10) {
                        last_percent = Some(percent / 10);
                        eprintln!("  {percent:>3}% ({done}/{total} chunks)");
                    }
                })
                .map_err(failed)?;
            println!(
                "installed {} into slot {} ({} MiB in {:.1} s{}); it boots on trial next",
                report.version,
                report.slot,
                report.bytes >> 20,
                report.took.as_secs_f64(),
                if report.resumed_at_chunk > 0 {
                    format!(", resumed at chunk {}", report.resumed_at_chunk)
                } else {
                    String::new()
                }
            );
            if *reboot {
                reboot_now()?;
            }
        }
        UpdateCommand::Status { json } => {
            let s = device.status().map_err(failed)?;
            if *json {
                let value = appliance::api::update::status_json(&s);
                println!("{value:#}");
            } else {
                println!(
                    "running:          slot {} ({})",
                    s.running, s.release.version
                );
                println!(
                    "security floor:   {}",
                    s.state.security_floor.max(s.release.security_version)
                );
                match (&s.boot, s.next_boot) {
                    (Err(e), _) => println!("next boot:        unknown: {e}"),
                    (Ok(_), Some((slot, true))) => {
                        println!("next boot:        slot {slot}, on trial")
                    }
                    (Ok(_), Some((slot, false))) => println!("next boot:        slot {slot}"),
                    (Ok(_), None) => println!("next boot:        no bootable slot"),
                }
                if let Some(last) = &s.state.last {
                    println!(
                        "last install:     {} into slot {:?}: {:?} ({}/{} chunks)",
                        last.version, last.slot, last.phase, last.chunks_done, last.chunks
                    );
                }
            }
        }
        UpdateCommand::Rollback { reboot } => {
            let slot: Slot = device.rollback().map_err(failed)?;
            println!("slot {slot} boots next, on trial");
            if *reboot {
                reboot_now()?;
            }
        }
        UpdateCommand::MarkGood => {
            if device.mark_good().map_err(failed)? {
                println!("slot {} committed", device.running_slot().map_err(failed)?);
            }
        }
        UpdateCommand::HealthFailed => {
            if device.health_failed().map_err(failed)? {
                println!("the slot on trial is unhealthy: rebooting to spend a try");
                reboot_now()?;
            } else {
                println!("the committed slot is unhealthy; staying up");
                return Err(CliError::Failed("the boot is unhealthy".into()));
            }
        }
        UpdateCommand::CheckBoot => {
            if let Some(message) = device.check_boot().map_err(failed)? {
                // The console and the journal both show it.
                println!("{message}");
            }
            config_step(&device, config_dir)?;
        }
    }
    Ok(())
}

/// The config side of a boot after an update (see [`Device::config_step`]). A migration
/// that fails fails the boot check, so a release on trial is unhealthy and rolls back.
fn config_step(device: &Device, config_dir: &Path) -> Result<(), CliError> {
    let step = device.config_step().map_err(failed)?;
    let store = match step {
        ConfigStep::Nothing => return Ok(()),
        _ => Store::open(config_dir)?,
    };
    match step {
        ConfigStep::Nothing => {}
        ConfigStep::Migrate => {
            let release = device.release().map_err(failed)?;
            match migrate::migrate_active(&store, &release.version.to_string()) {
                Ok(Some(m)) => println!(
                    "config generation {} migrated from format {} to {} as generation {}",
                    m.from_generation, m.from_version, m.to_version, m.generation
                ),
                Ok(None) => {}
                Err(e) => {
                    return Err(CliError::Failed(format!(
                        "config migration for {}: {e}",
                        release.version
                    )));
                }
            }
        }
        ConfigStep::Restore(generation) => match store.rollback(generation) {
            Ok(()) => println!(
                "config generation {generation}, active before the update, is active again"
            ),
            Err(e @ StoreError::NotFound(_)) => {
                tracing::warn!("cannot restore the config of before the update: {e}");
            }
            Err(e) => return Err(e.into()),
        },
    }
    device
        .config_step_done(step, store.active()?)
        .map_err(failed)
}

fn reboot_now() -> Result<(), CliError> {
    let status = Command::new("systemctl")
        .arg("reboot")
        .status()
        .map_err(|e| CliError::Failed(format!("systemctl reboot: {e}")))?;
    if !status.success() {
        return Err(CliError::Failed(format!("systemctl reboot: {status}")));
    }
    Ok(())
}
