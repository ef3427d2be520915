//! Fuzzes the appliance.toml loader: arbitrary bytes must never make `load_str` panic, and
//! every config it accepts must survive a round trip through `toml::to_string` unchanged.
//! The input is also loaded after a config with a 300-address list and two port forward
//! sections (the loader's fast path and its memo): with the memo of that config it must
//! load as without.
//!
//! Run with `cargo xtask fuzz config [--time SECONDS] [--jobs N]`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => {
            check(s);
            check_memo(s);
        }
        // Not UTF-8: the loader only takes &str, so feed it the lossy decoding, which keeps
        // the structure of mostly-text inputs.
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});

/// A valid config whose rule has a list long enough for the loader's fast path, and two
/// forward sections the memo keeps.
fn long_list() -> String {
    let mut s = String::from(
        "version = 1\n[interfaces.wan]\ndevice = \"eth0\"\nipv4 = \"dhcp\"\n\
         [interfaces.lan]\ndevice = \"eth1\"\naddresses = [\"10.1.0.1/16\"]\n\
         [firewall.zones.wan]\ninterfaces = [\"wan\"]\n[firewall.zones.lan]\ninterfaces = [\"lan\"]\n\
         [[firewall.rules]]\nfrom = \"wan\"\naction = \"drop\"\nsource = [\n",
    );
    for i in 0..300 {
        s.push_str(&format!("  \"100.64.{}.{}/32\",\n", i / 250, i % 250));
    }
    s.push_str("]\n");
    for (p, host) in [(80, 2), (443, 3)] {
        s.push_str(&format!(
            "[firewall.forwards.f{p}]\nprotocol = \"tcp\"\nport = {p}\nto = \"10.1.0.{host}\"\n"
        ));
    }
    s
}

/// `src` after the long list, loaded with the memo of the long list's config and without.
#[allow(clippy::panic)]
fn check_memo(src: &str) {
    let base = long_list();
    let spliced = format!("{base}{src}");
    let mut memo = appliance::LoadMemo::default();
    if appliance::load_str_with(&base, &mut memo).is_err() {
        panic!("the long-list config does not load");
    }
    let with = appliance::load_str_with(&spliced, &mut memo);
    let without = appliance::load_str(&spliced);
    if with != without {
        panic!(
            "the memo changed what loads\n--- input ---\n{src}\n--- with ---\n{with:#?}\n\
             --- without ---\n{without:#?}"
        );
    }
}

/// Loads `src`; when it is accepted, serializes the config and checks that it loads back
/// to the same value.
// A panic is how a fuzz target reports a bug: a config that does not round-trip is one.
#[allow(clippy::panic)]
fn check(src: &str) {
    let Ok(cfg) = appliance::load_str(src) else {
        return;
    };
    let text = match toml::to_string(&cfg) {
        Ok(t) => t,
        Err(e) => panic!("an accepted config does not serialize: {e}\n--- input ---\n{src}"),
    };
    match appliance::load_str(&text) {
        Ok(again) if again == cfg => {}
        Ok(again) => panic!(
            "round trip changed the config\n--- input ---\n{src}\n--- serialized ---\n{text}\n\
             --- before ---\n{cfg:#?}\n--- after ---\n{again:#?}"
        ),
        Err(diags) => panic!(
            "the serialized form of an accepted config is rejected: {diags:?}\n\
             --- input ---\n{src}\n--- serialized ---\n{text}"
        ),
    }
}
