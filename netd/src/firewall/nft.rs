//! The OS adapter for nftables: everything netd does to the kernel's firewall goes
//! through [`Nft`], so that planning and reverting are tested against [`super::FakeNft`].

use nftables::schema::Nftables;
use serde_json::Value;

use super::TABLE;
use super::genid::{self, GenIdError};
use super::rules::{self, KernelRule, RuleDumpError};
use super::ruleset::{Ruleset, json};
use crate::command::{self, CommandError, CommandFailure};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft: {0}")]
    Spawn(String),
    /// nft refused the transaction. For JSON input nft's stderr often points nowhere
    /// (`internal:0:0-0`), so `culprit` names the first command it refuses, found by
    /// dry-running ever shorter prefixes of the batch.
    #[error("nft failed: {failure}{}", culprit.as_ref().map(|c| format!("; the first command it refuses: {c}")).unwrap_or_default())]
    Failed {
        failure: CommandFailure,
        culprit: Option<String>,
    },
    #[error("nft printed JSON that does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Generation(#[from] GenIdError),
    #[error(transparent)]
    Rules(#[from] RuleDumpError),
}

impl From<CommandError> for NftError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Failed(failure) => Self::Failed {
                failure,
                culprit: None,
            },
            e @ CommandError::Spawn { .. } => Self::Spawn(e.to_string()),
        }
    }
}

/// nftables as netd uses it: whole-table transactions, set updates, and reading the table
/// back. Implementations never touch tables other than [`TABLE`].
pub trait Nft {
    /// Dry run (`nft -c`): the kernel validates the whole transaction and applies nothing.
    fn check(&self, ruleset: &Ruleset) -> Result<(), NftError>;

    /// Runs one transaction (`nft -j -f -`): all of it or nothing.
    fn run(&mut self, batch: &Nftables<'_>) -> Result<(), NftError>;

    /// Replaces the table with `ruleset` in one transaction.
    fn apply(&mut self, ruleset: &Ruleset) -> Result<(), NftError> {
        self.run(&ruleset.batch())
    }

    /// `nft -j list table inet appliance`, or `None` when the table does not exist. Slow
    /// for big sets (nft fetches every element): status and the slow paths only.
    fn list(&self) -> Result<Option<Value>, NftError>;

    /// The ruleset generation id of the namespace, bumped by every committed nftables
    /// transaction (anyone's). Cheap: one netlink round trip.
    fn generation(&self) -> Result<u32, NftError>;

    /// The table's rules (of one chain with `chain`) in chain order with their handles,
    /// comments and counters. Without such a table or chain: `None`, or an empty list
    /// (the kernel's filtered dump is simply empty). Cheap: no set element is read.
    fn rules(&self, chain: Option<&str>) -> Result<Option<Vec<KernelRule>>, NftError>;
}

/// The real adapter: runs the `nft` binary, optionally inside a network namespace
/// (`ip netns exec`), which is how the namespace tests point it at their router.
#[derive(Debug, Clone)]
pub struct NftCli {
    prefix: Vec<String>,
    netns: Option<String>,
    /// Small transactions through libnftables in-process ([`super::libnft`]) when it
    /// loads; off: always the binary.
    library: bool,
}

impl Default for NftCli {
    fn default() -> Self {
        Self::new()
    }
}

impl NftCli {
    pub fn new() -> Self {
        Self {
            prefix: vec!["nft".into()],
            netns: None,
            library: true,
        }
    }

    /// Runs every command inside the named network namespace.
    pub fn in_netns(netns: &str) -> Self {
        Self {
            prefix: ["ip", "netns", "exec", netns, "nft"]
                .iter()
                .map(ToString::to_string)
                .collect(),
            netns: Some(netns.to_owned()),
            library: true,
        }
    }

    /// Every transaction through the `nft` binary, none through libnftables (to compare
    /// the two, and where the library must not be used).
    pub fn binary_only(mut self) -> Self {
        self.library = false;
        self
    }

    /// Whether small transactions run in-process: allowed and libnftables loaded.
    pub fn uses_library(&self) -> bool {
        self.library && super::libnft::available()
    }

    /// A small batch through libnftables, in the namespace's thread when there is one;
    /// `None` when the library is not to be used for it.
    fn run_in_process(&self, input: &str) -> Option<Result<(), CommandError>> {
        if !self.library || input.len() > super::libnft::MAX_INPROCESS_BATCH {
            return None;
        }
        let outcome =
            match genid::in_netns(self.netns.as_deref(), || super::libnft::run_json(input)) {
                Ok(outcome) => outcome?,
                Err(e) => {
                    return Some(Err(CommandError::Spawn {
                        command: format!("libnftables in network namespace {:?}", self.netns),
                        source: e,
                    }));
                }
            };
        Some(outcome.map_err(|stderr| {
            CommandError::Failed(CommandFailure {
                command: "nft -j -f - (libnftables, in-process)".into(),
                status: Some(1),
                stdout: String::new(),
                stderr,
            })
        }))
    }

    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.extend(args.iter().map(ToString::to_string));
        v
    }

    fn dry_run(&self, batch: &Nftables<'_>) -> Result<(), CommandError> {
        let input = json(batch);
        command::run(&self.argv(&["-c", "-j", "-f", "-"]), Some(input.as_bytes())).map(|_| ())
    }

    /// Binary search for the shortest failing prefix of a batch that failed as a whole:
    /// its last command is the culprit. Dry runs only; a few extra nft calls on failure.
    fn culprit(&self, batch: &Nftables<'_>) -> Option<String> {
        let objects = &batch.objects;
        let prefix = |k: usize| Nftables {
            objects: objects.iter().take(k).cloned().collect::<Vec<_>>().into(),
        };
        let (mut ok, mut fails) = (0, objects.len());
        if self.dry_run(&prefix(fails)).is_ok() {
            return None;
        }
        while fails - ok > 1 {
            let mid = ok + (fails - ok) / 2;
            if self.dry_run(&prefix(mid)).is_err() {
                fails = mid;
            } else {
                ok = mid;
            }
        }
        objects
            .get(fails.checked_sub(1)?)
            .and_then(|o| serde_json::to_string(o).ok())
    }

    fn with_culprit(&self, e: CommandError, batch: &Nftables<'_>) -> NftError {
        match NftError::from(e) {
            NftError::Failed { failure, .. } => NftError::Failed {
                failure,
                culprit: self.culprit(batch),
            },
            other => other,
        }
    }
}

impl Nft for NftCli {
    fn check(&self, ruleset: &Ruleset) -> Result<(), NftError> {
        let batch = ruleset.batch();
        self.dry_run(&batch)
            .map_err(|e| self.with_culprit(e, &batch))
    }

    fn run(&mut self, batch: &Nftables<'_>) -> Result<(), NftError> {
        let input = json(batch);
        match self.run_in_process(&input) {
            Some(result) => result,
            None => {
                command::run(&self.argv(&["-j", "-f", "-"]), Some(input.as_bytes())).map(|_| ())
            }
        }
        .map_err(|e| self.with_culprit(e, batch))
    }

    fn list(&self) -> Result<Option<Value>, NftError> {
        match command::run(&self.argv(&["-j", "list", "table", "inet", TABLE]), None) {
            Ok(out) => Ok(Some(serde_json::from_str(&out.stdout)?)),
            // The one failure that is an answer: the table is not there (ENOENT).
            Err(CommandError::Failed(f)) if f.stderr.contains("No such file or directory") => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn generation(&self) -> Result<u32, NftError> {
        Ok(genid::read(self.netns.as_deref())?)
    }

    fn rules(&self, chain: Option<&str>) -> Result<Option<Vec<KernelRule>>, NftError> {
        Ok(rules::dump(self.netns.as_deref(), chain)?)
    }
}
