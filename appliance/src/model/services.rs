//! DNS, updates and the management API.

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{is_false, is_true, yes};
use crate::types::{
    AbsPath, Cidr, DomainName, DomainPattern, Duration, HttpUrl, IfName, Key32, Listen, Name,
    PasswordHash, Port, RateLimit, SecretPath, Size, TimeWindow, Upstream,
};

/// The blocking DNS resolver (dnsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Run the resolver.
    pub enabled: bool,
    /// Where to listen: `address:port` or link names. Default (empty): the addresses of
    /// every link that has a DHCP server, that is the LAN side.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Listen>,
    /// Port for plain DNS on link names given in `listen`.
    pub port: Port,
    /// DNS-over-TLS port for clients; absent turns DoT off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dot_port: Option<Port>,
    /// DNS-over-HTTPS port for clients; absent turns DoH off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doh_port: Option<Port>,
    /// Upstream resolvers: `9.9.9.9`, `tls://dns.quad9.net`, `https://dns.quad9.net/dns-query`.
    /// Default (empty): the servers learned by DHCP on the WAN side.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    /// Cache capacity in entries; 0 turns the cache off.
    pub cache_size: u32,
    /// Lower bound for cached TTLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<Duration>,
    /// Upper bound for cached TTLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Duration>,
    /// Answer from expired cache entries while every upstream fails.
    pub serve_stale: bool,
    /// Keep private names off the upstreams (dnsmasq's `bogus-priv` and `domain-needed`):
    /// reverse lookups in private ranges (RFC 1918, RFC 6598, loopback, link-local, ULA),
    /// A/AAAA queries for single-label names, and names under `system.domain`, when not
    /// answered locally, get NXDOMAIN instead of being forwarded, unless a
    /// `dns.forwarding` entry covers them.
    pub never_forward_private: bool,
    /// Block at all; the default group and each client group can override.
    pub blocking: bool,
    /// How a blocked name is answered.
    pub block_mode: BlockMode,
    /// Addresses returned when `block_mode = "custom"`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_addresses: Vec<IpAddr>,
    /// Names never blocked, for every client. Allow wins over deny and lists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<DomainPattern>,
    /// Names always blocked, for every client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DomainPattern>,
    /// Block lists, keyed by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub lists: BTreeMap<Name, BlockList>,
    /// Client groups with their own lists. Clients in no group use every enabled list;
    /// a group named `default` replaces that.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<Name, ClientGroup>,
    /// Local names served by dnsd.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<LocalRecord>,
    /// Domains resolved by specific servers (a company network over VPN, say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forwarding: Vec<ConditionalForward>,
    /// Size of the on-disk query log ring; 0 turns the log off.
    pub query_log_size: Size,
    /// Queries a client address may send: `COUNT/PERIOD`, optionally `burst N` (default:
    /// COUNT at once). Past it the client is answered REFUSED. Off when absent (Pi-hole's
    /// `RATE_LIMIT=1000/60` is `"1000/minute"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: Vec::new(),
            port: Port::new(53).unwrap_or_else(|_| super::unreachable_default("dns port")),
            dot_port: None,
            doh_port: None,
            upstreams: Vec::new(),
            cache_size: 10_000,
            min_ttl: None,
            max_ttl: None,
            serve_stale: true,
            never_forward_private: true,
            blocking: true,
            block_mode: BlockMode::Null,
            block_addresses: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            lists: BTreeMap::new(),
            groups: BTreeMap::new(),
            records: Vec::new(),
            forwarding: Vec::new(),
            query_log_size: Size::from_bytes(64 << 20),
            rate_limit: None,
        }
    }
}

/// How a blocked name is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BlockMode {
    /// 0.0.0.0 and :: (what Pi-hole does by default).
    Null,
    /// NXDOMAIN: the name does not exist.
    Nxdomain,
    /// An empty answer: the name exists but has no such record.
    Nodata,
    /// The addresses in `block_addresses`.
    Custom,
}

/// Format of a block list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// Detect per line: hosts, plain domains, adblock and regex lines may be mixed.
    #[default]
    Auto,
    /// Hosts file: `0.0.0.0 ads.example` lines.
    Hosts,
    /// One domain per line.
    Domains,
    /// Adblock syntax: `||ads.example^`, with `@@||...^` exceptions.
    Adblock,
}

/// A block list, from a URL or a local file (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockList {
    /// Where to download the list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<HttpUrl>,
    /// A list file on the appliance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<AbsPath>,
    /// Format of the list.
    #[serde(default)]
    pub format: ListFormat,
    /// How often to download it again (conditional requests, so unchanged lists are cheap).
    #[serde(default = "default_list_interval")]
    pub update_interval: Duration,
    /// Set to false to keep the list in the file but unused.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
}

fn default_list_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Clients that get their own blocking settings, matched by zone, link or address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientGroup {
    /// Clients in these firewall zones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<Name>,
    /// Clients on these links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<IfName>,
    /// Clients with these addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<Cidr>,
    /// Block lists for this group, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<Name>,
    /// Names never blocked for this group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<DomainPattern>,
    /// Names always blocked for this group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DomainPattern>,
    /// Override of `dns.block_mode` for this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_mode: Option<BlockMode>,
    /// Override of `dns.blocking` for this group: false exempts it, true blocks for it
    /// even while `dns.blocking` is off; unset follows `dns.blocking`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking: Option<bool>,
}

/// A local DNS name: addresses (A/AAAA, with PTR) or an alias (CNAME), exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalRecord {
    /// The name, like `nas.lan`.
    pub name: DomainName,
    /// Its addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Or the name it is an alias of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<DomainName>,
    /// TTL of the answers.
    #[serde(default = "default_record_ttl")]
    pub ttl: Duration,
}

fn default_record_ttl() -> Duration {
    Duration::from_secs(300)
}

/// Queries for `domain` and its subdomains go to `upstreams` instead of the usual ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionalForward {
    /// The domain, like `corp.example`.
    pub domain: DomainName,
    /// Servers for it.
    pub upstreams: Vec<Upstream>,
}

/// Over-the-air updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Update {
    /// Where to look for new bundles. Default: none (updates only by hand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<HttpUrl>,
    /// ed25519 public keys (base64 of 32 bytes) whose signatures are accepted, on top of
    /// the keys built into the image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<Key32>,
    /// Install downloaded updates on their own, within `install_window`.
    #[serde(skip_serializing_if = "is_false")]
    pub auto_install: bool,
    /// Daily window, in `system.timezone`, when automatic installs and reboots may happen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_window: Option<TimeWindow>,
    /// How often to check the channel.
    pub check_interval: Duration,
}

impl Default for Update {
    fn default() -> Self {
        Self {
            channel: None,
            trusted_keys: Vec::new(),
            auto_install: false,
            install_window: None,
            check_interval: Duration::from_secs(6 * 3600),
        }
    }
}

/// The management API (HTTPS) and its accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Where to listen: `address:port` or link names. Default (empty): the addresses of
    /// every link that has a DHCP server, that is the LAN side, never the WAN.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<Listen>,
    /// HTTPS port for link names given in `listen`.
    pub port: Port,
    /// Lifetime of a login session.
    pub session_timeout: Duration,
    /// Accounts, keyed by user name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<Name, ApiUser>,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            port: Port::new(443).unwrap_or_else(|_| super::unreachable_default("api port")),
            session_timeout: Duration::from_secs(12 * 3600),
            users: BTreeMap::new(),
        }
    }
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read and change everything.
    Admin,
    /// Read status, statistics and the config (without secrets).
    Viewer,
}

/// An API account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiUser {
    /// What the account may do.
    pub role: Role,
    /// argon2id hash of the password (`applctl passwd` prints one). Never the password.
    pub password_hash: PasswordHash,
    /// File with a TOTP secret (mode 0600); when present, logins need the second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret_file: Option<SecretPath>,
    /// Set to true to keep the account but refuse its logins.
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}
