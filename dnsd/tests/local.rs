//! The dnsd binary answering names of DHCP clients from netd's lease file: A and PTR for
//! live leases in the local domain, nothing for expired leases or unusable hostnames, the
//! config's names winning over a client's claim, and a rewritten file taken up while dnsd
//! runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance::leases::{self, Lease};
use appliance::types::MacAddr;
use common::{GATEWAY, Killed, answers, ask, dnsd, free_addr};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn lease(mac: &str, ip: &str, host: &str, expires: Option<u64>) -> Lease {
    Lease {
        mac: MacAddr::parse(mac).unwrap(),
        ip: ip.parse().unwrap(),
        hostname: Some(host.to_owned()),
        expires,
    }
}

/// Polls until `name` answers `want` (the file is checked every two seconds).
fn wait_for(server: SocketAddr, name: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = answers(&ask(server, name, RecordType::A));
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still answers {got:?}, not {want:?}, 20 s after the lease file changed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(dir: &Path, addr: SocketAddr) -> Killed {
    Killed::spawn(
        dnsd(&dir.join("appliance.toml"))
            // Not the system's /run/appliance/dnsd.sock, which another test may hold.
            .arg("--control")
            .arg(dir.join("dnsd.sock"))
            .arg("--lists-dir")
            .arg(dir.join("lists"))
            .arg("--leases")
            .arg(dir.join("dhcp/leases.json"))
            .arg("--listen")
            .arg(addr.to_string()),
    )
}

#[test]
fn lease_names_are_served_and_follow_the_lease_file() {
    let dir = tempfile::tempdir().unwrap();
    // No upstream; names of the local domain, single labels and private reverse names
    // that are not local get NXDOMAIN from dnsd (`dns.never_forward_private`).
    std::fs::write(
        dir.path().join("appliance.toml"),
        format!(
            r#"{GATEWAY}[[dns.records]]
name = "nas.home.arpa"
addresses = ["192.168.1.5"]
"#
        ),
    )
    .unwrap();
    let file = dir.path().join("dhcp/leases.json");
    let t = now();
    leases::write(
        &file,
        &[
            lease(
                "52:54:00:00:00:01",
                "192.168.1.50",
                "Laptop",
                Some(t + 3600),
            ),
            lease("52:54:00:00:00:02", "192.168.1.51", "gone", Some(t - 10)),
            lease("52:54:00:00:00:03", "192.168.1.52", "John's Phone", None),
            // Claims of the config's name, the router's name and the NAS's address.
            lease("52:54:00:00:00:04", "192.168.1.60", "nas", None),
            lease("52:54:00:00:00:05", "192.168.1.61", "gw", None),
            lease("52:54:00:00:00:06", "192.168.1.5", "impostor", None),
        ],
    )
    .unwrap();
    let addr = free_addr();
    let _d = start(dir.path(), addr);

    let r = ask(addr, "laptop.home.arpa.", RecordType::A);
    assert_eq!(answers(&r), ["192.168.1.50"]);
    assert!(r.metadata.authoritative);
    let r = ask(addr, "50.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(answers(&r), ["laptop.home.arpa."]);
    for name in ["gone.home.arpa.", "laptop."] {
        let r = ask(addr, name, RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
    }
    let r = ask(addr, "51.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "expired");
    let r = ask(addr, "52.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "no name for an unusable hostname"
    );
    // The config wins.
    assert_eq!(
        answers(&ask(addr, "nas.home.arpa.", RecordType::A)),
        ["192.168.1.5"]
    );
    assert_eq!(
        answers(&ask(addr, "gw.home.arpa.", RecordType::A)),
        ["192.168.1.1"]
    );
    assert_eq!(
        answers(&ask(addr, "5.1.168.192.in-addr.arpa.", RecordType::PTR)),
        ["nas.home.arpa."]
    );
    let r = ask(addr, "61.1.168.192.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "a client named like the router gets no reverse name"
    );
    assert_eq!(
        answers(&ask(addr, "impostor.home.arpa.", RecordType::A)),
        ["192.168.1.5"],
        "the client keeps its name; only the reverse name is the config's"
    );

    // netd hands out a new lease and the laptop's runs out: dnsd follows without a restart.
    leases::write(
        &file,
        &[
            lease("52:54:00:00:00:01", "192.168.1.50", "laptop", Some(t - 1)),
            lease("52:54:00:00:00:07", "192.168.1.70", "phone", Some(t + 3600)),
        ],
    )
    .unwrap();
    wait_for(addr, "phone.home.arpa.", &["192.168.1.70"]);
    let r = ask(addr, "laptop.home.arpa.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}
