//! The SSH transport, as syncoid does it, with the same protocol as the TLS one: the sender
//! runs the system `ssh` client and speaks [`super::proto`] over the child's stdin and
//! stdout; on the target, `stored replication serve-stdio` answers on its own stdin and
//! stdout (normally as the forced command of the sender's key in authorized_keys).
//!
//! - The target's host key is pinned by the job's `target_fingerprint`: the SHA-256 of the
//!   key, as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it (`SHA256:...`) or
//!   as 64 hex digits. The key with that fingerprint is kept in
//!   `/data/stored/replication/<job>.known_hosts` (fetched with `ssh-keyscan` and checked
//!   against the pin when the file lacks it) and ssh runs with `StrictHostKeyChecking=yes`
//!   against that file alone, so no other key is ever accepted.
//! - The login is `<ssh_user>@host` (root unless the job names another user) with the
//!   job's `identity_file` (an OpenSSH private key, mode 0600), `BatchMode=yes` and no user
//!   or system ssh_config (`-F none`). A user other than root needs ZFS's delegated
//!   permissions on the target (docs/storage.md, "Over SSH").
//! - What the key may do on the target is set there, by the forced command:
//!
//!   ```text
//!   command="stored replication serve-stdio --job offsite --dataset backup",restrict ssh-ed25519 AAAA... sender
//!   ```
//!
//!   `serve-stdio` receives only below its `--dataset`s and only for its `--job`.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead as _, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance::model::ReplicationJob;
use appliance::types::Host;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::ReplError;
use super::send::Conn;

/// Where the pinned host keys live, one file per job.
pub const KNOWN_HOSTS_DIR: &str = "/data/stored/replication";
/// Lines of ssh's stderr kept for an error message.
const STDERR_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("job {job}: transport = \"ssh\" needs {key}; {hint}")]
    Missing {
        job: String,
        key: &'static str,
        hint: &'static str,
    },
    #[error(
        "job {job}: no host key of {host} has the fingerprint {pin} (target_fingerprint); \
         it offered {offered}. On the target, `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` \
         prints the right one"
    )]
    HostKey {
        job: String,
        host: String,
        pin: String,
        offered: String,
    },
    #[error("job {job}: cannot run {program}: {source}; is OpenSSH's client installed?")]
    Spawn {
        job: String,
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "job {job}: ssh-keyscan of {host} failed: {why}; is sshd running there and the port open?"
    )]
    Keyscan {
        job: String,
        host: String,
        why: String,
    },
    #[error("job {job}: cannot keep the pinned host key in {path}: {source}")]
    KnownHosts {
        job: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Starts `ssh` to the job's target running `stored replication serve-stdio`.
pub(super) fn connect(name: &str, job: &ReplicationJob) -> Result<Box<dyn Conn>, ReplError> {
    let identity = job.identity_file.as_ref().ok_or(SshError::Missing {
        job: name.to_owned(),
        key: "identity_file",
        hint: "an OpenSSH private key (ssh-keygen -t ed25519 -N '' -f FILE), its .pub in the \
               target's authorized_keys",
    })?;
    let pin = job.target_fingerprint.as_ref().ok_or(SshError::Missing {
        job: name.to_owned(),
        key: "target_fingerprint",
        hint: "the target's host key fingerprint, as `ssh-keygen -lf \
               /etc/ssh/ssh_host_ed25519_key.pub` prints it there",
    })?;
    let endpoint = job.target.as_ref().ok_or(SshError::Missing {
        job: name.to_owned(),
        key: "target",
        hint: "the target's sshd as host:port",
    })?;
    let host = match &endpoint.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.to_string(),
    };
    let port = endpoint.port.to_string();
    let target = Target {
        job: name,
        host: &host,
        port: &port,
        pin: &pin.to_string(),
    };
    let known_hosts = target.pinned_known_hosts(Path::new(KNOWN_HOSTS_DIR), "ssh-keyscan")?;
    let user = job.ssh_user.as_ref().map_or("root", |u| u.as_str());
    let remote = format!(
        "stored replication serve-stdio --job {name} --dataset {}",
        job.target_dataset.as_str()
    );
    let mut cmd = Command::new("ssh");
    cmd.args(ssh_args(
        name,
        Path::new(identity.as_str()),
        &known_hosts,
        &port,
        &format!("{user}@{host}"),
    ))
    .arg(remote);
    Ok(Box::new(SshConn::spawn(name, cmd)?))
}

/// The ssh options: only the pinned key, only the job's identity, no prompts, no config
/// files, no escape character or tty (the stream is binary), and keepalives so that a dead
/// link ends the run instead of hanging it. `login` is `user@host`.
fn ssh_args(
    job: &str,
    identity: &Path,
    known_hosts: &Path,
    port: &str,
    login: &str,
) -> Vec<String> {
    let mut args: Vec<String> = ["-F", "none", "-T", "-e", "none", "-i"]
        .map(str::to_owned)
        .into();
    args.push(identity.display().to_string());
    for o in [
        "BatchMode=yes".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        format!("HostKeyAlias={}", alias(job)),
        "ConnectTimeout=30".to_owned(),
        "ServerAliveInterval=15".to_owned(),
        "ServerAliveCountMax=4".to_owned(),
        "Compression=no".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ] {
        args.push("-o".to_owned());
        args.push(o);
    }
    // The model's user and host names cannot start with '-'; `--` keeps it so if that ever
    // changes.
    args.extend([
        "-p".to_owned(),
        port.to_owned(),
        "--".to_owned(),
        login.to_owned(),
    ]);
    args
}

/// The name the pinned key is filed under, so that the entry does not depend on how the
/// host is written (name, v4, v6, port).
fn alias(job: &str) -> String {
    format!("stored-{job}")
}

/// `sha256:<hex>` of an OpenSSH public key blob (the base64 field of a known_hosts line),
/// the form [`appliance::types::Fingerprint`] displays.
fn fingerprint(key_base64: &str) -> Option<String> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(key_base64)
        .ok()?;
    Some(format!("sha256:{}", hex::encode(Sha256::digest(blob))))
}

/// `type base64` of the first line of `text` (known_hosts or ssh-keyscan output) whose key
/// has the fingerprint `pin`.
fn matching_key<'a>(text: &'a str, pin: &str) -> Option<(&'a str, &'a str)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_host, kind, key) = (f.next()?, f.next()?, f.next()?);
            Some((kind, key))
        })
        .find(|(_, key)| fingerprint(key).as_deref() == Some(pin))
}

struct Target<'a> {
    job: &'a str,
    host: &'a str,
    port: &'a str,
    pin: &'a str,
}

impl Target<'_> {
    /// The job's known_hosts file holding the pinned key; made (through `keyscan`, the
    /// ssh-keyscan program) when missing or when it holds another key.
    fn pinned_known_hosts(&self, dir: &Path, keyscan: &str) -> Result<PathBuf, SshError> {
        let path = dir.join(format!("{}.known_hosts", self.job));
        if let Ok(text) = fs::read_to_string(&path)
            && matching_key(&text, self.pin).is_some()
        {
            return Ok(path);
        }
        let out = Command::new(keyscan)
            .args(["-T", "20", "-p", self.port, self.host])
            .output()
            .map_err(|source| SshError::Spawn {
                job: self.job.to_owned(),
                program: "ssh-keyscan",
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Err(SshError::Keyscan {
                job: self.job.to_owned(),
                host: format!("{}:{}", self.host, self.port),
                why: format!(
                    "no key came back ({}){}",
                    out.status,
                    last_line(&String::from_utf8_lossy(&out.stderr))
                ),
            });
        }
        let Some((kind, key)) = matching_key(&text, self.pin) else {
            let offered: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let mut f = l.split_whitespace().skip(1);
                    let kind = f.next()?;
                    Some(format!("{kind} {}", fingerprint(f.next()?)?))
                })
                .collect();
            return Err(SshError::HostKey {
                job: self.job.to_owned(),
                host: format!("{}:{}", self.host, self.port),
                pin: self.pin.to_owned(),
                offered: offered.join(", "),
            });
        };
        let write = || -> io::Result<()> {
            fs::create_dir_all(dir)?;
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, format!("{} {kind} {key}\n", alias(self.job)))?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| SshError::KnownHosts {
            job: self.job.to_owned(),
            path: path.clone(),
            source,
        })?;
        tracing::info!(
            job = self.job,
            host = self.host,
            kind,
            "pinned the target's host key"
        );
        Ok(path)
    }
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

/// An `ssh` child as the byte stream: its stdout read, its stdin written. Its stderr (ssh's
/// own messages and the remote stored's log) is logged and its tail kept, so that a link
/// that ends says why ("Permission denied (publickey)", "Host key verification failed").
pub(super) struct SshConn {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<VecDeque<String>>>,
}

impl SshConn {
    pub(super) fn spawn(job: &str, mut cmd: Command) -> Result<Self, SshError> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SshError::Spawn {
                job: job.to_owned(),
                program: "ssh",
                source,
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SshError::Spawn {
                job: job.to_owned(),
                program: "ssh",
                source: io::Error::other("the child's pipes are missing"),
            });
        };
        let job = job.to_owned();
        let stderr = std::thread::spawn(move || {
            let mut tail = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::info!(job = %job, "ssh: {line}");
                if tail.len() == STDERR_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        });
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout,
            stderr: Some(stderr),
        })
    }

    /// Waits up to `timeout` for ssh to exit, then kills it.
    fn reap(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break "killed after the stream ended".to_owned();
                }
                Err(e) => break e.to_string(),
            }
        }
    }

    /// Why the stream ended: ssh's exit status and the tail of its stderr.
    fn ended(&mut self, e: Option<io::Error>) -> io::Error {
        self.stdin = None;
        let status = self.reap(Duration::from_secs(5));
        let tail = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .map(|t| Vec::from(t).join(" / "))
            .unwrap_or_default();
        let cause = e.map(|e| format!("{e}; ")).unwrap_or_default();
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{cause}ssh ended ({status}): {tail}"),
        )
    }
}

impl Read for SshConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.stdout.read(buf) {
            Ok(0) if !buf.is_empty() => Err(self.ended(None)),
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(self.ended(Some(e))),
            r => r,
        }
    }
}

impl Write for SshConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match self.stdin.as_mut() {
            Some(w) => w.write(buf),
            None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
        };
        r.map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                e
            } else {
                self.ended(Some(e))
            }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.stdin.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl Conn for SshConn {
    fn close(&mut self) {
        // The end of stdin ends serve-stdio on the target, and ssh with it.
        self.stdin = None;
        self.reap(Duration::from_secs(10));
    }
}

impl Drop for SshConn {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// stdin and stdout as one stream.
struct Stdio2 {
    r: io::StdinLock<'static>,
    w: io::StdoutLock<'static>,
}

impl Read for Stdio2 {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Stdio2 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// `stored replication serve-stdio`: one sender on stdin and stdout, receiving only below
/// `datasets` and, with `job`, only for that job. Logs go to stderr (back to the sender
/// through ssh).
pub fn serve_stdio(datasets: &[String], job: Option<&str>) -> Result<(), ReplError> {
    let peer = std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| c.split_whitespace().next().map(|a| format!("ssh {a}")))
        .unwrap_or_else(|| "stdin".to_owned());
    tracing::info!(%peer, ?datasets, job, "serving a replication sender on stdin/stdout");
    let mut conn = Stdio2 {
        r: io::stdin().lock(),
        w: io::stdout().lock(),
    };
    super::receive::serve_conn(&mut conn, &peer, datasets, job)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ed25519 public key; `ssh-keygen -lf` prints its fingerprint as SSH_FP.
    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINXySKGuJjkg75t1exI97aXMfOe4zAz5EnIcTWjoE7Ir";

    const SSH_FP: &str = "SHA256:7SpWyHJr2FeHAqit4HsltWTIhFj6lNyuGSN8lpfHCOM";

    fn pin() -> String {
        fingerprint(KEY).unwrap()
    }

    #[test]
    fn fingerprints_are_sha256_of_the_key_blob_as_the_model_prints_them() {
        let parsed = appliance::types::Fingerprint::parse(SSH_FP).unwrap();
        assert_eq!(parsed.to_string(), pin());
        assert!(fingerprint("not base64!").is_none());
    }

    #[test]
    fn only_the_pinned_key_is_picked_from_keyscan_output() {
        let other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMAQPWw5hSzZXYqfP4yNr1L2hkZy9gzrZXNQ2yC2WJi";
        let scan = format!(
            "# 10.0.0.2:22 SSH-2.0-OpenSSH_9.2p1\n10.0.0.2 ssh-ed25519 {other}\n\
             10.0.0.2 ssh-ed25519 {KEY}\n"
        );
        assert_eq!(matching_key(&scan, &pin()), Some(("ssh-ed25519", KEY)));
        assert_eq!(
            matching_key(&format!("h ssh-ed25519 {other}\n"), &pin()),
            None
        );
    }

    /// A fake ssh-keyscan (a shell script printing fixed lines): the matching key is
    /// written under the job's alias and reused without a second scan; a wrong pin is
    /// refused with every offered fingerprint named.
    #[test]
    fn the_known_hosts_file_holds_the_pinned_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let scan = dir.path().join("keyscan");
        let calls = dir.path().join("calls");
        fs::write(
            &scan,
            format!(
                "#!/bin/sh\necho x >> {}\necho \"$5 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ\"\n\
                 echo \"$5 ssh-ed25519 {KEY}\"\n",
                calls.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&scan, fs::Permissions::from_mode(0o755)).unwrap();
        let kh_dir = dir.path().join("kh");
        let pin = pin();
        let t = Target {
            job: "offsite",
            host: "10.0.0.2",
            port: "22",
            pin: &pin,
        };
        let scan = scan.to_str().unwrap();
        let path = t.pinned_known_hosts(&kh_dir, scan).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("stored-offsite ssh-ed25519 {KEY}\n")
        );
        t.pinned_known_hosts(&kh_dir, scan).unwrap();
        assert_eq!(fs::read_to_string(&calls).unwrap().lines().count(), 1);

        let wrong = format!("sha256:{}", "00".repeat(32));
        let t = Target { pin: &wrong, ..t };
        let e = t.pinned_known_hosts(&kh_dir, scan).unwrap_err().to_string();
        assert!(e.contains("no host key of 10.0.0.2:22"), "{e}");
        assert!(e.contains(&format!("ssh-ed25519 {pin}")), "{e}");
    }

    #[test]
    fn ssh_runs_with_the_pinned_file_only_and_no_prompts() {
        let a = ssh_args(
            "offsite",
            Path::new("/data/repl/id"),
            Path::new("/data/stored/replication/offsite.known_hosts"),
            "2222",
            "zsend@fe80::1",
        )
        .join(" ");
        for want in [
            "-F none",
            "-i /data/repl/id",
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/data/stored/replication/offsite.known_hosts",
            "GlobalKnownHostsFile=/dev/null",
            "HostKeyAlias=stored-offsite",
            "-p 2222 -- zsend@fe80::1",
        ] {
            assert!(a.contains(want), "{want} not in {a}");
        }
    }

    /// The transport over a child's pipes (less than a pipe's buffer, as `cat` echoes
    /// while nobody reads): frames written to `cat` come back whole, and
    /// the end of the child is an error that carries its stderr.
    #[test]
    fn a_child_is_a_framed_stream_and_its_end_says_why() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat"]);
        let mut conn = SshConn::spawn("t", cmd).unwrap();
        let req = super::super::proto::Request::State {
            dataset: "backup/a".into(),
        };
        super::super::proto::send_msg(&mut conn, &req).unwrap();
        super::super::proto::send_data(&mut conn, &[7u8; 20_000]).unwrap();
        let back: super::super::proto::Request = super::super::proto::read_msg(&mut conn).unwrap();
        assert_eq!(back, req);
        assert!(matches!(
            super::super::proto::read_frame(&mut conn).unwrap(),
            super::super::proto::Frame::Data(d) if d.len() == 20_000
        ));
        conn.close();

        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo 'root@h: Permission denied (publickey).' >&2; exit 255",
        ]);
        let mut conn = SshConn::spawn("t", cmd).unwrap();
        let e = super::super::proto::read_frame(&mut conn).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("Permission denied (publickey)"), "{e}");
        assert!(e.contains("255"), "{e}");
    }
}
