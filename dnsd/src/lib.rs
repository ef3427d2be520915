//! dnsd: the blocking DNS resolver. See README.md for what this crate owns.
//!
//! Built so far: block-list parsing ([`lists`]) and the compact compiled matcher
//! ([`matcher`]). The server, upstreams, cache and control socket come next.

pub mod answer;
pub mod cache;
pub mod compiled;
pub mod fetch;
pub mod lists;
pub mod matcher;
pub mod policy;
pub mod refresh;
pub mod server;
pub mod upstream;
