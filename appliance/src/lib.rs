//! The appliance.toml model: typed sections, validated values, cross-checks, diagnostics
//! with key paths and line numbers, the embedded default, the JSON Schema and the config
//! store. Every daemon reads its section through this crate.

pub mod diag;
pub mod load;
pub mod model;
pub mod types;
pub mod validate;

pub use diag::{Diagnostic, Diagnostics, ErrorKind, KeyPath};
pub use load::load_str;
pub use model::Config;
