//! The OS adapter: everything the WireGuard code does to the kernel goes through
//! [`WgKernel`], so that planning, applying and undoing are tested against
//! [`super::FakeWg`].

use super::action::Action;
use super::state::Observed;

/// A request the kernel (or the fake) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{operation}` failed: {message}")]
pub struct WgError {
    /// What was asked, in `wg`/`ip` syntax.
    pub operation: String,
    pub message: String,
}

impl WgError {
    pub fn new(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            operation: operation.into(),
            message: message.into(),
        }
    }
}

/// Kernel WireGuard as netd uses it.
pub trait WgKernel {
    /// netd's WireGuard links with their peers, and the names of every other link.
    fn observe(&mut self) -> Result<Observed, WgError>;

    /// Runs a batch of steps. A batch is either one link step, or device-config steps
    /// ([`Action::is_device_config`]) of one interface, which the kernel takes in one
    /// `WG_CMD_SET_DEVICE` (split into messages only by size). A failed batch may have
    /// been applied in part; the inverses of all its steps are safe to run.
    fn execute(&mut self, batch: &[Action]) -> Result<(), WgError>;
}
