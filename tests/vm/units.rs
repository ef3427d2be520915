//! The daemons as the image runs them (issue 7's "the units start with their hardening and
//! the health target is reached", issue 4's integration), checked in the first boot of the
//! boot test: every appliance daemon unit active as its user with exactly its capability
//! set, its `systemd-analyze security` exposure printed, appliance-healthy.target reached;
//! the config imported from the harness's APPLCONFIG disk at first boot; netd's firewall
//! table in place; the WAN address from QEMU's DHCP held by netd's client
//! (systemd-networkd is not running); and a client on the LAN hub leasing an address from
//! netd's DHCP server with busybox udhcpc and resolving a name through dnsd. stored runs
//! too, on a box without pools: it answers `applctl storage status`, and an apply through
//! applianced reaches it and makes a NAS user's Unix account (a user record nss-systemd
//! serves) and Samba password.

use std::collections::BTreeMap;
use std::time::Duration;

#[cfg(doc)]
use crate::harness::Options;
use crate::harness::Vm;

/// Capability bits (linux/capability.h).
const CAP_CHOWN: u64 = 1;
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_SYS_ADMIN: u64 = 1 << 21;

/// (unit, uid, capabilities both bounding and effective).
fn daemons() -> [(&'static str, u32, u64); 4] {
    [
        (
            "netd.service",
            0,
            CAP_NET_ADMIN | CAP_NET_RAW | CAP_NET_BIND_SERVICE,
        ),
        // The config store is readable through group appliance: no CAP_DAC_READ_SEARCH.
        ("dnsd.service", 901, CAP_NET_BIND_SERVICE),
        ("applianced.service", 0, CAP_NET_BIND_SERVICE),
        // ZFS ioctls and mount(2), chown of share roots; no mount namespace (stored.service
        // says why).
        ("stored.service", 0, CAP_SYS_ADMIN | CAP_CHOWN),
    ]
}

fn status_fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn hex(field: &str) -> u64 {
    u64::from_str_radix(field, 16).unwrap()
}

/// An A query for `name` sent to `server` from namespace `ns` with bash's /dev/udp (the
/// image has no dig); the answer's bytes in hex.
fn dns_query(vm: &Vm, ns: &str, server: &str, name: &str) -> String {
    let mut q = String::from(r"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00");
    for label in name.split('.') {
        q.push_str(&format!(r"\x{:02x}{label}", label.len()));
    }
    q.push_str(r"\x00\x00\x01\x00\x01");
    vm.in_netns(
        ns,
        &format!(
            "exec 3<>/dev/udp/{server}/53; printf '{q}' >&3; \
             timeout 5 dd bs=512 count=1 <&3 2>/dev/null | od -An -tx1 -v | tr -d ' \\n'"
        ),
    )
    .trim()
    .to_owned()
}

/// Run inside the boot test's first boot (`boots_to_multi_user_...` in main.rs), on a VM
/// booted with [`Options::lan_client`]: a boot of its own cost this suite 2 to 3 minutes
/// of CI for nothing the boot test does not already set up. Leaves the LAN client in the
/// network namespace `lan_ns`.
pub(crate) fn the_daemons_run_hardened_and_netd_owns_the_network(vm: &mut Vm, lan_ns: &str) {
    vm.wait_for_line("APPLCONFIG-IMPORTED", Duration::from_secs(5));

    // The imported config is generation 1 and the one netd applied.
    let history = vm.sh("applctl config history");
    assert!(history.contains("imported from APPLCONFIG"), "{history}");

    vm.sh("systemctl is-active appliance-healthy.target");
    for (unit, uid, caps) in daemons() {
        let show = vm.sh(&format!(
            "systemctl show -p ActiveState,SubState,MainPID,NRestarts {unit}"
        ));
        assert!(show.contains("ActiveState=active"), "{unit}: {show}");
        assert!(show.contains("NRestarts=0"), "{unit} restarted: {show}");
        let pid = show
            .lines()
            .find_map(|l| l.strip_prefix("MainPID="))
            .unwrap();
        let status = status_fields(&vm.sh(&format!("cat /proc/{pid}/status")));
        let uids: Vec<u32> = status["Uid"]
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(uids.iter().all(|&u| u == uid), "{unit}: Uid {uids:?}");
        assert_eq!(
            hex(&status["CapBnd"]),
            caps,
            "{unit}: CapBnd {}",
            status["CapBnd"]
        );
        assert_eq!(
            hex(&status["CapEff"]),
            caps,
            "{unit}: CapEff {}",
            status["CapEff"]
        );
        let security = vm.sh(&format!("systemd-analyze security --no-pager {unit}"));
        let overall = security
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("no exposure line");
        eprintln!(
            "{unit}: uid {uid}, CapEff {}, {}",
            status["CapEff"],
            overall.trim()
        );
    }

    // The console shows the API's certificate fingerprint: agetty renders its issue with
    // applianced's snippet (through the link in /etc/issue.d). agetty wants a terminal.
    let fingerprint = vm.wait_until(
        "test -s /run/appliance/api-fingerprint && cat /run/appliance/api-fingerprint",
        Duration::from_secs(60),
    );
    let fingerprint = fingerprint.trim();
    assert!(!fingerprint.is_empty());
    let issue = vm.sh("script -qc 'agetty --show-issue' /dev/null </dev/null");
    eprintln!("console issue:\n{issue}");
    assert!(
        issue.contains(&format!("SHA256 fingerprint: {fingerprint}")),
        "the console does not show the API fingerprint {fingerprint}:\n{issue}"
    );
    assert!(issue.contains("Appliance API: https://"), "{issue}");

    // netd's table, with the imported SSH rule.
    let table = vm.sh("nft list table inet appliance");
    assert!(table.contains("chain input"), "{table}");
    assert!(
        table.contains("dport 22"),
        "no SSH rule in netd's table:\n{table}"
    );

    // The WAN: netd renamed eth0 to `wan` and its DHCP client holds QEMU's lease.
    let networkd = vm.ssh("systemctl is-active systemd-networkd");
    assert!(
        !networkd.status.success(),
        "systemd-networkd runs: {}",
        String::from_utf8_lossy(&networkd.stdout)
    );
    let wan = vm.wait_until(
        "ip -4 -o addr show dev wan | grep -q 10.0.2.15 && ip -4 route show default",
        Duration::from_secs(60),
    );
    assert!(
        wan.contains("via 10.0.2.2 dev wan") && wan.contains("proto dhcp"),
        "default route not netd's DHCP one: {wan}"
    );
    let lease = vm.sh("cat /data/dhcp/wan-wan.json");
    assert!(lease.contains("10.0.2.15"), "{lease}");
    let lan = vm.sh("ip -4 -o addr show dev lan");
    assert!(lan.contains("192.168.1.1/24"), "{lan}");

    // A LAN client leases from netd's server and resolves through dnsd.
    let lease = vm.lan_client(lan_ns);
    eprintln!("LAN client lease: {lease}");
    let words: BTreeMap<&str, &str> = lease
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let ip: std::net::Ipv4Addr = words["ip"].parse().unwrap();
    assert!(
        (100..=250).contains(&ip.octets()[3]) && ip.octets()[..3] == [192, 168, 1],
        "{lease}"
    );
    assert_eq!(words["router"], "192.168.1.1", "{lease}");
    assert_eq!(words["dns"], "192.168.1.1", "{lease}");
    let leases = vm.sh("cat /data/dhcp/leases.json");
    assert!(leases.contains(&ip.to_string()), "{leases}");
    let answer = dns_query(vm, lan_ns, "192.168.1.1", "appliance.lan");
    assert!(
        answer.starts_with("1234") && answer.contains("c0a80101"),
        "dnsd did not answer appliance.lan with 192.168.1.1: {answer:?}"
    );
    eprintln!("the LAN client resolved appliance.lan through dnsd");

    // stored on a box without [storage]: serving (the health target above requires it).
    let status = vm.sh("applctl storage status");
    assert!(
        status.starts_with("stored ") && status.contains("generation 1 "),
        "{status}"
    );
    // An apply through applianced reaches stored: a NAS user with an SMB password gets a
    // Unix account from the uid range and a Samba password.
    vm.sh(
        "mkdir -p /data/secrets && printf 'carol pw\\n' > /data/secrets/carol.smb && \
         chmod 600 /data/secrets/carol.smb",
    );
    let host = vm.dir.join("nas-user.toml");
    std::fs::write(
        &host,
        format!(
            "{}\n[storage.users.carol]\nsmb_password_file = \"/data/secrets/carol.smb\"\n",
            crate::harness::test_config()
        ),
    )
    .unwrap();
    vm.copy_in(&host, "/tmp/nas-user.toml");
    let applied = vm.sh("applctl apply /tmp/nas-user.toml --json");
    eprintln!("apply with a NAS user: {applied}");
    let report: serde_json::Value = serde_json::from_str(&applied).unwrap();
    assert_eq!(report["skipped"], serde_json::json!([]), "{applied}");
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["daemon"] == "stored" && s["action"] == "apply" && s["outcome"] == "ok"),
        "{applied}"
    );
    let account = vm.sh("getent passwd carol");
    assert_eq!(
        account.trim(),
        "carol:x:2000:2000:NAS user carol:/nonexistent:/usr/sbin/nologin"
    );
    assert!(vm.sh("pdbedit -L").contains("carol:2000:"));
    let status = vm.sh("applctl storage status");
    assert!(status.contains("generation 2 "), "{status}");
    eprintln!("units test done after {:.1}s", vm.uptime().as_secs_f64());
}
