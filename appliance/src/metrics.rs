//! The appliance's one Prometheus endpoint: applianced gathers every daemon's `/metrics`
//! from its control socket, says which daemons answered (`appliance_daemon_up`), and adds
//! the node's own figures read from /proc and /sys (CPU, memory, load, disks, the /data
//! filesystem, network interfaces, temperatures). Node metrics use node_exporter's names,
//! so its dashboards work unchanged.
//!
//! A scrape never fails because one source does: a daemon that is down shows
//! `appliance_daemon_up{daemon="x"} 0`, and an unreadable /proc file leaves its metrics out
//! (logged at debug).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::control::ControlClient;

/// /proc/stat counts in USER_HZ, which the kernel fixes at 100 for user space.
const USER_HZ: f64 = 100.0;
/// /proc/diskstats counts 512-byte sectors whatever the device's sector size.
const SECTOR: u64 = 512;

/// Where the node's figures are read: the real /proc and /sys, or a copy in tests.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub proc: PathBuf,
    pub sys: PathBuf,
    /// Filesystems whose size and free space are reported (`/data`).
    pub filesystems: Vec<PathBuf>,
}

impl Default for NodePaths {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
            filesystems: vec!["/data".into()],
        }
    }
}

/// The sources of one scrape.
#[derive(Debug, Clone)]
pub struct Gatherer {
    /// `(name, control socket)` of every daemon, in a stable order.
    pub daemons: Vec<(String, ControlClient)>,
    pub node: NodePaths,
}

impl Gatherer {
    /// netd, dnsd and stored at their sockets, and the real node.
    pub fn new(daemons: Vec<(String, ControlClient)>) -> Self {
        Self {
            daemons,
            node: NodePaths::default(),
        }
    }

    /// The whole exposition: `own` (applianced's metrics, already in text format), each
    /// daemon's, the up gauge, and the node's.
    pub async fn gather(&self, own: &str) -> String {
        // All at once: a daemon that hangs until its timeout must not delay the others.
        let tasks: Vec<_> = self
            .daemons
            .iter()
            .map(|(name, client)| {
                let client = client.clone();
                (
                    name.clone(),
                    tokio::spawn(async move { client.get_json("/metrics").await }),
                )
            })
            .collect();
        let mut out = String::new();
        out.push_str(own);
        ensure_newline(&mut out);
        let mut m = Metrics::default();
        for (name, task) in tasks {
            let up = match task.await {
                Ok(Ok(serde_json::Value::String(text))) => {
                    out.push_str(&text);
                    ensure_newline(&mut out);
                    1.0
                }
                Ok(Ok(other)) => {
                    tracing::warn!(daemon = %name, answer = %other, "/metrics answered JSON, not text");
                    0.0
                }
                Ok(Err(e)) => {
                    tracing::debug!(daemon = %name, error = %e, "no metrics");
                    0.0
                }
                Err(e) => {
                    tracing::warn!(daemon = %name, error = %e, "metrics scrape stopped");
                    0.0
                }
            };
            m.add(
                "appliance_daemon_up",
                "gauge",
                "Whether the daemon's control socket answered /metrics (1) or not (0).",
                &[("daemon", &name)],
                up,
            );
        }
        let node = self.node.clone();
        // Many small file reads: off the executor.
        match tokio::task::spawn_blocking(move || {
            node_metrics(&node, &mut m);
            m
        })
        .await
        {
            Ok(m) => out.push_str(&m.render()),
            Err(e) => tracing::warn!(error = %e, "node metrics stopped"),
        }
        out
    }
}

fn ensure_newline(s: &mut String) {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
}

/// Samples grouped by metric name, so each family gets one HELP and TYPE line.
#[derive(Debug, Default)]
pub struct Metrics {
    families: BTreeMap<String, Family>,
}

#[derive(Debug)]
struct Family {
    kind: &'static str,
    help: &'static str,
    samples: Vec<String>,
}

impl Metrics {
    pub fn add(
        &mut self,
        name: &str,
        kind: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let mut line = name.to_owned();
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape_label(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {value}");
        self.families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                kind,
                help,
                samples: Vec::new(),
            })
            .samples
            .push(line);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for s in &f.samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every node figure that can be read.
fn node_metrics(paths: &NodePaths, m: &mut Metrics) {
    let read = |p: PathBuf| match std::fs::read_to_string(&p) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(path = %p.display(), error = %e, "node metric source unreadable");
            None
        }
    };
    if let Some(s) = read(paths.proc.join("stat")) {
        cpu(&s, m);
    }
    if let Some(s) = read(paths.proc.join("meminfo")) {
        memory(&s, m);
    }
    if let Some(s) = read(paths.proc.join("loadavg")) {
        load(&s, m);
    }
    if let Some(s) = read(paths.proc.join("diskstats")) {
        disks(&s, m);
    }
    if let Some(s) = read(paths.proc.join("net/dev")) {
        network(&s, m);
    }
    for fs in &paths.filesystems {
        filesystem(fs, m);
    }
    hwmon(&paths.sys.join("class/hwmon"), m);
    thermal(&paths.sys.join("class/thermal"), m);
}

/// `cpuN user nice system idle iowait irq softirq steal` lines of /proc/stat.
pub fn cpu(stat: &str, m: &mut Metrics) {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|f| f.strip_prefix("cpu"))
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        for (mode, v) in MODES.iter().zip(fields) {
            if let Ok(ticks) = v.parse::<u64>() {
                m.add(
                    "node_cpu_seconds_total",
                    "counter",
                    "Seconds the CPUs spent in each mode.",
                    &[("cpu", cpu), ("mode", mode)],
                    ticks as f64 / USER_HZ,
                );
            }
        }
    }
}

/// /proc/meminfo, in bytes, under node_exporter's names.
pub fn memory(meminfo: &str, m: &mut Metrics) {
    const KEYS: [(&str, &str); 7] = [
        ("MemTotal", "node_memory_MemTotal_bytes"),
        ("MemFree", "node_memory_MemFree_bytes"),
        ("MemAvailable", "node_memory_MemAvailable_bytes"),
        ("Buffers", "node_memory_Buffers_bytes"),
        ("Cached", "node_memory_Cached_bytes"),
        ("SwapTotal", "node_memory_SwapTotal_bytes"),
        ("SwapFree", "node_memory_SwapFree_bytes"),
    ];
    for line in meminfo.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some((_, name)) = KEYS.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(Ok(n)), unit) = (parts.next().map(str::parse::<u64>), parts.next()) else {
            continue;
        };
        let bytes = if unit == Some("kB") { n * 1024 } else { n };
        m.add(
            name,
            "gauge",
            "Memory figure from /proc/meminfo, in bytes.",
            &[],
            bytes as f64,
        );
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load(loadavg: &str, m: &mut Metrics) {
    let names = ["node_load1", "node_load5", "node_load15"];
    for (name, v) in names.iter().zip(loadavg.split_whitespace()) {
        if let Ok(v) = v.parse::<f64>() {
            m.add(name, "gauge", "Load average.", &[], v);
        }
    }
}

/// Bytes read and written per block device (loop and RAM disks left out).
pub fn disks(diskstats: &str, m: &mut Metrics) {
    for line in diskstats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(read), Some(written)) = (f.get(2), f.get(5), f.get(9)) else {
            continue;
        };
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        if let (Ok(r), Ok(w)) = (read.parse::<u64>(), written.parse::<u64>()) {
            m.add(
                "node_disk_read_bytes_total",
                "counter",
                "Bytes read from the block device.",
                &[("device", name)],
                (r * SECTOR) as f64,
            );
            m.add(
                "node_disk_written_bytes_total",
                "counter",
                "Bytes written to the block device.",
                &[("device", name)],
                (w * SECTOR) as f64,
            );
        }
    }
}

/// Received and sent bytes per interface, from /proc/net/dev.
pub fn network(dev: &str, m: &mut Metrics) {
    for line in dev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(rx), Some(tx)) = (f.first(), f.get(8)) else {
            continue;
        };
        if let (Ok(rx), Ok(tx)) = (rx.parse::<u64>(), tx.parse::<u64>()) {
            let device = name.trim();
            m.add(
                "node_network_receive_bytes_total",
                "counter",
                "Bytes received on the interface.",
                &[("device", device)],
                rx as f64,
            );
            m.add(
                "node_network_transmit_bytes_total",
                "counter",
                "Bytes sent on the interface.",
                &[("device", device)],
                tx as f64,
            );
        }
    }
}

/// Size and free space of the filesystem holding `path`.
fn filesystem(path: &Path, m: &mut Metrics) {
    let st = match nix::sys::statvfs::statvfs(path) {
        Ok(st) => st,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no filesystem figures");
            return;
        }
    };
    let frag = st.fragment_size();
    let mount = path.to_string_lossy();
    let labels = [("mountpoint", mount.as_ref())];
    m.add(
        "node_filesystem_size_bytes",
        "gauge",
        "Size of the filesystem in bytes.",
        &labels,
        (st.blocks() as u64 * frag) as f64,
    );
    m.add(
        "node_filesystem_free_bytes",
        "gauge",
        "Free bytes of the filesystem, including those reserved for root.",
        &labels,
        (st.blocks_free() as u64 * frag) as f64,
    );
    m.add(
        "node_filesystem_avail_bytes",
        "gauge",
        "Bytes of the filesystem available to unprivileged users.",
        &labels,
        (st.blocks_available() as u64 * frag) as f64,
    );
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// `tempN_input` (millidegrees) of every hwmon chip, labelled by chip and sensor.
pub fn hwmon(dir: &Path, m: &mut Metrics) {
    for chip_dir in entries(dir) {
        let chip = read_trim(&chip_dir.join("name")).unwrap_or_else(|| {
            chip_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        for f in entries(&chip_dir) {
            let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(sensor) = name
                .strip_prefix("temp")
                .and_then(|s| s.strip_suffix("_input"))
            else {
                continue;
            };
            let Some(milli) = read_trim(&f).and_then(|s| s.parse::<i64>().ok()) else {
                continue;
            };
            let label = read_trim(&chip_dir.join(format!("temp{sensor}_label")))
                .unwrap_or_else(|| format!("temp{sensor}"));
            m.add(
                "node_hwmon_temp_celsius",
                "gauge",
                "Temperature of a hardware monitor sensor.",
                &[("chip", &chip), ("sensor", &label)],
                milli as f64 / 1000.0,
            );
        }
    }
}

/// `thermal_zoneN/temp` (millidegrees) labelled by zone and type.
pub fn thermal(dir: &Path, m: &mut Metrics) {
    for zone_dir in entries(dir) {
        let Some(zone) = zone_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("thermal_zone"))
            .map(str::to_owned)
        else {
            continue;
        };
        let Some(milli) = read_trim(&zone_dir.join("temp")).and_then(|s| s.parse::<i64>().ok())
        else {
            continue;
        };
        let kind = read_trim(&zone_dir.join("type")).unwrap_or_default();
        m.add(
            "node_thermal_zone_temp",
            "gauge",
            "Temperature of a thermal zone in degrees Celsius.",
            &[("zone", &zone), ("type", &kind)],
            milli as f64 / 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::{self, ApiError, Reply, Request};

    #[test]
    fn proc_files_become_node_exporter_samples() {
        let mut m = Metrics::default();
        cpu(
            "cpu  10 0 5 100 1 0 0 0 0 0\ncpu0 250 1 50 1000 2 3 4 5 0 0\nintr 1 2\n",
            &mut m,
        );
        memory(
            "MemTotal:       16384 kB\nMemFree:  1024 kB\nHugePages_Total: 0\n",
            &mut m,
        );
        load("0.50 0.25 0.10 1/100 42\n", &mut m);
        disks(
            "   7       0 loop0 1 0 8 0 0 0 0 0 0 0 0\n 253       0 vda 100 0 2048 10 50 0 4096 20 0 30 30\n",
            &mut m,
        );
        network(
            "Inter-|   Receive\n face |bytes packets\n    lo: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n  eth0: 5 1 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n",
            &mut m,
        );
        let text = m.render();
        for line in [
            "node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 2.5",
            "node_cpu_seconds_total{cpu=\"0\",mode=\"steal\"} 0.05",
            "node_memory_MemTotal_bytes 16777216",
            "node_load15 0.1",
            "node_disk_read_bytes_total{device=\"vda\"} 1048576",
            "node_disk_written_bytes_total{device=\"vda\"} 2097152",
            "node_network_transmit_bytes_total{device=\"lo\"} 2000",
            "node_network_receive_bytes_total{device=\"eth0\"} 5",
            "# TYPE node_cpu_seconds_total counter",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // The aggregate cpu line and loop devices are left out.
        assert!(!text.contains("cpu=\"\""), "{text}");
        assert!(!text.contains("loop0"), "{text}");
        assert_eq!(text.matches("# TYPE node_cpu_seconds_total").count(), 1);
    }

    #[test]
    fn temperatures_come_from_hwmon_and_thermal_zones() {
        let dir = tempfile::tempdir().unwrap();
        let chip = dir.path().join("hwmon/hwmon0");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("name"), "coretemp\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "45500\n").unwrap();
        std::fs::write(chip.join("temp1_label"), "Package id 0\n").unwrap();
        let zone = dir.path().join("thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("temp"), "38000\n").unwrap();
        std::fs::write(zone.join("type"), "x86_pkg_temp\n").unwrap();
        let mut m = Metrics::default();
        hwmon(&dir.path().join("hwmon"), &mut m);
        thermal(&dir.path().join("thermal"), &mut m);
        let text = m.render();
        assert!(
            text.contains(
                "node_hwmon_temp_celsius{chip=\"coretemp\",sensor=\"Package id 0\"} 45.5"
            ),
            "{text}"
        );
        assert!(
            text.contains("node_thermal_zone_temp{zone=\"0\",type=\"x86_pkg_temp\"} 38"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = Metrics::default();
        m.add("x", "gauge", "h", &[("l", "a\"b\\c\nd")], 1.0);
        assert!(m.render().contains("x{l=\"a\\\"b\\\\c\\nd\"} 1\n"));
    }

    #[tokio::test]
    async fn daemons_that_answer_are_up_and_included_the_others_down() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("dnsd.sock");
        let task = server::serve(&sock, 0o600, |req: Request| async move {
            match req.path.as_str() {
                "/metrics" => Ok(Reply::Metrics(
                    "# TYPE dnsd_queries_total counter\ndnsd_queries_total 7".into(),
                )),
                other => Err(ApiError::NotFound(other.into())),
            }
        })
        .await
        .unwrap();
        let g = Gatherer {
            daemons: vec![
                (
                    "netd".into(),
                    ControlClient::new(dir.path().join("netd.sock")),
                ),
                ("dnsd".into(), ControlClient::new(&sock)),
            ],
            node: NodePaths {
                proc: dir.path().join("no-proc"),
                sys: dir.path().join("no-sys"),
                filesystems: vec![dir.path().to_owned()],
            },
        };
        let text = g.gather("applianced_active_generation 3").await;
        task.abort();
        assert!(
            text.starts_with("applianced_active_generation 3\n"),
            "{text}"
        );
        assert!(text.contains("\ndnsd_queries_total 7\n"), "{text}");
        assert!(
            text.contains("appliance_daemon_up{daemon=\"dnsd\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("appliance_daemon_up{daemon=\"netd\"} 0\n"),
            "{text}"
        );
        // Missing /proc leaves those out; the filesystem is still measured.
        assert!(!text.contains("node_cpu"), "{text}");
        assert!(
            text.contains("node_filesystem_avail_bytes{mountpoint="),
            "{text}"
        );
    }
}
