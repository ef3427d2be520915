//! applctl driven as a user drives it: files in, exit codes and output checked.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }
    fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_applctl"));
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("APPLIANCE_CONFIG_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        child.wait_with_output().unwrap()
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

const DEFAULT: &str = include_str!("../config/default.toml");

fn with_vlan() -> String {
    format!(
        "{DEFAULT}\n[vlans.iot]\nparent = \"lan\"\nid = 20\naddresses = [\"192.168.20.1/24\"]\n"
    )
}

#[test]
fn validate_accepts_the_default() {
    let env = Env::new();
    let f = env.file("a.toml", DEFAULT);
    let o = env.run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("valid"));
}

#[test]
fn validate_reports_every_mistake_with_path_and_line_and_exits_2() {
    let env = Env::new();
    let text = DEFAULT.replace("device = \"eth1\"", "device = \"eth1\"\nmtu = 70000")
        + "\n[vlans.iot]\nparent = \"lan\"\nid = 5000\n\n[wireguard.wg0]\naddresses = [\"10.8.0.1/24\"]\nprivate_key = \"x\"\n";
    let f = env.file("bad.toml", &text);
    let o = env.run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let e = err(&o);
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    assert!(
        e.contains(&format!("bad.toml:{}:", line_of("mtu = 70000"))),
        "{e}"
    );
    assert!(e.contains("interfaces.lan.mtu"), "{e}");
    assert!(
        e.contains(&format!("bad.toml:{}:6", line_of("id = 5000"))),
        "{e}"
    );
    assert!(e.contains("vlans.iot.id"), "{e}");
    assert!(
        e.contains(&format!("bad.toml:{}:1", line_of("private_key"))),
        "{e}"
    );
    assert!(e.contains("wireguard.wg0.private_key"), "{e}");
    assert!(e.contains("3 errors"), "{e}");
    assert!(e.contains("nothing was changed"), "{e}");
    assert!(
        !e.contains('\x1b'),
        "no colour when stderr is not a terminal"
    );
}

/// The "done when", through the binary: every file in tests/invalid exits 2 with
/// exactly the key paths, lines and kinds its `# expect:` header lists, and every file in
/// tests/valid exits 0.
#[test]
fn validate_rejects_each_bad_file_with_its_path_and_line() {
    let env = Env::new();
    let mut problems = Vec::new();
    let invalid = common::toml_files("invalid");
    for file in &invalid {
        let src = std::fs::read_to_string(file).unwrap();
        let mut want: Vec<(String, u64, String)> = src
            .lines()
            .map_while(|l| l.strip_prefix('#'))
            .filter_map(|c| c.trim().strip_prefix("expect:"))
            .map(|e| {
                let mut parts = e.trim().rsplitn(3, ' ');
                let kind = parts.next().unwrap().to_owned();
                let line = parts.next().unwrap().parse().unwrap();
                (parts.next().unwrap().trim().to_owned(), line, kind)
            })
            .collect();
        want.sort();
        let o = env.run(&["validate", "--json", file.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&out(&o))
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", file.display(), out(&o)));
        let mut got: Vec<(String, u64, String)> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_owned(),
                    e["line"].as_u64().unwrap(),
                    e["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        got.sort();
        if code(&o) != 2 || got != want {
            problems.push(format!(
                "{}: exit {}, expected {want:?}, got {got:?}",
                file.display(),
                code(&o)
            ));
        }
    }
    for file in common::toml_files("valid") {
        let o = env.run(&["validate", file.to_str().unwrap()]);
        if code(&o) != 0 {
            problems.push(format!(
                "{}: exit {}: {}",
                file.display(),
                code(&o),
                err(&o)
            ));
        }
    }
    assert!(invalid.len() >= 40, "only {} invalid cases", invalid.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn validate_json_lists_path_line_and_kind() {
    let env = Env::new();
    let text = DEFAULT.replace("start = \"192.168.1.100\"", "start = \"192.168.9.100\"");
    let f = env.file("bad.toml", &text);
    let o = env.run(&["validate", "--json", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["valid"], false);
    let e = &v["errors"][0];
    assert_eq!(e["path"], "dhcp.lan.start");
    assert_eq!(e["kind"], "outside_subnet");
    let line = text.lines().position(|l| l.starts_with("start =")).unwrap() + 1;
    assert_eq!(e["line"], line);
}

#[test]
fn validate_reads_stdin() {
    let env = Env::new();
    let o = env.run_stdin(&["validate", "-"], Some(DEFAULT));
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = env.run_stdin(&["validate", "-"], Some("version = 1\nbogus = 1\n"));
    assert_eq!(code(&o), 2);
    assert!(err(&o).contains("<stdin>:2:1"), "{}", err(&o));
}

#[test]
fn unreadable_file_exits_1_and_bad_usage_exits_2() {
    let env = Env::new();
    let o = env.run(&["validate", "/nonexistent/appliance.toml"]);
    assert_eq!(code(&o), 1);
    assert!(err(&o).contains("/nonexistent/appliance.toml"));
    let o = env.run(&["frobnicate"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let env = Env::new();
    let f = env.file("bad.toml", "version = 1\nbogus = 1\n");
    let o = env.run(&["--color", "always", "validate", f.to_str().unwrap()]);
    assert!(err(&o).contains('\x1b'));
    let o = env.run(&["--color", "never", "validate", f.to_str().unwrap()]);
    assert!(!err(&o).contains('\x1b'));
    let o = env.run(&["validate", f.to_str().unwrap()]);
    assert!(
        !err(&o).contains('\x1b'),
        "auto: piped output has no colour"
    );
}

/// `--color auto` on a terminal: `script` (util-linux) gives applctl a pseudo-terminal and
/// copies what it prints to its own stdout.
#[test]
fn colour_on_a_terminal_unless_no_color() {
    let env = Env::new();
    let f = env.file("bad.toml", "version = 1\nbogus = 1\n");
    let cmd = format!(
        "{} --data-dir {} validate {}",
        env!("CARGO_BIN_EXE_applctl"),
        env.data_dir().display(),
        f.display()
    );
    let on_terminal = |no_color: bool| {
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"])
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if no_color {
            c.env("NO_COLOR", "1");
        }
        let o = c
            .output()
            .expect("`script` (package bsdutils) runs applctl on a pseudo-terminal");
        assert_eq!(code(&o), 2, "{}{}", out(&o), err(&o));
        out(&o)
    };
    let coloured = on_terminal(false);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured}"
    );
    assert!(coloured.contains("bogus"), "{coloured}");
    let plain = on_terminal(true);
    assert!(!plain.contains('\x1b'), "NO_COLOR ignored: {plain}");
    assert!(plain.contains("bogus"), "{plain}");
}

#[test]
fn plan_against_the_default_when_nothing_is_stored() {
    let env = Env::new();
    let f = env.file("a.toml", &with_vlan());
    let o = env.run(&["plan", f.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let s = out(&o);
    assert!(s.contains("against the built-in default"), "{s}");
    // dnsd answers its own name with the LAN addresses, so a new VLAN concerns it too.
    assert!(s.contains("vlans (netd, dnsd)"), "{s}");
    assert!(s.contains("daemons to apply: netd, dnsd."), "{s}");
    assert!(
        s.contains("+ vlans.iot = { parent = \"lan\", id = 20"),
        "{s}"
    );
    assert!(s.contains("1 change in 1 section"), "{s}");
    assert!(s.contains("confirm window"), "{s}");

    let o = env.run(&["plan", "--json", f.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["plan"]["changes"][0]["path"], "vlans.iot");
    assert_eq!(v["plan"]["changes"][0]["op"], "add");
    assert_eq!(v["plan"]["needs_confirm"], true);
}

#[test]
fn plan_of_an_invalid_file_exits_2() {
    let env = Env::new();
    let f = env.file(
        "a.toml",
        "version = 1\n[vlans.x]\nparent = \"lan\"\nid = 0\n",
    );
    let o = env.run(&["plan", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(err(&o).contains("vlans.x.id"));
}

#[test]
fn save_history_show_diff_rollback() {
    let env = Env::new();
    let a = env.file("a.toml", DEFAULT);
    let b = env.file("b.toml", &with_vlan());

    let o = env.run(&["config", "history"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("No generations"));

    assert_eq!(code(&env.run(&["config", "save", a.to_str().unwrap()])), 0);
    let o = env.run(&[
        "config",
        "save",
        "--comment",
        "add iot vlan",
        b.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("generation 2"));

    // Planning the same file again plans nothing.
    let o = env.run(&["plan", b.to_str().unwrap()]);
    assert!(out(&o).contains("No changes"), "{}", out(&o));

    let o = env.run(&["config", "history", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    let gens = v["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[0]["number"], 2);
    assert_eq!(gens[0]["active"], true);
    assert_eq!(gens[0]["comment"], "add iot vlan");

    let o = env.run(&["config", "show", "1"]);
    assert_eq!(out(&o), DEFAULT);
    let o = env.run(&["config", "show", "current"]);
    assert_eq!(out(&o), with_vlan());

    let o = env.run(&["config", "diff", "1", "2"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    assert!(out(&o).contains("+ vlans.iot"), "{}", out(&o));
    let o = env.run(&["config", "diff", "2", "default"]);
    assert!(out(&o).contains("- vlans.iot"), "{}", out(&o));

    let o = env.run(&["config", "rollback", "1"]);
    assert_eq!(code(&o), 0, "{}", err(&o));
    let o = env.run(&["config", "show", "current"]);
    assert_eq!(out(&o), DEFAULT);
    let o = env.run(&["config", "history"]);
    assert!(
        out(&o)
            .lines()
            .any(|l| l.starts_with('*') && l.contains(" 1 ")),
        "{}",
        out(&o)
    );

    let o = env.run(&["config", "rollback", "9"]);
    assert_eq!(code(&o), 2, "{}", err(&o));
}

#[test]
fn saving_an_invalid_file_stores_nothing() {
    let env = Env::new();
    let f = env.file(
        "bad.toml",
        "version = 1\n[vlans.x]\nparent = \"lan\"\nid = 0\n",
    );
    let o = env.run(&["config", "save", f.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    let o = env.run(&["config", "history", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap_or_default();
    assert!(
        v["generations"].as_array().is_none_or(|g| g.is_empty()),
        "{}",
        out(&o)
    );
}

#[test]
fn a_corrupt_generation_is_never_shown() {
    let env = Env::new();
    let a = env.file("a.toml", DEFAULT);
    assert_eq!(code(&env.run(&["config", "save", a.to_str().unwrap()])), 0);
    assert_eq!(code(&env.run(&["config", "save", a.to_str().unwrap()])), 0);
    let gen2 = find_generation_file(&env.data_dir(), 2);
    let text = std::fs::read(&gen2).unwrap();
    std::fs::write(&gen2, &text[..text.len() / 2]).unwrap();

    let o = env.run(&["config", "show", "2"]);
    assert_eq!(code(&o), 1, "{}", out(&o));
    assert!(err(&o).to_lowercase().contains("corrupt"), "{}", err(&o));
    // current falls back to the intact generation 1.
    let o = env.run(&["config", "show", "current"]);
    assert_eq!(out(&o), DEFAULT);
    let o = env.run(&["config", "history"]);
    assert!(err(&o).contains("warning"), "{}", err(&o));
}

fn find_generation_file(dir: &Path, n: u64) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.contains(&format!("{n:08}")))
        })
        .unwrap()
}

#[test]
fn schema_and_default_commands() {
    let env = Env::new();
    let o = env.run(&["schema"]);
    assert_eq!(code(&o), 0);
    let committed = include_str!("../config.schema.json");
    assert_eq!(out(&o), committed);
    let o = env.run(&["config", "default"]);
    assert_eq!(out(&o), DEFAULT);
}
