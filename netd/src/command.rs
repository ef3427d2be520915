//! Running external tools (`nft`, later `ip` and `wg` in tests) and reporting their failures.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

/// A tool that ran and failed. Everything needed to diagnose it without a rerun: `nft`
/// names the offending line of its input on stderr.
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

/// Runs `argv`, feeding `stdin` when given, and turns a non-zero exit into a
/// [`CommandFailure`].
pub fn run(argv: &[String], stdin: Option<&[u8]>) -> Result<Output, CommandError> {
    let command = quote(argv);
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
            stdout,
            stderr,
        }
        .into())
    }
}

fn quote(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@".contains(c))
            {
                a.clone()
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
    fn failure_keeps_status_and_stderr() {
        let argv: Vec<String> = ["sh", "-c", "echo out; echo bad line >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let Err(CommandError::Failed(f)) = run(&argv, None) else {
            panic!("expected a failure")
        };
        assert_eq!(f.status, Some(3));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "bad line\n");
        assert!(f.to_string().contains("exited with status 3: bad line"));
        assert!(f.command.starts_with("sh -c 'echo out;"));
    }

    #[test]
    fn stdin_is_fed() {
        let argv: Vec<String> = ["cat"].iter().map(|s| s.to_string()).collect();
        let out = run(&argv, Some(b"hello")).unwrap();
        assert_eq!(out.stdout, "hello");
    }
}
