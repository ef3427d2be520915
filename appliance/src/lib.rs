//! The appliance.toml model: typed sections, validated values, cross-checks, diagnostics
//! with key paths and line numbers, the embedded default, the JSON Schema and the config
//! store. Every daemon reads its section through this crate.

pub mod accounts;
pub mod api;
pub mod command;
pub mod control;
pub mod diag;
pub mod leases;
pub mod load;
pub mod loki;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod plan;
pub mod schema;
pub mod sd;
pub mod store;
pub mod tlsgen;
pub mod txn;
pub mod types;
pub mod validate;

pub use diag::{Diagnostic, Diagnostics, ErrorKind, KeyPath};
pub use load::{LoadMemo, load_str, load_str_with};
pub use model::Config;

/// The built-in configuration (a working home router), as shipped in
/// `appliance/config/default.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/default.toml");

/// The built-in configuration, parsed.
pub fn default_config() -> Result<Config, Diagnostics> {
    load_str(DEFAULT_CONFIG)
}
