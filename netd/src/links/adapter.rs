//! The OS adapter: everything the links code does to the kernel goes through [`Netlink`],
//! so that planning, applying and undoing are tested against [`super::FakeNetlink`].

use super::action::Action;
use super::state::Observed;

/// A request the kernel (or the fake) refused, with the errno it gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{operation}` failed: {message}{}", errno.map(|e| format!(" (errno {e})")).unwrap_or_default())]
pub struct NetlinkError {
    /// What was asked, in `ip` syntax.
    pub operation: String,
    /// The errno of the netlink NACK; `None` when the request never reached the kernel.
    pub errno: Option<i32>,
    pub message: String,
}

impl NetlinkError {
    pub fn errno(operation: impl Into<String>, errno: i32) -> Self {
        Self {
            operation: operation.into(),
            errno: Some(errno),
            message: {
                // "File exists (os error 17)": the errno is shown once, by Display.
                let m = std::io::Error::from_raw_os_error(errno).to_string();
                m.strip_suffix(&format!(" (os error {errno})"))
                    .map(str::to_string)
                    .unwrap_or(m)
            },
        }
    }

    pub fn other(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            errno: None,
            message: message.into(),
        }
    }
}

/// rtnetlink as netd uses it: read the whole state, and run one [`Action`] at a time.
pub trait Netlink {
    /// Links, addresses, main-table routes and the bridge netfilter switches.
    fn observe(&mut self) -> Result<Observed, NetlinkError>;

    /// Runs one step. A step is one kernel request, except creating a link, which also
    /// sets its alias.
    fn execute(&mut self, action: &Action) -> Result<(), NetlinkError>;
}
