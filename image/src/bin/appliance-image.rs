//! `appliance-image`: builds the firmware disk image, and makes and checks OTA bundles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use image::{BuildOptions, build, bundle, disk, rootfs};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "appliance-image", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the GPT disk image (ESP, root A, root B, data) from Debian packages.
    /// Needs root (it unpacks a root filesystem with its owners and device nodes).
    Build {
        /// Output directory: appliance.img, rootfs.squashfs and its sha256.
        #[arg(long)]
        out: PathBuf,
        /// Where the package tarball and the zfs module are cached between builds
        /// [default: OUT/cache].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// An executable to install as /usr/bin/<name> (repeatable).
        #[arg(long = "bin", value_name = "PATH")]
        binaries: Vec<PathBuf>,
        /// Development image: root logs in on the serial console without a password.
        #[arg(long)]
        dev: bool,
        /// An SSH public key file allowed to log in as root (repeatable); it goes to
        /// /data/ssh/authorized_keys, not into the root image.
        #[arg(long = "authorized-key", value_name = "FILE")]
        authorized_keys: Vec<PathBuf>,
        /// The mtime of every file in the root image (seconds since the epoch).
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = rootfs::PACKAGES_EPOCH)]
        source_date_epoch: u64,
        /// The release version written into the root (/usr/lib/appliance/release).
        #[arg(long = "release", default_value = env!("CARGO_PKG_VERSION"))]
        release: bundle::Version,
        /// Its anti-rollback level.
        #[arg(long, default_value_t = 1)]
        security_version: u64,
        /// A public key file whose signed bundles this release installs (repeatable).
        #[arg(long = "update-key", value_name = "FILE")]
        update_keys: Vec<PathBuf>,
        /// How many of the update keys must sign a bundle.
        #[arg(long, default_value_t = 1)]
        update_threshold: usize,
    },
    /// Fill the cache with the package tarball (mmdebstrap) and the zfs module (a DKMS
    /// build), the slow parts of `build` that need none of the appliance's binaries: a
    /// build machine runs it while it compiles them. Needs root, as `build` does.
    WarmCache {
        #[arg(long)]
        cache: PathBuf,
        /// A scratch directory for the unpacked packages (emptied afterwards).
        #[arg(long)]
        work: PathBuf,
    },
    /// Make an ed25519 key pair for signing bundles: DIR/NAME.key (0600) and DIR/NAME.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "release")]
        name: String,
    },
    /// Create, sign, verify and inspect OTA bundles.
    Bundle {
        #[command(subcommand)]
        command: bundle::cli::BundleCmd,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::WarmCache { cache, work } => image::warm_cache(&cache, &work),
        Cmd::Build {
            out,
            cache,
            binaries,
            dev,
            authorized_keys,
            source_date_epoch,
            release,
            security_version,
            update_keys,
            update_threshold,
        } => {
            let cache = cache.unwrap_or_else(|| out.join("cache"));
            let options = BuildOptions {
                out,
                cache,
                customization: rootfs::Customization {
                    binaries,
                    dev,
                    release: image::install::Release {
                        version: release,
                        security_version,
                        compatible: bundle::cli::COMPATIBLE.to_owned(),
                    },
                    update_keys,
                    update_threshold,
                },
                epoch: source_date_epoch,
                sizes: disk::Sizes::default(),
                authorized_keys,
            };
            build(&options).map(|b| {
                println!("disk image: {}", b.disk.display());
                println!(
                    "root image: {} (sha256 {})",
                    b.root.display(),
                    b.root_sha256
                );
                println!("kernel:     {}", b.kernel);
                println!("zfs:        {}", b.zfs);
            })
        }
        Cmd::Keygen { out, name } => bundle::cli::keygen(&out, &name),
        Cmd::Bundle { command } => bundle::cli::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
