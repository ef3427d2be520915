//! Validated newtypes for every value in appliance.toml that has rules of its own.
//!
//! Each type refuses a bad value while the file is parsed, so that the rest of the
//! system never sees, say, VLAN 5000 or a WireGuard key of 31 bytes. The error text
//! names what was wrong and carries a hint, which the loader turns into a diagnostic
//! with the key path and line of the value.

mod names;
mod net;
mod secrets;
mod units;

pub use names::{DatasetName, DomainName, DomainPattern, IfName, LabelName, Name, Timezone};
pub use net::{
    Cidr, Endpoint, Host, HttpUrl, Listen, MacAddr, Mtu, Port, PortRange, Upstream, UpstreamKind,
    VlanId,
};
pub use secrets::{
    AbsPath, DiskPath, Fingerprint, Key32, PasswordHash, SecretPath, SshPublicKey, WgKey,
};
pub use units::{Duration, RateLimit, RatePer, Size, TimeOfDay, TimeWindow};

use std::fmt;

/// Why a value was refused. `hint` tells the user what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub message: String,
    pub hint: &'static str,
}

/// Separates the message from the hint when a [`ValueError`] has to travel through
/// serde's string-only custom errors; the loader splits on it again.
pub(crate) const HINT_SEPARATOR: &str = "\u{1f}hint: ";

impl ValueError {
    pub fn new(message: impl Into<String>, hint: &'static str) -> Self {
        Self {
            message: message.into(),
            hint,
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{HINT_SEPARATOR}{}", self.message, self.hint)
    }
}

impl std::error::Error for ValueError {}

/// Implements FromStr, Display, serde and JsonSchema for a newtype that is written as a
/// string in the file and has a `parse(&str) -> Result<Self, ValueError>` constructor and
/// a `Display` impl producing the canonical form.
macro_rules! string_newtype {
    // With `integer`, a bare integer is also accepted, read as the same digits in a string.
    ($ty:ident, $desc:expr, $pattern:expr, integer) => {
        $crate::types::string_newtype!(@impl $ty, $desc, $pattern, true);
    };
    ($ty:ident, $desc:expr, $pattern:expr) => {
        $crate::types::string_newtype!(@impl $ty, $desc, $pattern, false);
    };
    (@impl $ty:ident, $desc:expr, $pattern:expr, $int:expr) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "\"{self}\"")
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::types::ValueError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = $crate::types::ValueError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($desc)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<$ty, E> {
                        if !$int {
                            return Err(E::invalid_type(serde::de::Unexpected::Unsigned(v), &self));
                        }
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$ty, E> {
                        if !$int {
                            return Err(E::invalid_type(serde::de::Unexpected::Signed(v), &self));
                        }
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut map = serde_json::Map::new();
                if $int {
                    map.insert("type".into(), serde_json::json!(["string", "integer"]));
                } else {
                    map.insert("type".into(), "string".into());
                    let pattern: Option<&str> = $pattern;
                    if let Some(p) = pattern {
                        map.insert("pattern".into(), p.into());
                    }
                }
                map.insert("description".into(), $desc.into());
                schemars::Schema::from(map)
            }
        }
    };
}
pub(crate) use string_newtype;
