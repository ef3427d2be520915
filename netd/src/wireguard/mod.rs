//! WireGuard: tunnels and their peers from `[wireguard.<if>]`, in the kernel through
//! `wireguard-control`.
//!
//! - [`desired`] loads the keys (generating a missing one under the state directory, mode
//!   0600) and resolves endpoint names; [`plan`] is pure: desired and [`Observed`] in,
//!   ordered [`Action`]s out.
//! - [`WgKernel`] is the OS adapter: [`KernelWg`] talks to the kernel, [`FakeWg`] is an
//!   in-memory one for unit tests.
//! - [`Wireguard`] plans against the kernel, applies, and undoes a failed apply.
//!
//! Peers are added, changed and removed one by one on a running tunnel: the link never goes
//! down and the other peers' sessions are untouched. netd owns a WireGuard link when it
//! has the alias [`WG_ALIAS`]; every other link is left alone.

mod action;
mod adapter;
pub mod cli;
mod desired;
mod fake;
mod kernel;
pub mod keys;
mod plan;
mod service;
mod state;

pub use action::Action;
pub use adapter::{WgError, WgKernel};
pub use desired::{
    EndpointName, Resolve, Resolved, SystemResolver, desired, desired_with, endpoint_names,
    resolve_all,
};
pub use fake::FakeWg;
pub use kernel::KernelWg;
pub use plan::{PlanError, plan};
pub use service::{ApplyError, Wireguard, batches};
pub use state::{
    DEFAULT_MTU, DesiredDevice, Observed, ObservedDevice, ObservedPeer, Peer, PublicKey,
    STALE_AFTER, Secret, WG_ALIAS, resolve_due,
};

#[cfg(test)]
mod tests;
