#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The default config's ruleset, as the JSON handed to `nft -j -f -`, against a committed
//! copy. A diff here is a change to what every appliance runs: review it, then regenerate
//! with `NETD_UPDATE_GOLDEN=1 cargo test -p netd --test firewall_golden`.

use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn default_config_ruleset_matches_golden() {
    let cfg = appliance::default_config().unwrap();
    let actual = netd::firewall::render(&cfg).to_json_pretty() + "\n";
    let path = golden("default.json");
    if std::env::var_os("NETD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with NETD_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "the default ruleset changed; review the diff and rerun with NETD_UPDATE_GOLDEN=1\n{actual}"
    );
}
