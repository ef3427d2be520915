//! Running external tools (`nft`, `zfs`, `zpool`, `blkid`, ...) and reporting their failures
//! with everything needed to diagnose them without a rerun. Shared by the daemons that drive
//! OS tools.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

/// A tool that ran and failed, with everything needed to diagnose it without a rerun (`nft`,
/// for one, names the offending line of its input on stderr).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CommandFailure {
    /// The command line, shell-quoted for reading, not for running.
    pub command: String,
    /// Exit code; `None` when the tool was killed by a signal.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(f, "`{}` exited with status {code}", self.command)?,
            None => write!(f, "`{}` was killed by a signal", self.command)?,
        }
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            write!(f, ": {stderr}")?;
        }
        Ok(())
    }
}

/// Why a command produced no usable result.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Failed(#[from] CommandFailure),
}

/// Output of a command that exited with status 0.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` with `env` added to the inherited environment, feeding `stdin` when given,
/// and turns a non-zero exit into a [`CommandFailure`].
pub fn run<S: AsRef<str>>(
    argv: &[S],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Result<Output, CommandError> {
    run_redacted(argv, stdin, env, &[])
}

/// [`run`] for a command line that holds secrets (a tool that takes one only in argv):
/// each of `secrets` is shown as `*****` in the log, in the error's command line and in
/// the tool's output kept in the error.
pub fn run_redacted<S: AsRef<str>>(
    argv: &[S],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
    secrets: &[&str],
) -> Result<Output, CommandError> {
    let redact = |text: String| {
        secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(text, |t, s| t.replace(s, "*****"))
    };
    let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
    let command = redact(quote(&argv));
    tracing::debug!(%command, "running");
    let spawn_err = |source| CommandError::Spawn {
        command: command.clone(),
        source,
    };
    let (program, args) = argv.split_first().ok_or_else(|| {
        spawn_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command line",
        ))
    })?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe; its exit status then tells the story.
        let _ = pipe.write_all(input);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(Output { stdout, stderr })
    } else {
        Err(CommandFailure {
            command,
            status: out.status.code(),
            stdout: redact(stdout),
            stderr: redact(stderr),
        }
        .into())
    }
}

fn quote(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@,".contains(c))
            {
                (*a).to_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_secret_shows_nowhere_in_the_failure() {
        let Err(CommandError::Failed(f)) = run_redacted(
            &["sh", "-c", "echo $0; echo $0 >&2; exit 1", "s3cr3t"],
            None,
            &[],
            &["s3cr3t"],
        ) else {
            panic!("sh exited 0");
        };
        let shown = format!("{f} {}", f.stdout);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(f.command.ends_with("*****"), "{}", f.command);
    }

    #[test]
    fn failure_keeps_command_status_and_stderr() {
        let Err(CommandError::Failed(f)) =
            run(&["sh", "-c", "echo out; echo bad >&2; exit 3"], None, &[])
        else {
            panic!("expected a failure")
        };
        assert_eq!(f.status, Some(3));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "bad\n");
        assert_eq!(f.command, "sh -c 'echo out; echo bad >&2; exit 3'");
        assert!(f.to_string().ends_with("exited with status 3: bad"));
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let err = run(&["/nonexistent/zpool", "list"], None, &[]).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
        assert!(err.to_string().contains("/nonexistent/zpool list"));
    }

    #[test]
    fn stdin_is_fed_and_env_is_set() {
        let out = run(
            &["sh", "-c", "cat; echo \" $X\""],
            Some(b"hello"),
            &[("X", "y")],
        )
        .unwrap();
        assert_eq!(out.stdout, "hello y\n");
    }
}
