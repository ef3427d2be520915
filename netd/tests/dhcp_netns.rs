#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
//! The DHCP server (`netd dhcp-server`) in a router namespace, real clients in client
//! namespaces, one veth per client,
//! plugged into the router's bridge:
//!
//! ```text
//!   router ns                                   client ns (one per client)
//!   bridge lan 192.168.50.1/24 ── pN ──veth── cN (MAC 52:54:00:50:xx:yy)
//!   netd dhcp-server                            udhcpc | dhclient | dhcpcd
//! ```
//!
//! Every test makes fresh namespaces. Needs root, iproute2, and the clients: busybox's
//! udhcpc (Debian `udhcpc`), isc-dhcp-client's dhclient and dhcpcd (Debian `dhcpcd-base`);
//! `cargo xtask test` installs them. Without them these tests fail, saying what is missing.
//! The clients run with scripts of ours that configure only their namespace's link and
//! write what they were given to a file; nothing outside the namespaces is touched.

mod common;

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use appliance::leases::{self, Lease};

/// How long a client may take to get a lease; generous for a loaded 2-core machine.
use common::{Netns, run, unique};

const TIMEOUT: Duration = Duration::from_secs(30);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const STATIC_MAC: &str = "52:54:00:50:99:01";
const STATIC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 9);

fn config(lease_time: &str) -> String {
    format!(
        r#"version = 1
[system]
domain = "home.arpa"

[interfaces.lan]
device = "lan"
addresses = ["192.168.50.1/24"]

[dhcp.lan]
start = "192.168.50.100"
end = "192.168.50.199"
lease_time = "{lease_time}"
dns = ["192.168.50.1", "9.9.9.9"]
static_leases = [{{ mac = "{STATIC_MAC}", address = "{STATIC_IP}", hostname = "nas" }}]
"#
    )
}

fn preflight() {
    common::require_root();
    for (tool, package) in [
        ("ip", "iproute2"),
        ("udhcpc", "udhcpc"),
        ("dhclient", "isc-dhcp-client"),
        ("dhcpcd", "dhcpcd-base"),
    ] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists());
        assert!(
            found,
            "`{tool}` is missing: install Debian's {package} (`cargo xtask test` does)"
        );
    }
}

/// The router namespace with its DHCP server on the bridge `lan`; each client's veth is a
/// port of that bridge, as on a real LAN.
struct Lab {
    router: Netns,
    dir: tempfile::TempDir,
    server: Option<Child>,
    /// Client link names carry the pid: dhcpcd keeps a pid file per interface name in the
    /// shared /run.
    tag: String,
}

/// One client: its namespace and link.
struct Client {
    ns: Netns,
    link: String,
    mac: String,
}

impl Lab {
    fn new(lease_time: &str) -> Self {
        preflight();
        let router = Netns::new("router");
        router.ip("link add lan type bridge");
        router.ip(&format!("addr add {ROUTER}/24 dev lan"));
        router.ip("link set lan up");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("appliance.toml"), config(lease_time)).unwrap();
        let mut lab = Self {
            router,
            dir,
            server: None,
            tag: format!("{:x}", std::process::id() % 0xffff),
        };
        lab.start();
        lab
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn leases(&self) -> Vec<Lease> {
        leases::read(&self.state_dir().join("leases.json")).unwrap()
    }

    /// Starts `netd dhcp-server` and waits until it serves `lan`.
    fn start(&mut self) {
        let mut child = self
            .router
            .command(env!("CARGO_BIN_EXE_netd"))
            .arg("dhcp-server")
            .arg("--config")
            .arg(self.dir.path().join("appliance.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .env("RUST_LOG", "netd=debug,info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("netd: {line}");
                let _ = tx.send(line);
            }
        });
        self.server = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("netd did not report `serving DHCP` on lan");
            if line.contains("serving DHCP") {
                break;
            }
        }
        // Keep draining stderr into the test output.
        std::thread::spawn(move || for _ in rx {});
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let pid = c.id().to_string();
            run(&["kill", "-TERM", &pid]);
            let status = c.wait().unwrap();
            assert!(status.success(), "netd exited with {status} on SIGTERM");
        }
    }

    /// A client namespace with a veth of MAC `mac` plugged into the bridge.
    fn client(&self, mac: &str) -> Client {
        let ns = Netns::new("client");
        let n = unique();
        let link = format!("c{}x{n}", self.tag);
        self.router.ip(&format!(
            "link add p{n} type veth peer name {link} netns {} address {mac}",
            ns.name
        ));
        self.router.ip(&format!("link set p{n} master lan up"));
        ns.ip(&format!("link set {link} up"));
        Client {
            ns,
            link,
            mac: mac.to_owned(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a client's script was told, one event per line: `REASON ip=.. router=.. dns=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    reason: String,
    ip: Ipv4Addr,
    routers: String,
    dns: String,
    domain: String,
}

fn events(path: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut words = l.split(' ');
            let reason = words.next()?.to_owned();
            let field = |k: &str| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix(k))
                    .unwrap_or_default()
                    .to_owned()
            };
            Some(Event {
                ip: field("ip=").parse().ok()?,
                routers: field("router="),
                dns: field("dns=").replace(',', " "),
                domain: field("domain="),
                reason,
            })
        })
        .collect()
}

fn wait_for(path: &Path, what: &str, ok: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let e = events(path);
        if ok(&e) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {TIMEOUT:?}; events so far: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A client script: configures the address in its own namespace and logs the event.
/// `$1`-style reason for udhcpc, `$reason` and `new_*` for dhclient and dhcpcd.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A running client, stopped on drop. dhcpcd is asked to exit (`dhcpcd -x`): killed, it
/// would leave its privilege-separation helpers and pid files behind.
struct Running {
    child: Child,
    dhcpcd: Option<(String, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((ns, link)) = &self.dhcpcd {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "dhcpcd", "-x", "-4", link])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(format!("/var/lib/dhcpcd/{link}.lease"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client {
    /// busybox udhcpc in the foreground (it renews at T1); `hostname` as option 12.
    fn udhcpc(&self, dir: &Path, hostname: &str) -> (Running, PathBuf) {
        let out = dir.join(format!("{}.events", self.link));
        let s = script(
            dir,
            &format!("{}.udhcpc", self.link),
            &format!(
                r#"case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/24" dev "$interface"
    echo "$1 ip=$ip router=$router dns=$(echo $dns | tr ' ' ,) domain=$domain" >> {out} ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
"#,
                out = out.display()
            ),
        );
        let child = self
            .ns
            .command("udhcpc")
            .args(["-f", "-i", &self.link, "-t", "20", "-T", "1", "-x"])
            .arg(format!("hostname:{hostname}"))
            .arg("-s")
            .arg(&s)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        (
            Running {
                child,
                dhcpcd: None,
            },
            out,
        )
    }

    fn dhclient(&self, dir: &Path) -> (Running, PathBuf) {
        let out = dir.join(format!("{}.events", self.link));
        let s = script(
            dir,
            &format!("{}.dhclient", self.link),
            &format!(
                r#"case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev "$interface"
    ip addr add "$new_ip_address/24" dev "$interface"
    echo "$reason ip=$new_ip_address router=$new_routers dns=$(echo $new_domain_name_servers | tr ' ' ,) domain=$new_domain_name" >> {out} ;;
esac
"#,
                out = out.display()
            ),
        );
        let child = self
            .ns
            .command("dhclient")
            .args(["-d", "-4", "-sf"])
            .arg(&s)
            .arg("-lf")
            .arg(dir.join(format!("{}.dhclient.leases", self.link)))
            .arg("-pf")
            .arg(dir.join(format!("{}.dhclient.pid", self.link)))
            .arg(&self.link)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (
            Running {
                child,
                dhcpcd: None,
            },
            out,
        )
    }

    fn dhcpcd(&self, dir: &Path) -> (Running, PathBuf) {
        let out = dir.join(format!("{}.events", self.link));
        let s = script(
            dir,
            &format!("{}.dhcpcd", self.link),
            &format!(
                r#"case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    echo "$reason ip=$new_ip_address router=$new_routers dns=$(echo $new_domain_name_servers | tr ' ' ,) domain=$new_domain_name" >> {out} ;;
esac
"#,
                out = out.display()
            ),
        );
        let conf = dir.join(format!("{}.dhcpcd.conf", self.link));
        // No ARP probe of the offered address (a fresh namespace has no one to clash
        // with) and only IPv4; dhcpcd configures the address itself.
        std::fs::write(
            &conf,
            "noarp\nipv4only\noption domain_name_servers, domain_name, routers\n",
        )
        .unwrap();
        let child = self
            .ns
            .command("dhcpcd")
            .args(["-B", "-4", "-f"])
            .arg(&conf)
            .arg("-c")
            .arg(&s)
            .arg(&self.link)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let dhcpcd = Some((self.ns.name.clone(), self.link.clone()));
        (Running { child, dhcpcd }, out)
    }
}

fn in_pool(ip: Ipv4Addr) -> bool {
    (Ipv4Addr::new(192, 168, 50, 100)..=Ipv4Addr::new(192, 168, 50, 199)).contains(&ip)
}

fn assert_options(e: &Event) {
    assert!(in_pool(e.ip), "{e:?}");
    assert_eq!(e.routers, "192.168.50.1", "{e:?}");
    assert_eq!(e.dns, "192.168.50.1 9.9.9.9", "{e:?}");
    assert_eq!(e.domain, "home.arpa", "{e:?}");
}

#[test]
fn udhcpc_gets_a_lease_with_router_and_dns_and_renews_it() {
    let lab = Lab::new("8s");
    let c = lab.client("52:54:00:50:00:01");
    let (_run, out) = c.udhcpc(lab.dir.path(), "Kitchen_Pi");
    let e = wait_for(&out, "renewal", |e| e.iter().any(|e| e.reason == "renew"));
    assert_eq!(e[0].reason, "bound");
    assert_options(&e[0]);
    assert!(
        e.iter().all(|x| x.ip == e[0].ip),
        "a renewal keeps the address: {e:?}"
    );
    assert!(
        c.ns.ip(&format!("-4 -br addr show dev {}", c.link))
            .contains(&e[0].ip.to_string())
    );
    let l = lab.leases();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].mac.to_string(), c.mac);
    assert_eq!(l[0].ip, e[0].ip);
    assert_eq!(l[0].hostname.as_deref(), Some("kitchen-pi"));
}

#[test]
fn dhclient_gets_a_lease_with_router_and_dns() {
    let lab = Lab::new("1h");
    let c = lab.client("52:54:00:50:00:02");
    let (_run, out) = c.dhclient(lab.dir.path());
    let e = wait_for(&out, "lease", |e| !e.is_empty());
    assert_eq!(e[0].reason, "BOUND");
    assert_options(&e[0]);
    let l = lab.leases();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].mac.to_string(), c.mac);
}

#[test]
fn dhcpcd_gets_a_lease_with_router_and_dns() {
    let lab = Lab::new("1h");
    let c = lab.client("52:54:00:50:00:03");
    let (_run, out) = c.dhcpcd(lab.dir.path());
    let e = wait_for(&out, "lease", |e| !e.is_empty());
    assert_eq!(e[0].reason, "BOUND");
    assert_options(&e[0]);
    assert!(
        c.ns.ip(&format!("-4 -br addr show dev {}", c.link))
            .contains(&e[0].ip.to_string())
    );
    let l = lab.leases();
    assert_eq!(l[0].mac.to_string(), c.mac);
}

#[test]
fn a_static_lease_by_mac_gets_its_address() {
    let lab = Lab::new("1h");
    let c = lab.client(STATIC_MAC);
    let (_run, out) = c.udhcpc(lab.dir.path(), "whatever");
    let e = wait_for(&out, "lease", |e| !e.is_empty());
    assert_eq!(e[0].ip, STATIC_IP);
    let l = lab.leases();
    assert_eq!(l[0].ip, STATIC_IP);
    assert_eq!(l[0].expires, None, "a static lease does not expire");
}

#[test]
fn leases_survive_a_restart_and_are_never_shared() {
    let mut lab = Lab::new("1h");
    let a = lab.client("52:54:00:50:00:0a");
    let b = lab.client("52:54:00:50:00:0b");
    let c = lab.client("52:54:00:50:00:0c");
    let dir = lab.dir.path().to_owned();
    let ip_a = {
        let (_run, out) = a.udhcpc(&dir, "alpha");
        wait_for(&out, "lease for a", |e| !e.is_empty())[0].ip
    };
    let ip_b = {
        let (_run, out) = b.dhcpcd(&dir);
        wait_for(&out, "lease for b", |e| !e.is_empty())[0].ip
    };
    assert_ne!(ip_a, ip_b);
    let l = lab.leases();
    let macs: Vec<String> = l.iter().map(|l| l.mac.to_string()).collect();
    assert!(macs.contains(&a.mac) && macs.contains(&b.mac), "{l:?}");
    assert_eq!(
        l.iter()
            .find(|l| l.mac.to_string() == a.mac)
            .unwrap()
            .hostname
            .as_deref(),
        Some("alpha")
    );

    lab.stop();
    lab.start();
    assert_eq!(lab.leases(), l, "the restart keeps the lease file");
    // a comes back without asking for an address (udhcpc starts with a DISCOVER).
    std::fs::remove_file(dir.join(format!("{}.events", a.link))).unwrap();
    let again = {
        let (_run, out) = a.udhcpc(&dir, "alpha");
        wait_for(&out, "lease for a after the restart", |e| !e.is_empty())[0].ip
    };
    assert_eq!(again, ip_a);
    let ip_c = {
        let (_run, out) = c.dhclient(&dir);
        wait_for(&out, "lease for c", |e| !e.is_empty())[0].ip
    };
    assert!(
        ip_c != ip_a && ip_c != ip_b,
        "c got {ip_c}, a {ip_a}, b {ip_b}"
    );
    assert_eq!(lab.leases().len(), 3);
}

#[test]
fn a_damaged_lease_file_is_kept_aside_and_a_held_address_is_probed_not_offered() {
    let mut lab = Lab::new("1h");
    let a = lab.client("52:54:00:50:00:1a");
    let b = lab.client("52:54:00:50:00:1b");
    let dir = lab.dir.path().to_owned();
    // a keeps running, its address configured: it answers the server's echo probe.
    let (_run_a, out) = a.udhcpc(&dir, "alpha");
    let ip_a = wait_for(&out, "lease for a", |e| !e.is_empty())[0].ip;
    assert_eq!(ip_a, Ipv4Addr::new(192, 168, 50, 100), "the first address");

    lab.stop();
    let path = lab.state_dir().join("leases.json");
    std::fs::write(&path, b"{\"version\":1,\"leases\":[{\"mac\":").unwrap();
    lab.start();
    let kept: Vec<_> = std::fs::read_dir(lab.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("leases.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(lab.leases().is_empty());

    // The table forgot a; b would get a's address (the first) but for the probe.
    let (_run_b, out) = b.dhclient(&dir);
    let ip_b = wait_for(&out, "lease for b", |e| !e.is_empty())[0].ip;
    assert!(
        in_pool(ip_b) && ip_b != ip_a,
        "b got {ip_b}, a holds {ip_a}"
    );
    let l = lab.leases();
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(
        (l[0].mac.to_string(), l[0].ip),
        (b.mac.clone(), ip_b.into())
    );
}
