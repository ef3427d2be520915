//! Fuzzes what dnsd reads from outside: block lists as downloaded (any bytes, any format)
//! and compiled lists as stored under /data (a damaged file must be refused, not trusted).
//! Parsing must never panic; whatever compiles must survive being stored and loaded.
//!
//! Run with `cargo xtask fuzz dns_list [--time SECONDS]`.

#![no_main]

use appliance::model::ListFormat;
use dnsd::compiled::CompiledList;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Arbitrary bytes as a stored compiled list: refused or loaded, never a panic.
    let _ = CompiledList::from_bytes(data);

    let text = String::from_utf8_lossy(data);
    let format = match data.first().map(|b| b % 4) {
        Some(0) => ListFormat::Hosts,
        Some(1) => ListFormat::Domains,
        Some(2) => ListFormat::Adblock,
        _ => ListFormat::Auto,
    };
    let parsed = dnsd::lists::parse(&text, format);
    let Ok(list) = CompiledList::compile(parsed) else {
        return;
    };
    check_round_trip(&list, &text);
});

// A panic is how a fuzz target reports a bug: a stored list that loads differently is one.
#[allow(clippy::panic)]
fn check_round_trip(list: &CompiledList, text: &str) {
    let again = match CompiledList::from_bytes(&list.to_bytes()) {
        Ok(l) => l,
        Err(e) => panic!("a compiled list does not load back: {e}\n--- list ---\n{text}"),
    };
    for line in text.lines().take(64) {
        for word in line.split_whitespace().take(4) {
            let name = word
                .trim_start_matches("||")
                .trim_end_matches('^')
                .to_ascii_lowercase();
            if list.blocks(&name) != again.blocks(&name)
                || list.excepts(&name) != again.excepts(&name)
            {
                panic!("{name:?} matches differently after a store and load\n--- list ---\n{text}");
            }
        }
    }
}
