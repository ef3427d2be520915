//! Links: NICs matched by name or MAC and renamed to their config key, bridges, 802.1Q
//! VLANs, masters, MTUs, addresses and routes of the main table, through rtnetlink.
//!
//! - [`desired`] and [`plan`] are pure: config and [`Observed`] in, ordered [`Action`]s out.
//! - [`Netlink`] is the OS adapter: [`Rtnetlink`] talks to the kernel (optionally inside a
//!   network namespace), [`FakeNetlink`] is an in-memory kernel for unit tests.
//! - [`Links`] plans against the kernel, applies, and undoes a failed apply.
//!
//! netd owns a link when it created it (ifalias `appliance`) or adopted it as a NIC of the
//! config (ifalias `appliance nic <original name>`). Every other link is never touched.

mod action;
mod adapter;
mod fake;
mod plan;
mod rtnl;
mod service;
mod state;

pub use action::Action;
pub use adapter::{Netlink, NetlinkError};
pub use fake::FakeNetlink;
pub use plan::{
    Desired, DesiredLink, NicMatch, PlanError, PortVlans, Role, VlanTable, desired, plan,
};
pub use rtnl::Rtnetlink;
pub use service::{LinkPlan, Links, LinksError, UndoFailure};
pub use state::{
    Address, BridgeNf, BridgeOpts, BridgeVlan, Forwarding, Ipv6Conf, Link, Mac, NIC_ALIAS_PREFIX,
    OWNER_ALIAS, Observed, PROTO_STATIC, Route, Virtual,
};

#[cfg(test)]
mod tests;
