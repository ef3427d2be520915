//! Fuzzes netd's parsers of router solicitations and advertisements
//! (`netd::ipv6::packet`): the solicitation parser reads whatever any LAN host sends to
//! the router's raw ICMPv6 socket. Nothing may panic, and an advertisement that parses
//! must survive its own encoding unchanged. Run with `cargo xtask fuzz router_advert`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netd::ipv6::{RouterAdvert, RouterSolicit};

fuzz_target!(|data: &[u8]| {
    if let Ok(rs) = RouterSolicit::parse(data) {
        assert_eq!(RouterSolicit::parse(&rs.encode()), Ok(rs));
    }
    if let Ok(ra) = RouterAdvert::parse(data) {
        assert_eq!(RouterAdvert::parse(&ra.encode()), Ok(ra));
    }
});
