//! Running the host tools (mmdebstrap, mksquashfs, sgdisk, ...) with their output in the log
//! and their stderr in the error when they fail.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead as _, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

/// How many trailing lines of stderr a failure keeps: enough for a tool's own explanation
/// without flooding the terminal with a whole mmdebstrap log.
const STDERR_TAIL_LINES: usize = 40;

/// A host tool that could not be started or did not exit 0.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{command}`: {source} (is the tool installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); its stderr ends with:\n{stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("reading the output of `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The command line as a user would type it, for logs and errors.
pub fn shown(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg));
    }
    out
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command; every line it prints goes to the log as it comes (so long steps show
/// progress), and a failure carries the tail of its stderr. Returns its stdout.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    let command = shown(cmd);
    tracing::debug!("$ {command}");
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    let tool = cmd
        .get_program()
        .to_string_lossy()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_thread = child.stderr.take().map(|pipe| {
        let tail = Arc::clone(&tail);
        let tool = tool.clone();
        thread::spawn(move || forward_lines(pipe, &tool, Some(&tail)))
    });
    let mut stdout = String::new();
    if let Some(pipe) = child.stdout.take() {
        for line in BufReader::new(pipe).lines() {
            let line = line.map_err(|source| CommandError::Io {
                command: command.clone(),
                source,
            })?;
            tracing::debug!(target: "tool", "{tool}: {line}");
            stdout.push_str(&line);
            stdout.push('\n');
        }
    }
    if let Some(t) = stderr_thread {
        // A panic in the reader thread only loses log lines; the exit status still decides.
        let _ = t.join();
    }
    let status = child.wait().map_err(|source| CommandError::Io {
        command: command.clone(),
        source,
    })?;
    tracing::debug!(
        "{tool} exited with {status} after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        return Ok(stdout);
    }
    let stderr = tail
        .lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    Err(CommandError::Failed {
        command,
        status,
        stderr,
    })
}

fn forward_lines(pipe: impl Read, tool: &str, tail: Option<&Mutex<VecDeque<String>>>) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        tracing::info!(target: "tool", "{tool}: {line}");
        if let Some(tail) = tail
            && let Ok(mut t) = tail.lock()
        {
            if t.len() == STDERR_TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// Elapsed time for progress lines.
#[derive(Debug, Clone, Copy)]
pub struct Took(pub Instant);

impl fmt::Display for Took {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}s", self.0.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_command_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo out; echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sh -c 'echo out; echo boom >&2; exit 3'"),
            "{err}"
        );
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.ends_with("boom"), "{err}");
    }

    #[test]
    fn stdout_is_returned() {
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let err = run(&mut Command::new("no-such-tool-xyz")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
        assert!(err.to_string().contains("no-such-tool-xyz"));
    }
}
