//! `appliance-image keygen` and `appliance-image bundle ...`: the host side of OTA updates.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use super::keys::{self, Keyring, PublicKey, SecretKey};
use super::{Policy, Release, Version};

/// What the current image is: bundles for anything else are refused.
pub const COMPATIBLE: &str = "appliance-x86_64-efi";

#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Make a bundle of a slot payload (the root squashfs), signed by one or more keys.
    Create {
        /// The slot payload, e.g. target/image/rootfs.squashfs.
        #[arg(long)]
        root: PathBuf,
        /// Release version, MAJOR.MINOR.PATCH.
        #[arg(long)]
        version: Version,
        /// Anti-rollback level; raise it when a release fixes a security hole.
        #[arg(long)]
        security_version: u64,
        /// The oldest installed version this bundle may update.
        #[arg(long)]
        min_version: Option<Version>,
        #[arg(long, default_value = COMPATIBLE)]
        compatible: String,
        /// Days until devices refuse the bundle.
        #[arg(long, default_value_t = 365)]
        valid_days: u64,
        /// Creation time, unix seconds [default: now].
        #[arg(long)]
        created: Option<u64>,
        /// The signed exception to anti-rollback: this bundle may go below the installed
        /// version and security floor.
        #[arg(long)]
        allow_downgrade: bool,
        /// A secret key file from `keygen` (repeatable; none makes an unsigned bundle
        /// for `sign` to finish).
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a signature to a bundle (for a keyring with a threshold above 1).
    Sign {
        #[arg(long)]
        key: PathBuf,
        bundle: PathBuf,
    },
    /// Check a bundle as a device would: signatures, compatibility, expiry, versions, and
    /// every payload chunk. Writes nothing.
    Verify {
        bundle: PathBuf,
        /// A keyring file (`threshold N` and one public key per line).
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// A public key file from `keygen` (repeatable), with threshold 1.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        #[arg(long, default_value = COMPATIBLE)]
        compatible: String,
        /// The version the device runs [default: 0.0.0, any].
        #[arg(long, default_value = "0.0.0")]
        installed: Version,
        /// The device's security floor.
        #[arg(long, default_value_t = 0)]
        floor: u64,
    },
    /// Show a bundle's manifest and signers without trusting it.
    Inspect { bundle: PathBuf },
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub fn keygen(out: &Path, name: &str) -> Result<()> {
    let public = keys::keygen(out, name)?;
    println!("secret key: {}", out.join(format!("{name}.key")).display());
    println!("public key: {} (id {})", public, public.id());
    Ok(())
}

pub fn run(cmd: BundleCmd) -> Result<()> {
    match cmd {
        BundleCmd::Create {
            root,
            version,
            security_version,
            min_version,
            compatible,
            valid_days,
            created,
            allow_downgrade,
            keys,
            out,
        } => {
            let keys = keys
                .iter()
                .map(|k| SecretKey::load(k))
                .collect::<Result<Vec<_>, _>>()?;
            let created = created.unwrap_or_else(now);
            let release = Release {
                compatible,
                version,
                security_version,
                min_version,
                created,
                expires: created.saturating_add(valid_days.saturating_mul(86_400)),
                allow_downgrade,
            };
            let refs: Vec<&SecretKey> = keys.iter().collect();
            let m = super::create(&root, &release, &refs, &out)
                .with_context(|| format!("creating {}", out.display()))?;
            println!(
                "bundle {}: version {} ({} bytes in {} chunks), signed by {} key(s)",
                out.display(),
                m.version,
                m.payload.size,
                m.payload.chunks.len(),
                keys.len()
            );
        }
        BundleCmd::Sign { key, bundle } => {
            let key = SecretKey::load(&key)?;
            super::add_signature(&bundle, &key)
                .with_context(|| format!("signing {}", bundle.display()))?;
            println!("signed {} with key {}", bundle.display(), key.public().id());
        }
        BundleCmd::Verify {
            bundle,
            keyring,
            keys: key_files,
            compatible,
            installed,
            floor,
        } => {
            let mut ring = match keyring {
                Some(path) => Keyring::load(&path)?,
                None => Keyring::new(Vec::new(), 1),
            };
            let extra = key_files
                .iter()
                .map(|k| keys::load_public(k))
                .collect::<Result<Vec<PublicKey>, _>>()?;
            ring = ring.with(extra);
            if ring.keys.is_empty() {
                bail!("no trusted keys: give --keyring FILE or --key PUBLIC_KEY_FILE");
            }
            let policy = Policy {
                keyring: ring,
                compatible,
                installed,
                security_floor: floor,
                now: now(),
            };
            let m = super::verify_file(&bundle, &policy)
                .with_context(|| format!("{} is refused", bundle.display()))?;
            println!(
                "{}: OK, version {} (security {}), {} bytes, every chunk verified",
                bundle.display(),
                m.version,
                m.security_version,
                m.payload.size
            );
        }
        BundleCmd::Inspect { bundle } => {
            let mut f = std::io::BufReader::new(
                std::fs::File::open(&bundle)
                    .with_context(|| format!("opening {}", bundle.display()))?,
            );
            let header = super::read_header(&mut f)?;
            let m = header.unverified_manifest()?;
            println!("format:           {}", m.format);
            println!("compatible:       {}", m.compatible);
            println!("version:          {}", m.version);
            println!("security version: {}", m.security_version);
            if let Some(min) = m.min_version {
                println!("min version:      {min}");
            }
            println!("created:          {} (unix)", m.created);
            println!("expires:          {} (unix)", m.expires);
            if m.allow_downgrade {
                println!("allow downgrade:  yes");
            }
            println!(
                "payload:          {} bytes, sha256 {}, {} chunks of {}",
                m.payload.size,
                m.payload.sha256,
                m.payload.chunks.len(),
                m.payload.chunk_size
            );
            let valid = header.valid_signers();
            for s in &header.signatures {
                let key = PublicKey::parse(&s.key);
                let state = match key {
                    Some(k) if valid.contains(&k) => format!("key {} valid", k.id()),
                    Some(k) => format!("key {} INVALID signature", k.id()),
                    None => "a malformed key".to_owned(),
                };
                println!("signature:        {state}");
            }
            if header.signatures.is_empty() {
                println!("signature:        none");
            }
        }
    }
    Ok(())
}
