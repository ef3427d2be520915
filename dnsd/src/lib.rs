//! dnsd: the blocking DNS resolver. README.md maps the modules: lists are parsed
//! ([`lists`]) straight into compact sets ([`matcher`]), compiled and stored
//! ([`compiled`], [`fetch`], [`refresh`]), and decide per client group ([`policy`]); the
//! [`server`] answers from local names ([`answer`]), the [`cache`] and the [`upstream`]s.

pub mod answer;
pub mod background;
pub mod cache;
pub mod compiled;
pub mod control;
pub mod fast;
pub mod fetch;
pub mod listen;
pub mod lists;
pub mod local;
pub mod matcher;
pub mod metrics;
pub mod policy;
pub mod querylog;
pub mod reclaim;
pub mod refresh;
pub mod server;
pub mod stats;
pub mod tls;
pub mod udp;
pub mod upstream;
pub mod wan;
