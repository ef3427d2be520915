//! netd: see README.md for what this crate owns.
//!
//! The implementation arrives with its own issue; until then the crate exists so that
//! the workspace has the layout the design fixes and the other crates can depend on it.
