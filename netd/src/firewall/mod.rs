//! The firewall: `appliance.toml`'s `[firewall]` section rendered into one nftables table,
//! `inet appliance`, which netd owns and replaces atomically.
//!
//! - [`render`] is pure: config in, [`Ruleset`] out.
//! - [`Nft`] is the OS adapter: dry-run, apply and list through `nft -j` ([`NftCli`];
//!   small transactions through libnftables in-process), or an in-memory [`FakeNft`] for
//!   unit tests.
//! - [`Firewall`] plans against what the kernel holds, applies, and reverts.

mod diff;
mod expr;
mod fake;
mod genid;
// FFI to libnftables, confined to this module.
#[allow(unsafe_code)]
mod libnft;
mod nft;
mod render;
mod rules;
mod ruleset;
mod service;

pub use diff::{Changes, incremental};
pub use fake::FakeNft;
pub use genid::GenIdError;
pub use nft::{Nft, NftCli, NftError};
pub use render::{forward_chain_name, render};
pub use rules::{KernelRule, RuleDumpError};
pub use ruleset::{Ruleset, set_zone_addresses, zone_set_name};
pub use service::{
    Firewall, FirewallError, FirewallPlan, RuleCounters, normalize_listing, rule_counters,
};

/// The one table netd owns. Nothing outside it is read or written.
pub const TABLE: &str = "appliance";
