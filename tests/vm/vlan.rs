//! netd's 802.1Q VLANs in the image's kernel (the host kernel has no 8021q), in one boot:
//! a trunk on a NIC with VLANs 10 and 20 made by `netd serve` from a config, its DHCP
//! server on each VLAN, and two clients on the trunk's hub, each tagging its frames for one
//! VLAN from its own network namespace:
//!
//! ```text
//!   c10 ns: nic.10 ─┐  QEMU hub   ┌─ trunk (guest NIC) ─┬─ lan10 192.168.10.1/24
//!   c20 ns: nic.20 ─┴─(tagged)────┘                     └─ lan20 192.168.20.1/24
//!   inet ns: 203.0.113.254, 198.51.100.7 ──veth── inetv 203.0.113.1 (masquerade)
//! ```
//!
//! Each client gets a lease on its VLAN, reaches 198.51.100.7 (the "internet" has no
//! route back to the VLANs: only masquerade brings the answer back), and cannot reach
//! the other VLAN's client.
//!
//! VLANs on a `vlan_filtering` bridge (the host kernel has no bridge VLAN filtering):
//!
//! ```text
//!   cb ns:   eth0.10 192.168.110.2 ─┐ eth0 ──veth── brp ── br0 (vlan_filtering) ── br10 (id 10)
//!   cb20 ns: v20     192.168.110.3 ─┘ (tagged 20,  trunk:  192.168.111.1/24        192.168.110.1/24
//!                                      on cb's eth0) [10]          │          ── br20 (id 20)
//!   ca ns:   eth0 192.168.120.2 (untagged) ──veth── brq ───────────┘             192.168.120.1/24
//!                                              access port, PVID 20
//! ```
//!
//! netd puts VLANs 10 and 20 on br0 itself, VLAN 10 tagged on the trunk brp (its own
//! list) and VLAN 20 untagged as PVID on the access port brq (`bridge vlan`): the client
//! on VLAN 10 pings br10, the one on VLAN 20 of brp does not get through, the access
//! port's untagged client reaches br20 and not VLAN 10, and `netd check` of the same
//! config plans no link step. Then new generations through applianced take VLAN 10 off
//! the bridge and switch its filtering off. The WAN NIC keeps the harness's SSH (its own zone, input
//! accepted). The same `netd serve` runs WireGuard (the host kernel has none): it makes
//! the config's tunnel and key, and its endpoint watch looks a peer's DNS name up again
//! while the peer has no handshake (`/etc/hosts` changed under it). Until the image's netd.service owns the NICs from an imported config, netd
//! runs by hand; `NETD_BIN`/`APPLCTL_BIN` run host builds instead of the image's.

use std::fs;
use std::time::Duration;

use crate::BOOT_TIMEOUT;
use crate::harness::{LAN_HUB, Link, Options, Vm, shell_quote};

/// The two client NICs of `Options::nic(1, ...)`, in order.
const CLIENT10: &str = "52:54:00:a9:01:10";
const CLIENT20: &str = "52:54:00:a9:01:11";

const CONFIG: &str = r#"version = 1

# The WAN NIC: the harness's SSH comes in here; ipv4 = "dhcp" leaves its address to DHCP.
[interfaces.wan]
mac = "52:54:00:a9:00:01"
ipv4 = "dhcp"

# The LAN NIC (harness::LAN_MAC), on the hub with the clients' NICs.
[interfaces.trunk]
mac = "52:54:00:a9:00:02"

[interfaces.inetv]
device = "inetv"
addresses = ["203.0.113.1/24"]
routes = [{ to = "198.51.100.0/24", via = "203.0.113.254" }]

[vlans.lan10]
parent = "trunk"
id = 10
addresses = ["192.168.10.1/24"]

# A vlan_filtering bridge over a veth (made by the test) to the client namespace cb.
[interfaces.brp]
device = "brp"

# An access port of VLAN 20 over a second veth, to the namespace ca.
[interfaces.brq]
device = "brq"

[bridges.br0]
members = ["brp", "brq"]
vlan_filtering = true
# Untagged frames of brp (the kernel's PVID 1) reach this address.
addresses = ["192.168.111.1/24"]

[bridges.br0.ports.brp]
tagged = [10]

[bridges.br0.ports.brq]
untagged = 20

[vlans.br20]
parent = "br0"
id = 20
addresses = ["192.168.120.1/24"]

[vlans.br10]
parent = "br0"
id = 10
addresses = ["192.168.110.1/24"]

[vlans.lan20]
parent = "trunk"
id = 20
addresses = ["192.168.20.1/24"]

[dhcp.lan10]
start = "192.168.10.100"
end = "192.168.10.150"

[dhcp.lan20]
start = "192.168.20.100"
end = "192.168.20.150"

[firewall.zones.mgmt]
interfaces = ["wan"]
input = "accept"
forward = "drop"

[firewall.zones.isp]
interfaces = ["inetv"]
input = "drop"
forward = "drop"
masquerade = true

[firewall.zones.v10]
interfaces = ["lan10", "br10", "br0"]
input = "accept"
forward = "drop"

[firewall.zones.v20]
interfaces = ["lan20", "br20"]
input = "accept"
forward = "drop"

[wireguard.wg0]
addresses = ["10.8.0.1/24"]
listen_port = 51820

[wireguard.wg0.peers.office]
public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
allowed_ips = ["10.8.0.2/32"]
endpoint = "office.test:51820"

[[firewall.policies]]
from = "v10"
to = "isp"
action = "accept"

[[firewall.policies]]
from = "v20"
to = "isp"
action = "accept"
"#;

/// A lease for `dev` in namespace `ns` by busybox udhcpc, with a script of ours that only
/// configures the namespace; udhcpc's `key=value` words.
fn lease(vm: &Vm, ns: &str, dev: &str) -> String {
    let script = "#!/bin/sh\ncase \"$1\" in\n  bound|renew) ip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n    \
                  ip route replace default via \"$router\"\n    \
                  echo \"LEASE ip=$ip router=$router dns=$dns\" ;;\nesac\n";
    vm.sh(&format!(
        "printf %s {} > /tmp/udhcpc-vlan.sh && chmod 755 /tmp/udhcpc-vlan.sh",
        shell_quote(script)
    ));
    let out = vm.in_netns(
        ns,
        &format!("busybox udhcpc -i {dev} -f -q -n -t 10 -T 2 -s /tmp/udhcpc-vlan.sh 2>&1"),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("LEASE "))
        .unwrap_or_else(|| panic!("udhcpc in {ns} got no lease on {dev}: {out}"))
        .to_owned()
}

fn ip_of(lease: &str) -> &str {
    lease
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ip="))
        .unwrap_or_else(|| panic!("no ip in {lease}"))
}

#[test]
fn vlan_trunk_clients_get_leases_reach_wan_masqueraded_and_not_each_other() {
    let mut vm = Vm::boot_with(
        "vlan",
        Options::default()
            .nic(1, Link::Hub(LAN_HUB))
            .nic(1, Link::Hub(LAN_HUB)),
    );
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    let host_bin = |var: &str, name: &str| match std::env::var_os(var) {
        Some(host) => {
            let guest = format!("/tmp/{name}");
            vm.copy_in(std::path::Path::new(&host), &guest);
            guest
        }
        None => name.to_owned(),
    };
    let netd = host_bin("NETD_BIN", "netd");
    let applctl = host_bin("APPLCTL_BIN", "applctl");
    let applianced = host_bin("APPLIANCED_BIN", "applianced");

    // The image's netd leaves the NICs to this test's. Killed, not stopped: a stopping
    // netd releases the WAN's DHCP lease and its address, and with it the harness's SSH.
    vm.sh("systemctl mask --runtime netd.service; \
         systemctl kill --signal=SIGKILL netd.service; sleep 1; \
         systemctl reset-failed netd.service; modprobe 8021q; modprobe bridge; modprobe wireguard");
    // The peer's endpoint name, in a hosts file this test can change (the root is read-only).
    vm.sh(
        "cp /etc/hosts /tmp/hosts && echo '192.0.2.10 office.test' >> /tmp/hosts \
         && mount --bind /tmp/hosts /etc/hosts",
    );
    vm.sh("set -e; ip netns add inet; ip -n inet link set lo up; \
         ip link add inetv type veth peer name eth0 netns inet; \
         ip -n inet addr add 203.0.113.254/24 dev eth0; ip -n inet link set eth0 up; \
         ip -n inet addr add 198.51.100.7/32 dev lo");
    // Each client tags its frames for one VLAN; both NICs share the trunk's hub.
    for (ns, mac, id) in [("c10", CLIENT10, 10), ("c20", CLIENT20, 20)] {
        let nic = vm.iface(mac);
        vm.sh(&format!(
            "set -e; ip netns add {ns}; ip link set {nic} netns {ns}; \
             ip -n {ns} link set {nic} name eth0; ip -n {ns} link set lo up; \
             ip -n {ns} link set eth0 up; \
             ip -n {ns} link add link eth0 name eth0.{id} type vlan id {id}; \
             ip -n {ns} link set eth0.{id} up"
        ));
    }

    // The bridge's port: a veth to cb, whose eth0 carries VLAN 10 (cb's own) and VLAN 20
    // (a sub-interface moved into cb20, a second client on the same port).
    vm.sh(
        "set -e; ip netns add cb; ip netns add cb20; ip -n cb link set lo up; \
         ip link add brp type veth peer name eth0 netns cb; ip -n cb link set eth0 up; \
         ip -n cb addr add 192.168.111.2/24 dev eth0; \
         ip -n cb link add link eth0 name eth0.10 type vlan id 10; \
         ip -n cb addr add 192.168.110.2/24 dev eth0.10; ip -n cb link set eth0.10 up; \
         ip -n cb link add link eth0 name v20 type vlan id 20; ip -n cb link set v20 netns cb20; \
         ip -n cb20 link set lo up; ip -n cb20 addr add 192.168.110.3/24 dev v20; \
         ip -n cb20 link set v20 up",
    );
    // The access port's client sends untagged frames; its second address lies in VLAN
    // 10's subnet, to show it has no layer 2 to VLAN 10's client.
    vm.sh("set -e; ip netns add ca; ip -n ca link set lo up; \
         ip link add brq type veth peer name eth0 netns ca; \
         ip -n ca addr add 192.168.120.2/24 dev eth0; ip -n ca addr add 192.168.110.9/24 dev eth0; \
         ip -n ca addr add 192.168.111.9/24 dev eth0; ip -n ca link set eth0 up");

    let host = vm.dir.join("vlan.toml");
    fs::write(&host, CONFIG).unwrap();
    vm.copy_in(&host, "/tmp/vlan.toml");
    vm.sh(&format!(
        "APPLIANCE_CONFIG_DIR=/tmp/store {applctl} config save /tmp/vlan.toml"
    ));
    // netd applies the active generation before it opens its socket.
    vm.sh(&format!(
        "nohup {netd} serve --socket /tmp/netd.sock --data-dir /tmp/store \
         --firewall-state /tmp/netd-fw.json --dhcp-dir /tmp/dhcp \
         --wan-dns-file /tmp/wan-dns.json --wireguard-dir /tmp/wireguard \
         > /tmp/netd.log 2>&1 < /dev/null &"
    ));
    vm.wait_until(
        "test -S /tmp/netd.sock || { cat /tmp/netd.log; false; }",
        Duration::from_secs(90),
    );
    let log = vm.sh("cat /tmp/netd.log");
    let vlans = vm
        .ssh("ip -d link show lan10; ip -d link show lan20")
        .stdout;
    let vlans = String::from_utf8_lossy(&vlans);
    eprintln!("netd's log:\n{log}");
    assert!(
        vlans.contains("vlan protocol 802.1Q id 10"),
        "{vlans}\nnetd's log:\n{log}"
    );
    assert!(vlans.contains("vlan protocol 802.1Q id 20"), "{vlans}");
    assert!(vlans.contains("lan10@trunk"), "{vlans}");

    let l10 = lease(&vm, "c10", "eth0.10");
    let l20 = lease(&vm, "c20", "eth0.20");
    eprintln!("leases: {l10} | {l20}");
    assert!(ip_of(&l10).starts_with("192.168.10."), "{l10}");
    assert!(l10.contains("router=192.168.10.1"), "{l10}");
    assert!(ip_of(&l20).starts_with("192.168.20."), "{l20}");
    assert!(l20.contains("router=192.168.20.1"), "{l20}");

    // Both reach the "internet", which has no route back to them: masqueraded.
    for ns in ["c10", "c20"] {
        vm.in_netns(ns, "ping -c 2 -W 3 198.51.100.7");
    }
    let seen = vm.sh("nft list table inet appliance | grep -c masquerade || true");
    assert!(seen.trim() != "0", "no masquerade rule: {seen}");
    // Neither reaches the other VLAN's client.
    for (ns, other) in [("c10", ip_of(&l20)), ("c20", ip_of(&l10))] {
        let out = vm.try_in_netns(ns, &format!("ping -c 2 -W 2 {other}"));
        assert!(
            !out.status.success(),
            "{ns} reached {other} across VLANs: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The trunk carried tagged frames only: no address on it, the VLANs on top.
    let trunk = vm.sh("ip -4 -o addr show dev trunk");
    assert!(trunk.trim().is_empty(), "{trunk}");

    bridge_vlans_pass_traffic(&vm, &netd);
    bridge_vlans_leave_by_config(&vm, &netd, &applianced, &applctl);

    // WireGuard from netd serve: the tunnel, its key made on first use, the peer's
    // endpoint resolved from its name.
    let wg = vm.sh("ip -d link show wg0; stat -c %a /tmp/wireguard/wg0.key; wg show wg0 endpoints");
    assert!(wg.contains("alias appliance wireguard"), "{wg}");
    assert!(wg.contains("\n600\n"), "key mode: {wg}");
    assert!(wg.contains("192.0.2.10:51820"), "{wg}");
    // The peer never shakes hands: the watch (every 30 s) looks its name up again.
    // Rewritten in place: the bind mount holds the file's inode.
    vm.sh(
        "sed 's/^192.0.2.10 office.test$/192.0.2.20 office.test/' /tmp/hosts > /tmp/hosts.new \
         && cat /tmp/hosts.new > /tmp/hosts",
    );
    vm.wait_until(
        "wg show wg0 endpoints | grep -q 192.0.2.20:51820",
        Duration::from_secs(90),
    );
}

/// VLAN 10 on the `vlan_filtering` bridge br0: the tagged client reaches br10, a client on
/// VLAN 20 of the same port does not, the kernel's VLAN table holds netd's entries, and a
/// second plan of the same config has no link step.
fn bridge_vlans_pass_traffic(vm: &Vm, netd: &str) {
    let table = vm.sh("bridge -j vlan show");
    let vlans: serde_json::Value = serde_json::from_str(&table).unwrap();
    let vids = |link: &str| -> Vec<(u64, bool)> {
        vlans
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] == link)
            .flat_map(|l| l["vlans"].as_array().cloned().unwrap_or_default())
            .map(|v| {
                let flags = v["flags"].to_string();
                (
                    v["vlan"].as_u64().unwrap(),
                    flags.contains("PVID") || flags.contains("Untagged"),
                )
            })
            .collect()
    };
    for link in ["br0", "brp"] {
        let v = vids(link);
        assert!(
            v.contains(&(10, false)),
            "{link}: VLAN 10 tagged missing: {table}"
        );
        assert!(
            v.contains(&(1, true)),
            "{link}: the PVID 1 entry went: {table}"
        );
    }
    // br0 carries its VLAN 20 too; the trunk brp only VLAN 10 (its own list); the access
    // port brq only VLAN 20, untagged as its PVID.
    assert!(vids("br0").contains(&(20, false)), "{table}");
    assert!(!vids("brp").iter().any(|(id, _)| *id == 20), "{table}");
    assert_eq!(vids("brq"), [(20, true)], "{table}");
    let br = vm.sh("ip -d link show br0");
    assert!(br.contains("vlan_filtering 1"), "{br}");

    vm.in_netns("cb", "ping -c 2 -W 3 192.168.110.1");
    vm.in_netns("cb", "ping -c 2 -W 3 192.168.111.1");
    let out = vm.try_in_netns("cb20", "ping -c 2 -W 2 192.168.110.1");
    assert!(
        !out.status.success(),
        "VLAN 20 reached VLAN 10's address through br0: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The untagged client of the access port is on VLAN 20: its gateway answers, VLAN
    // 10's client (in the same subnet as its second address) does not.
    vm.in_netns("ca", "ping -c 2 -W 3 192.168.120.1");
    let out = vm.try_in_netns("ca", "ping -c 2 -W 2 192.168.110.2");
    assert!(
        !out.status.success(),
        "the access port of VLAN 20 reached VLAN 10's client: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The same config again: no link step (the bridge VLANs are observed back).
    let check = vm.sh(&format!(
        "{netd} check --config /tmp/vlan.toml --firewall-state /tmp/netd-fw.json \
         --dhcp-dir /tmp/dhcp --wireguard-dir /tmp/wireguard 2>&1"
    ));
    eprintln!("netd check:\n{check}");
    assert!(
        !check.contains("links:"),
        "a second plan has link steps:\n{check}"
    );

    // The membership is what carries the traffic: without VLAN 10 on the port (the bug
    // this guards against) the tagged client is cut off, and the plan puts it back.
    vm.sh("bridge vlan del vid 10 dev brp");
    let out = vm.try_in_netns("cb", "ping -c 2 -W 2 192.168.110.1");
    assert!(!out.status.success(), "VLAN 10 passed without membership");
    let check = vm.sh(&format!(
        "{netd} check --config /tmp/vlan.toml --firewall-state /tmp/netd-fw.json \
         --dhcp-dir /tmp/dhcp --wireguard-dir /tmp/wireguard 2>/dev/null"
    ));
    let links: Vec<&str> = check.lines().filter(|l| l.contains("links:")).collect();
    assert_eq!(
        links,
        ["  links: bridge vlan add vid 10 dev brp"],
        "{check}"
    );
    // Put back, so that the config change below has it to take off.
    vm.sh("bridge vlan add vid 10 dev brp");
    vm.in_netns("cb", "ping -c 2 -W 3 192.168.110.1");
}

/// `bridge -j vlan show` as (link, id, pvid or untagged) triples.
fn bridge_vlan_table(vm: &Vm) -> Vec<(String, u64, bool)> {
    let table = vm.sh("bridge -j vlan show");
    let links: serde_json::Value = serde_json::from_str(&table).unwrap();
    let mut out = Vec::new();
    for l in links.as_array().unwrap() {
        let name = l["ifname"].as_str().unwrap().to_owned();
        for v in l["vlans"].as_array().cloned().unwrap_or_default() {
            let flags = v["flags"].to_string();
            out.push((
                name.clone(),
                v["vlan"].as_u64().unwrap(),
                flags.contains("PVID") || flags.contains("Untagged"),
            ));
        }
    }
    out
}

/// A new generation through applianced and applctl, confirmed (links change, so it waits
/// for a confirm); returns applctl's report.
fn apply_generation(vm: &Vm, applctl: &str, name: &str, text: &str) -> String {
    let host = vm.dir.join(name);
    fs::write(&host, text).unwrap();
    vm.copy_in(&host, &format!("/tmp/{name}"));
    let env = "APPLIANCED_SOCKET=/tmp/applianced.sock APPLIANCE_CONFIG_DIR=/tmp/store";
    let report = vm.sh(&format!("{env} {applctl} apply /tmp/{name} --json"));
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["daemon"] == "netd" && s["action"] == "apply" && s["outcome"] == "ok"),
        "{report}"
    );
    vm.sh(&format!("{env} {applctl} confirm"));
    report
}

/// The config changes that take VLANs off the bridge, through the real path (applianced
/// runs the transaction against this test's netd serve): VLAN 10 leaves br0, then br0's
/// filtering is switched off. Each time the kernel's table loses netd's entries and keeps
/// the PVID, untagged traffic still flows, and a second plan is empty.
fn bridge_vlans_leave_by_config(vm: &Vm, netd: &str, applianced: &str, applctl: &str) {
    // dnsd and stored do not run beside this applianced (their sockets point nowhere):
    // a daemon that is not running is left out of the plan, which the report says, and
    // loads the generation when it starts.
    vm.sh(&format!(
        "mkdir -p /tmp/appld/run; nohup {applianced} --socket /tmp/applianced.sock \
         --state-dir /tmp/appld/state --data-dir /tmp/store --netd-socket /tmp/netd.sock \
         --dnsd-socket /tmp/appld/run/dnsd.sock --stored-socket /tmp/appld/run/stored.sock \
         --api-dir /tmp/appld/api --api-listen 127.0.0.1:9443 \
         --fingerprint-file /tmp/appld/run/fp --issue-file /tmp/appld/run/issue \
         > /tmp/applianced.log 2>&1 < /dev/null &"
    ));
    vm.wait_until(
        "test -S /tmp/applianced.sock || { cat /tmp/applianced.log; false; }",
        Duration::from_secs(60),
    );
    let check = |file: &str| {
        vm.sh(&format!(
            "{netd} check --config /tmp/{file} --firewall-state /tmp/netd-fw.json \
             --dhcp-dir /tmp/dhcp --wireguard-dir /tmp/wireguard --socket /tmp/netd.sock 2>&1"
        ))
    };

    // VLAN 10 leaves the bridge: br10, its zone entry and the trunk's list naming it go.
    let gen2 = CONFIG
        .replace(
            "[vlans.br10]\nparent = \"br0\"\nid = 10\naddresses = [\"192.168.110.1/24\"]\n",
            "",
        )
        .replace("[bridges.br0.ports.brp]\ntagged = [10]\n", "")
        .replace("\"lan10\", \"br10\", \"br0\"", "\"lan10\", \"br0\"");
    assert!(!gen2.contains("br10"), "{gen2}");
    let report = apply_generation(vm, applctl, "vlan-gen2.toml", &gen2);
    eprintln!("VLAN 10 leaves br0:\n{report}");
    let table = bridge_vlan_table(vm);
    for link in ["br0", "brp"] {
        assert!(
            !table.iter().any(|(l, id, _)| l == link && *id == 10),
            "{link} still carries VLAN 10: {table:?}"
        );
        assert!(
            table.contains(&(link.to_owned(), 1, true)),
            "{link} lost PVID 1: {table:?}"
        );
    }
    let gone = vm.sh("ip link show br10 2>&1 || true");
    assert!(gone.contains("does not exist"), "{gone}");
    let out = vm.try_in_netns("cb", "ping -c 2 -W 2 192.168.110.1");
    assert!(!out.status.success(), "VLAN 10 still reaches 192.168.110.1");
    vm.in_netns("cb", "ping -c 2 -W 3 192.168.111.1");
    // VLAN 20 and its access port are as they were.
    assert!(table.contains(&("br0".to_owned(), 20, false)), "{table:?}");
    assert!(table.contains(&("brq".to_owned(), 20, true)), "{table:?}");
    vm.in_netns("ca", "ping -c 2 -W 3 192.168.120.1");
    let plan = check("vlan-gen2.toml");
    eprintln!("netd check after VLAN 10 left:\n{plan}");
    assert!(!plan.contains("links:"), "{plan}");

    // Filtering off: the flag goes, untagged traffic still flows.
    // (Port entries need a filtering bridge: the access port's goes too.)
    let gen3 = gen2
        .replace("vlan_filtering = true", "vlan_filtering = false")
        .replace("[bridges.br0.ports.brq]\nuntagged = 20\n", "");
    let report = apply_generation(vm, applctl, "vlan-gen3.toml", &gen3);
    eprintln!("br0's filtering off:\n{report}");
    let link = vm.sh("ip -j -d link show br0");
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    assert_eq!(
        link[0]["linkinfo"]["info_data"]["vlan_filtering"], 0,
        "{link}"
    );
    let table = bridge_vlan_table(vm);
    assert!(
        table
            .iter()
            .all(|(l, id, _)| !["br0", "brp", "brq"].contains(&l.as_str()) || *id == 1),
        "entries besides PVID 1 left on the bridge: {table:?}"
    );
    // The former access port is back in VLAN 1: its untagged client reaches br0 too.
    assert!(table.contains(&("brq".to_owned(), 1, true)), "{table:?}");
    vm.in_netns("cb", "ping -c 2 -W 3 192.168.111.1");
    vm.in_netns("ca", "ping -c 2 -W 3 192.168.111.1");
    let plan = check("vlan-gen3.toml");
    eprintln!("netd check after filtering off:\n{plan}");
    assert!(!plan.contains("links:"), "{plan}");
}
