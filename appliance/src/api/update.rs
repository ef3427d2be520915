//! The OTA updater as the API and `applctl update` show it: the status document and which
//! failures are the caller's (a bundle that is not trusted, a downgrade) rather than the
//! appliance's. Shared so that `applctl update status --json` and `GET /api/v1/update/status`
//! answer the same document.

use image::install::{Report, Status, UpdateError};
use serde_json::{Value, json};

/// The updater's state: running slot and release, the next boot, the last install.
pub fn status_json(s: &Status) -> Value {
    json!({
        "running": s.running.to_string(),
        "version": s.release.version.to_string(),
        "security_version": s.release.security_version,
        "compatible": s.release.compatible,
        "next_boot": s.next_boot.map(|(slot, trial)| json!({"slot": slot.to_string(), "trial": trial})),
        "boot_state_error": s.boot.as_ref().err(),
        "state": s.state,
    })
}

/// A finished install.
pub fn report_json(r: &Report) -> Value {
    json!({
        "version": r.version.to_string(),
        "slot": r.slot.to_string(),
        "bytes": r.bytes,
        "resumed_at_chunk": r.resumed_at_chunk,
        "seconds": r.took.as_secs_f64(),
        "next": "the new slot boots on trial at the next reboot",
    })
}

/// Whether the request (the bundle, the source, a rollback asked for) is at fault, not the
/// appliance: such failures change nothing and are fixed by the caller.
pub fn is_input_error(e: &UpdateError) -> bool {
    use image::bundle::BundleError as B;
    match e {
        UpdateError::Bundle(
            B::NotABundle
            | B::Untrusted { .. }
            | B::NotEnoughSignatures { .. }
            | B::BadManifest(_)
            | B::UnsupportedFormat(_)
            | B::Incompatible { .. }
            | B::Expired { .. }
            | B::Downgrade { .. }
            | B::BelowFloor { .. }
            | B::TooOld { .. }
            | B::ChunkMismatch { .. }
            | B::TrailingData
            | B::HeaderTooLarge(_)
            | B::BadHeader(_),
        )
        | UpdateError::TooBig { .. }
        | UpdateError::NothingToRollBackTo(_)
        | UpdateError::RollbackBelowFloor { .. } => true,
        UpdateError::Bundle(B::Io(_) | B::Truncated { .. })
        | UpdateError::BootState(_)
        | UpdateError::StateFile(_)
        | UpdateError::Keys(_)
        | UpdateError::Io { .. }
        | UpdateError::Release { .. }
        | UpdateError::UnknownSlot(_)
        | UpdateError::ReadBack { .. }
        | UpdateError::SourceFailed { .. } => false,
    }
}
