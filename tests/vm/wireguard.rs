//! netd's WireGuard in the image's kernel, in one boot: a tunnel applied by `netd wg apply`,
//! a client in a network namespace set up by `wg-quick` from the config `applctl wg
//! add-peer` printed, peers added and removed on the running tunnel, 1000 peers, a second
//! apply that writes nothing, and a malformed key refused.

use std::fs;
use std::time::Instant;

use appliance::types::Key32;

use crate::harness::Vm;
use crate::{BOOT_TIMEOUT, POWER_OFF_TIMEOUT};

const SERVER: &str = r#"version = 1

[wireguard.wg0]
listen_port = 51820
addresses = ["10.8.0.1/24"]
"#;

struct Guest<'a> {
    vm: &'a Vm,
    netd: String,
    applctl: String,
}

impl Guest<'_> {
    /// Writes a config into the guest as /tmp/`name`.toml.
    fn config(&self, name: &str, text: &str) -> String {
        let host = self.vm.dir.join(format!("{name}.toml"));
        fs::write(&host, text).unwrap();
        let guest = format!("/tmp/{name}.toml");
        self.vm.copy_in(&host, &guest);
        guest
    }

    /// Runs a command; returns (exit code, stdout, stderr).
    fn run(&self, command: &str) -> (i32, String, String) {
        let out = self.vm.ssh(command);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `netd wg apply`; returns (planned actions, stdout).
    fn apply(&self, config: &str) -> (usize, String) {
        let (code, out, err) = self.run(&format!("{} wg apply --config {config}", self.netd));
        assert_eq!(code, 0, "netd wg apply --config {config}:\n{out}\n{err}");
        let planned = out
            .lines()
            .find_map(|l| l.strip_prefix("wg: planned "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no plan summary in:\n{out}"));
        (planned, out)
    }

    /// `applctl wg add-peer`: (client config for wg-quick, TOML entry for appliance.toml).
    fn add_peer(&self, name: &str, config: &str) -> (String, String) {
        let out = self.vm.sh(&format!(
            "{} wg add-peer {name} --interface wg0 --config {config} --endpoint 192.0.2.1",
            self.applctl
        ));
        let start = out.find("[Interface]").expect("a client config");
        let end = out[start..]
            .find("\n\n")
            .and_then(|peer| {
                out[start + peer + 2..]
                    .find("\n\n")
                    .map(|e| start + peer + 2 + e)
            })
            .expect("the end of the client config");
        let client = out[start..end].to_owned() + "\n";
        // The QR code sits between the config and the entry.
        assert!(
            out[end..].contains('█') || out[end..].contains('▀'),
            "{out}"
        );
        let entry = out[out.find("[wireguard.wg0.peers.").expect("a TOML entry")..].to_owned();
        (client, entry)
    }

    /// The unix time of a peer's last handshake; 0 for none.
    fn handshake(&self, public_key: &str) -> u64 {
        self.vm
            .sh("wg show wg0 latest-handshakes")
            .lines()
            .find_map(|l| l.strip_prefix(public_key))
            .map(|t| t.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("peer {public_key} is not on wg0"))
    }

    /// `wg show wg0 dump` without what traffic changes (handshake, bytes) and without the
    /// private key.
    fn dump(&self) -> Vec<String> {
        self.vm
            .sh("wg show wg0 dump")
            .lines()
            .enumerate()
            .map(|(i, l)| {
                let f: Vec<&str> = l.split('\t').collect();
                if i == 0 {
                    f[1..].join("\t")
                } else {
                    [f[0], f[1], f[2], f[3], f[7]].join("\t")
                }
            })
            .collect()
    }
}

fn public_key_of(entry: &str) -> String {
    entry
        .lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a public_key line")
        .to_owned()
}

fn many_peers(n: u32) -> String {
    let mut s = String::new();
    for i in 0..n {
        let mut key = [0x5a_u8; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        s.push_str(&format!(
            "\n[wireguard.wg0.peers.bulk{i}]\npublic_key = \"{}\"\nallowed_ips = [\"10.9.{}.{}/32\"]\n",
            Key32::from_bytes(key),
            i / 250,
            i % 250 + 1
        ));
    }
    s
}

#[test]
fn wireguard_tunnel_with_a_wg_quick_client_peers_changed_in_place_and_1000_peers() {
    let mut vm = Vm::boot("wireguard");
    vm.wait_for_line("APPLIANCE-BOOT-OK", BOOT_TIMEOUT);
    // NETD_BIN / APPLCTL_BIN run host builds instead of the image's, to try a change
    // without building an image.
    let host_bin = |var: &str, name: &str| match std::env::var_os(var) {
        Some(host) => {
            let guest = format!("/tmp/{name}");
            vm.copy_in(std::path::Path::new(&host), &guest);
            guest
        }
        None => name.to_owned(),
    };
    let g = Guest {
        netd: host_bin("NETD_BIN", "netd"),
        applctl: host_bin("APPLCTL_BIN", "applctl"),
        vm: &vm,
    };

    // The client lives in a namespace, one veth away.
    vm.sh("modprobe wireguard && ip netns add client \
         && ip link add veth-s type veth peer name veth-c netns client \
         && ip addr add 192.0.2.1/24 dev veth-s && ip link set veth-s up \
         && ip -n client addr add 192.0.2.2/24 dev veth-c \
         && ip -n client link set veth-c up && ip -n client link set lo up");
    // netd's firewall drops input from links in no zone of this test's configs.
    vm.admit("veth-s");
    vm.admit("wg0");

    // First apply: the tunnel and its key, made on first use.
    let cfg = g.config("wg", SERVER);
    let (planned, _) = g.apply(&cfg);
    assert!(planned >= 4, "create, key, port, address, up: {planned}");
    assert_eq!(vm.sh("stat -c %a /data/wireguard/wg0.key").trim(), "600");
    assert!(
        vm.sh("ip -d link show wg0")
            .contains("alias appliance wireguard"),
        "netd marks the link it owns"
    );

    // A client from `applctl wg add-peer`, brought up by wg-quick in the namespace.
    let (client, entry) = g.add_peer("laptop", &cfg);
    assert!(client.contains("Endpoint = 192.0.2.1:51820"), "{client}");
    assert!(client.contains("AllowedIPs = 10.8.0.0/24"), "{client}");
    assert!(client.contains("DNS = 10.8.0.1"), "{client}");
    assert!(entry.contains("allowed_ips = [\"10.8.0.2/32\"]"), "{entry}");
    // The image has no resolvconf, which wg-quick runs for a DNS line; DNS is not under test.
    let wg_quick: String = client
        .lines()
        .filter(|l| !l.starts_with("DNS"))
        .map(|l| format!("{l}\n"))
        .collect();
    let host = vm.dir.join("laptop.conf");
    fs::write(&host, wg_quick).unwrap();
    vm.copy_in(&host, "/tmp/laptop.conf");
    vm.sh("chmod 600 /tmp/laptop.conf && ip netns exec client wg-quick up /tmp/laptop.conf");

    let one = format!("{SERVER}\n{entry}");
    let cfg = g.config("wg", &one);
    let (planned, out) = g.apply(&cfg);
    assert_eq!(planned, 1, "only the new peer: {out}");
    vm.sh("ip netns exec client ping -c 3 -W 5 10.8.0.1");
    let laptop = public_key_of(&entry);
    let first = g.handshake(&laptop);
    assert!(first > 0, "the laptop shook hands");
    let status = vm.sh(&format!("{} wg status --json --config {cfg}", g.netd));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let peer = &status["interfaces"][0]["peers"][0];
    assert_eq!(peer["name"], "laptop");
    assert!(peer["rx_bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(peer["tx_bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(peer["last_handshake"].as_u64().unwrap() > 0, "{status}");

    // A second peer added and removed: the laptop's session is kept (its handshake time
    // would be 0 had the peer been re-created, or the link restarted).
    let (_, phone) = g.add_peer("phone", &cfg);
    assert!(
        phone.contains("10.8.0.3/32"),
        "the next free address: {phone}"
    );
    let cfg = g.config("wg", &format!("{one}\n{phone}"));
    let (planned, out) = g.apply(&cfg);
    assert_eq!(planned, 1, "{out}");
    assert_eq!(g.handshake(&laptop), first);
    vm.sh("ip netns exec client ping -c 1 -W 5 10.8.0.1");
    let cfg = g.config("wg", &one);
    let (planned, out) = g.apply(&cfg);
    assert_eq!(planned, 1, "{out}");
    assert!(out.contains("remove"), "{out}");
    assert!(g.handshake(&laptop) >= first);
    vm.sh("ip netns exec client ping -c 1 -W 5 10.8.0.1");

    // 1000 peers in one apply.
    let big = format!("{one}{}", many_peers(1000));
    let cfg = g.config("wg", &big);
    let started = Instant::now();
    let (planned, out) = g.apply(&cfg);
    let took = started.elapsed();
    assert_eq!(planned, 1000, "{out}");
    eprintln!(
        "wg_1000_peers: {} (netd), {took:?} including ssh",
        out.lines().find(|l| l.starts_with("wg: applied")).unwrap()
    );
    assert_eq!(
        vm.sh("wg show wg0 peers | wc -l").trim(),
        "1001",
        "the laptop and 1000 peers"
    );
    vm.sh("ip netns exec client ping -c 1 -W 5 10.8.0.1");

    // The same config again: nothing planned, nothing written.
    let before = g.dump();
    let (planned, out) = g.apply(&cfg);
    assert_eq!(planned, 0, "{out}");
    assert!(
        before == g.dump(),
        "a second apply changed `wg show wg0 dump`"
    );

    // A malformed key: a clear error naming the key path and the file; nothing applied.
    vm.sh("umask 077 && echo 'not a key' > /data/wireguard/bad.key");
    let bad = g.config(
        "bad",
        &format!(
            "{big}\n[wireguard.wg1]\naddresses = [\"10.7.0.1/24\"]\nprivate_key_file = \"/data/wireguard/bad.key\"\n"
        ),
    );
    let (code, out, err) = g.run(&format!("{} wg apply --config {bad}", g.netd));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("wireguard.wg1.private_key_file"), "{err}");
    assert!(err.contains("/data/wireguard/bad.key"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert!(!vm.ssh("ip link show wg1").status.success(), "wg1 was made");
    assert!(before == g.dump(), "wg0 changed");

    // A malformed public key in the config: the config is refused with its key path.
    let bad = g.config(
        "bad",
        &format!("{one}\n[wireguard.wg0.peers.typo]\npublic_key = \"abc\"\nallowed_ips = [\"10.8.0.9/32\"]\n"),
    );
    let (code, out, err) = g.run(&format!("{} wg apply --config {bad}", g.netd));
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("wireguard.wg0.peers.typo.public_key"), "{err}");
    assert!(before == g.dump(), "wg0 changed");

    vm.power_off(POWER_OFF_TIMEOUT);
}
