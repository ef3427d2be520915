//! `appliance-image keygen` and `bundle create | sign | verify | inspect`, end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_appliance-image"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tool(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(args: &[&str]) -> String {
    let out = tool(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keys_bundles_signatures_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = d.join("rootfs.squashfs");
    fs::write(&root, vec![0x5a; 3 << 20]).unwrap();
    ok(&["keygen", "--out", s(d), "--name", "old"]);
    ok(&["keygen", "--out", s(d), "--name", "new"]);
    assert!(refused(&["keygen", "--out", s(d), "--name", "old"]).contains("refusing to overwrite"));

    let bundle = d.join("1.3.0.bundle");
    let create = |b: &Path, version: &str, extra: &[&str]| {
        let mut args = vec![
            "bundle",
            "create",
            "--root",
            s(&root),
            "--version",
            version,
            "--security-version",
            "2",
            "--out",
            s(b),
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    create(&bundle, "1.3.0", &["--key", s(&d.join("old.key"))]);
    let shown = ok(&["bundle", "inspect", s(&bundle)]);
    assert!(shown.contains("version:          1.3.0"), "{shown}");
    assert!(shown.contains("3 chunks"), "{shown}");
    assert!(shown.contains("valid"), "{shown}");

    let old_pub = d.join("old.pub");
    let new_pub = d.join("new.pub");
    let verified = ok(&["bundle", "verify", s(&bundle), "--key", s(&old_pub)]);
    assert!(verified.contains("every chunk verified"), "{verified}");
    let err = refused(&["bundle", "verify", s(&bundle), "--key", s(&new_pub)]);
    assert!(err.contains("no signature by a trusted key"), "{err}");
    for (flag, value, reason) in [
        ("--installed", "1.4.0", "older than the installed 1.4.0"),
        ("--floor", "3", "below this device's floor 3"),
        ("--compatible", "other", "this device is `other`"),
    ] {
        let err = refused(&[
            "bundle",
            "verify",
            s(&bundle),
            "--key",
            s(&old_pub),
            flag,
            value,
        ]);
        assert!(err.contains(reason), "{flag} {value}: {err}");
    }

    // Rotation: a keyring that needs both keys accepts the bundle once both have signed.
    let keyring = d.join("keyring");
    fs::write(
        &keyring,
        format!(
            "threshold 2\n{}{}",
            fs::read_to_string(&old_pub).unwrap(),
            fs::read_to_string(&new_pub).unwrap()
        ),
    )
    .unwrap();
    let err = refused(&["bundle", "verify", s(&bundle), "--keyring", s(&keyring)]);
    assert!(err.contains("requires 2"), "{err}");
    ok(&["bundle", "sign", "--key", s(&d.join("new.key")), s(&bundle)]);
    ok(&["bundle", "verify", s(&bundle), "--keyring", s(&keyring)]);

    // One flipped payload byte is caught.
    let mut bytes = fs::read(&bundle).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 1;
    fs::write(&bundle, bytes).unwrap();
    let err = refused(&["bundle", "verify", s(&bundle), "--keyring", s(&keyring)]);
    assert!(err.contains("chunk 2 does not match"), "{err}");

    // Expired.
    let stale = d.join("stale.bundle");
    create(
        &stale,
        "1.3.0",
        &[
            "--created",
            "1000",
            "--valid-days",
            "1",
            "--key",
            s(&d.join("old.key")),
        ],
    );
    let err = refused(&["bundle", "verify", s(&stale), "--key", s(&old_pub)]);
    assert!(err.contains("expired"), "{err}");
}
