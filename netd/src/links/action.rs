//! The steps of a links plan. Each carries what it replaces, so that a failed apply can
//! undo the steps already done by running their inverses in reverse order.

use std::fmt;

use ipnet::IpNet;

use super::state::{
    BridgeNf, BridgeOpts, BridgeVlan, Forwarding, Ipv6Conf, OWNER_ALIAS, Route, Virtual,
};

/// One change to the kernel. Links are named by their name at the time the step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Creates a bridge or VLAN, down, with the alias [`OWNER_ALIAS`]. `mtu` is only set by
    /// undo steps that recreate a deleted link; plans set MTUs in their own step, after
    /// the parents'.
    Create {
        name: String,
        kind: Virtual,
        mtu: Option<u32>,
    },
    /// Deletes a link netd created. `mtu` is kept for the undo.
    Delete {
        name: String,
        kind: Virtual,
        mtu: Option<u32>,
    },
    /// Renames a NIC; the kernel requires it to be down.
    Rename {
        from: String,
        to: String,
    },
    SetAlias {
        link: String,
        alias: Option<String>,
        previous: Option<String>,
    },
    SetUp {
        link: String,
        up: bool,
    },
    SetMtu {
        link: String,
        mtu: u32,
        /// `None` when the link is created in the same plan: its undo deletes it anyway.
        previous: Option<u32>,
    },
    SetMaster {
        link: String,
        master: Option<String>,
        previous: Option<String>,
    },
    SetBridge {
        link: String,
        opts: BridgeOpts,
        previous: BridgeOpts,
    },
    AddAddress {
        link: String,
        net: IpNet,
    },
    RemoveAddress {
        link: String,
        net: IpNet,
    },
    AddRoute(Route),
    RemoveRoute(Route),
    /// `bridge vlan add`: a VLAN on a bridge port, or on the bridge itself (`on_self`,
    /// which lets the bridge's own upper links, like a VLAN sub-interface, see its frames).
    AddBridgeVlan {
        link: String,
        vlan: BridgeVlan,
        on_self: bool,
    },
    /// `bridge vlan del`; `vlan` keeps the flags for the undo.
    RemoveBridgeVlan {
        link: String,
        vlan: BridgeVlan,
        on_self: bool,
    },
    SetBridgeNf {
        value: BridgeNf,
        previous: BridgeNf,
    },
    SetIpv6 {
        link: String,
        value: Ipv6Conf,
        previous: Ipv6Conf,
    },
    SetForwarding {
        value: Forwarding,
        previous: Forwarding,
    },
}

impl Action {
    /// The step that undoes this one; `None` when there is nothing to undo.
    pub fn inverse(&self) -> Option<Action> {
        Some(match self {
            Self::Create { name, kind, mtu } => Self::Delete {
                name: name.clone(),
                kind: kind.clone(),
                mtu: *mtu,
            },
            Self::Delete { name, kind, mtu } => Self::Create {
                name: name.clone(),
                kind: kind.clone(),
                mtu: *mtu,
            },
            Self::Rename { from, to } => Self::Rename {
                from: to.clone(),
                to: from.clone(),
            },
            Self::SetAlias {
                link,
                alias,
                previous,
            } => Self::SetAlias {
                link: link.clone(),
                alias: previous.clone(),
                previous: alias.clone(),
            },
            Self::SetUp { link, up } => Self::SetUp {
                link: link.clone(),
                up: !up,
            },
            Self::SetMtu {
                link,
                mtu,
                previous,
            } => Self::SetMtu {
                link: link.clone(),
                mtu: (*previous)?,
                previous: Some(*mtu),
            },
            Self::SetMaster {
                link,
                master,
                previous,
            } => Self::SetMaster {
                link: link.clone(),
                master: previous.clone(),
                previous: master.clone(),
            },
            Self::SetBridge {
                link,
                opts,
                previous,
            } => Self::SetBridge {
                link: link.clone(),
                opts: *previous,
                previous: *opts,
            },
            Self::AddAddress { link, net } => Self::RemoveAddress {
                link: link.clone(),
                net: *net,
            },
            Self::RemoveAddress { link, net } => Self::AddAddress {
                link: link.clone(),
                net: *net,
            },
            Self::AddRoute(r) => Self::RemoveRoute(r.clone()),
            Self::RemoveRoute(r) => Self::AddRoute(r.clone()),
            Self::AddBridgeVlan {
                link,
                vlan,
                on_self,
            } => Self::RemoveBridgeVlan {
                link: link.clone(),
                vlan: *vlan,
                on_self: *on_self,
            },
            Self::RemoveBridgeVlan {
                link,
                vlan,
                on_self,
            } => Self::AddBridgeVlan {
                link: link.clone(),
                vlan: *vlan,
                on_self: *on_self,
            },
            Self::SetBridgeNf { value, previous } => Self::SetBridgeNf {
                value: *previous,
                previous: *value,
            },
            Self::SetIpv6 {
                link,
                value,
                previous,
            } => Self::SetIpv6 {
                link: link.clone(),
                value: *previous,
                previous: *value,
            },
            Self::SetForwarding { value, previous } => Self::SetForwarding {
                value: *previous,
                previous: *value,
            },
        })
    }
}

fn on(b: bool) -> u8 {
    u8::from(b)
}

/// Reads like the `ip` command that does the same, for logs and errors.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create { name, kind, mtu } => {
                write!(f, "ip link add {name}")?;
                match kind {
                    Virtual::Bridge(o) => write!(
                        f,
                        " type bridge vlan_filtering {} stp_state {}",
                        on(o.vlan_filtering),
                        on(o.stp)
                    )?,
                    Virtual::Vlan { parent, id } => write!(f, " link {parent} type vlan id {id}")?,
                }
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                write!(f, " && ip link set {name} alias {OWNER_ALIAS}")
            }
            Self::Delete { name, .. } => write!(f, "ip link del {name}"),
            Self::Rename { from, to } => write!(f, "ip link set {from} name {to}"),
            Self::SetAlias { link, alias, .. } => match alias {
                Some(a) => write!(f, "ip link set {link} alias '{a}'"),
                None => write!(f, "ip link set {link} alias ''"),
            },
            Self::SetUp { link, up } => {
                write!(f, "ip link set {link} {}", if *up { "up" } else { "down" })
            }
            Self::SetMtu { link, mtu, .. } => write!(f, "ip link set {link} mtu {mtu}"),
            Self::SetMaster { link, master, .. } => match master {
                Some(m) => write!(f, "ip link set {link} master {m}"),
                None => write!(f, "ip link set {link} nomaster"),
            },
            Self::SetBridge { link, opts, .. } => write!(
                f,
                "ip link set {link} type bridge vlan_filtering {} stp_state {}",
                on(opts.vlan_filtering),
                on(opts.stp)
            ),
            Self::AddAddress { link, net } => write!(f, "ip addr add {net} dev {link}"),
            Self::RemoveAddress { link, net } => write!(f, "ip addr del {net} dev {link}"),
            Self::AddRoute(r) => write!(f, "ip route add {r}"),
            Self::RemoveRoute(r) => write!(f, "ip route del {r}"),
            Self::AddBridgeVlan {
                link,
                vlan,
                on_self,
            }
            | Self::RemoveBridgeVlan {
                link,
                vlan,
                on_self,
            } => {
                let verb = if matches!(self, Self::AddBridgeVlan { .. }) {
                    "add"
                } else {
                    "del"
                };
                write!(f, "bridge vlan {verb} vid {} dev {link}", vlan.vid)?;
                if vlan.pvid {
                    write!(f, " pvid")?;
                }
                if vlan.untagged {
                    write!(f, " untagged")?;
                }
                if *on_self {
                    write!(f, " self")?;
                }
                Ok(())
            }
            Self::SetBridgeNf { value, .. } => write!(
                f,
                "sysctl net.bridge.bridge-nf-call-iptables={} net.bridge.bridge-nf-call-ip6tables={} net.bridge.bridge-nf-call-arptables={}",
                on(value.iptables),
                on(value.ip6tables),
                on(value.arptables)
            ),
            Self::SetIpv6 { link, value, .. } => write!(
                f,
                "sysctl net.ipv6.conf.{link}.accept_ra={} net.ipv6.conf.{link}.autoconf={} net.ipv6.conf.{link}.disable_ipv6={}",
                value.accept_ra,
                on(value.autoconf),
                on(value.disable_ipv6)
            ),
            Self::SetForwarding { value, .. } => write!(
                f,
                "sysctl net.ipv4.ip_forward={} net.ipv6.conf.all.forwarding={}",
                on(value.ipv4),
                on(value.ipv6)
            ),
        }
    }
}
