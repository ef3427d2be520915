//! Running the `zfs`, `zpool` and `blkid` tools and recording their failures; the runner is
//! shared with the other daemons in [`appliance::command`].

pub use appliance::command::{CommandError, CommandFailure};

/// Runs `argv` and returns its stdout when it exits with status 0.
pub fn run<S: AsRef<str>>(argv: &[S]) -> Result<String, CommandError> {
    // zfs and zpool print numbers and dates for the C locale only when asked, and
    // `zpool status` prints times (ctime) in the process's zone: make it UTC.
    appliance::command::run(argv, None, &[("LC_ALL", "C"), ("TZ", "UTC")]).map(|out| out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zfs_tools_run_in_the_c_locale_and_utc() {
        let out = run(&["sh", "-c", "echo $LC_ALL $TZ"]).unwrap();
        assert_eq!(out, "C UTC\n");
    }
}
