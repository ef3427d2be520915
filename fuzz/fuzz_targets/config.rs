//! Fuzzes the appliance.toml loader: arbitrary bytes must never make `load_str` panic, and
//! every config it accepts must survive a round trip through `toml::to_string` unchanged.
//!
//! Run with `cargo xtask fuzz config [--time SECONDS] [--jobs N]`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        // Not UTF-8: the loader only takes &str, so feed it the lossy decoding, which keeps
        // the structure of mostly-text inputs.
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});

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
