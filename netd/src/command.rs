//! Running external tools (`nft`, later `ip` and `wg` in tests) and reporting their failures;
//! the runner is shared with the other daemons in [`appliance::command`].

pub use appliance::command::{CommandError, CommandFailure, Output};

/// Runs `argv`, feeding `stdin` when given, and turns a non-zero exit into a
/// [`CommandFailure`].
pub fn run(argv: &[String], stdin: Option<&[u8]>) -> Result<Output, CommandError> {
    appliance::command::run(argv, stdin, &[])
}
