//! The services a generation runs inside `netd serve`: the LAN DHCP server, the router
//! advertisements and the WAN DHCP client. They are steps of the generation's apply (see
//! [`crate::daemon`]), after links, firewall and WireGuard: a service that cannot start
//! (a DHCP port taken, a raw socket refused) fails that apply, which then undoes the steps
//! before it.
//!
//! [`Services`] is the adapter: [`ThreadServices`] runs each service on threads of its own
//! with sockets opened before the apply returns; [`FakeServices`] stands in for it in unit
//! tests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use appliance::Config;

use crate::dhcp::{self, Scope};
use crate::ipv6::{self, AdvertLink};
use crate::wan;

/// A service of a generation, in the order the apply starts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Dhcp,
    Ra,
    Wan,
}

impl Service {
    /// In apply order: the LAN side first, the WAN client (which may release and renew
    /// the uplink's address) last.
    pub const ALL: [Self; 3] = [Self::Dhcp, Self::Ra, Self::Wan];

    /// The step's name in plans, errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp server",
            Self::Ra => "router advertisements",
            Self::Wan => "wan dhcp client",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a service runs for a config: compared to tell whether a new config restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Dhcp(Vec<Scope>),
    Ra(Vec<AdvertLink>),
    Wan(Vec<String>),
}

impl Shape {
    fn of(service: Service, cfg: Option<&Config>) -> Self {
        match service {
            Service::Dhcp => Self::Dhcp(cfg.map(dhcp::scopes).unwrap_or_default()),
            Service::Ra => Self::Ra(cfg.map(ipv6::advertised_links).unwrap_or_default()),
            Service::Wan => Self::Wan(cfg.map(wan::cli::dhcp_links).unwrap_or_default()),
        }
    }

    fn links(&self) -> Vec<String> {
        match self {
            Self::Dhcp(s) => s.iter().map(|s| s.link.to_string()).collect(),
            Self::Ra(l) => l.iter().map(|l| l.name.clone()).collect(),
            Self::Wan(l) => l.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.links().is_empty()
    }

    /// How going from `self` to `next` reads in a plan; `None` when nothing changes.
    fn change(&self, next: &Self) -> Option<String> {
        if self == next {
            return None;
        }
        let (before, after) = (self.links(), next.links());
        Some(match (before.is_empty(), after.is_empty()) {
            (_, true) => format!("stop (was on {})", before.join(", ")),
            (true, false) => format!("start on {}", after.join(", ")),
            (false, false) => format!("restart on {}", after.join(", ")),
        })
    }
}

/// What bringing `service` from what it runs for `running` (`None`: stopped) to `cfg`
/// would do; `None`: nothing. `netd check` plans with it against the services of the
/// netd that serves, which run in another process.
pub fn change(service: Service, running: Option<&Config>, cfg: Option<&Config>) -> Option<String> {
    Shape::of(service, running).change(&Shape::of(service, cfg))
}

/// Starts, restarts and stops the services of the applied generation.
pub trait Services: Send {
    /// Checks what can be checked before anything changes (the stored DHCP leases are
    /// readable); the error says what to fix.
    fn validate(&self, cfg: &Config) -> Result<(), String>;

    /// What [`Services::apply`] would do; `None`: nothing.
    fn plan(&self, service: Service, cfg: Option<&Config>) -> Option<String>;

    /// Brings `service` to `cfg` (`None`: stopped), restarting it when what it serves
    /// changed and leaving it alone otherwise. Returns what it did. On error the service
    /// runs as before the call (or the error says that this failed too).
    fn apply(&mut self, service: Service, cfg: Option<&Config>) -> Result<Option<String>, String>;

    /// Stops every service (netd stopping): advertisements say goodbye, the WAN client
    /// releases its lease.
    fn stop(&mut self);
}

/// A service as the apply leaves it: stopped, or started for a config.
fn describe_result(service: Service, did: &str) {
    tracing::info!(service = service.name(), "{did}");
}

struct DhcpServer {
    cfg: Arc<Config>,
    shape: Shape,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

struct Advertiser {
    cfg: Arc<Config>,
    shape: Shape,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

struct WanClients {
    cfg: Arc<Config>,
    shape: Shape,
    running: wan::Running,
}

/// The services on threads of `netd serve`.
pub struct ThreadServices {
    paths: wan::Paths,
    dhcp: Option<DhcpServer>,
    ra: Option<Advertiser>,
    wan: Option<WanClients>,
}

impl fmt::Debug for ThreadServices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadServices")
            .field("state_dir", &self.paths.state_dir)
            .finish_non_exhaustive()
    }
}

impl ThreadServices {
    /// Nothing running yet. `paths`: the DHCP state directory (leases.json,
    /// wan-<link>.json), the DNS file for dnsd, and whom the WAN client tells its address.
    pub fn new(paths: wan::Paths) -> Self {
        Self {
            paths,
            dhcp: None,
            ra: None,
            wan: None,
        }
    }

    fn lease_file(&self) -> PathBuf {
        self.paths.state_dir.join(dhcp::server::LEASE_FILE)
    }

    fn shape(&self, service: Service) -> Shape {
        let running = match service {
            Service::Dhcp => self.dhcp.as_ref().map(|d| &d.shape),
            Service::Ra => self.ra.as_ref().map(|r| &r.shape),
            Service::Wan => self.wan.as_ref().map(|w| &w.shape),
        };
        running.cloned().unwrap_or_else(|| Shape::of(service, None))
    }

    fn running_config(&self, service: Service) -> Option<Arc<Config>> {
        match service {
            Service::Dhcp => self.dhcp.as_ref().map(|d| Arc::clone(&d.cfg)),
            Service::Ra => self.ra.as_ref().map(|r| Arc::clone(&r.cfg)),
            Service::Wan => self.wan.as_ref().map(|w| Arc::clone(&w.cfg)),
        }
    }

    fn stop_one(&mut self, service: Service) {
        match service {
            Service::Dhcp => {
                if let Some(d) = self.dhcp.take() {
                    let _ = d.stop.send(());
                    if d.thread.join().is_err() {
                        tracing::error!("the DHCP server thread panicked");
                    }
                }
            }
            Service::Ra => {
                if let Some(r) = self.ra.take() {
                    // Its last word (router lifetime 0) goes out before the join returns.
                    r.stop.store(true, Ordering::SeqCst);
                    if r.thread.join().is_err() {
                        tracing::error!("the router advertisement thread panicked");
                    }
                }
            }
            Service::Wan => {
                if let Some(w) = self.wan.take() {
                    // The clients release their leases before they return.
                    for e in w.running.stop() {
                        tracing::error!("{e}");
                    }
                }
            }
        }
    }

    /// Starts `service` for `cfg`, its sockets open when this returns. `before`: what ran
    /// until now, for the advertisements' retired prefixes.
    fn start(&mut self, service: Service, cfg: Arc<Config>, before: &Shape) -> Result<(), String> {
        let shape = Shape::of(service, Some(&cfg));
        match service {
            Service::Dhcp => {
                let bound =
                    dhcp::bind(&cfg, &self.paths.state_dir, true).map_err(|e| e.to_string())?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the DHCP server's runtime: {e}"))?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let thread = std::thread::spawn(move || {
                    runtime.block_on(bound.serve(async {
                        let _ = stopped.await;
                    }));
                });
                self.dhcp = Some(DhcpServer {
                    cfg,
                    shape,
                    stop,
                    thread,
                });
            }
            Service::Ra => {
                let Shape::Ra(adverts) = &shape else {
                    return Ok(());
                };
                let before = match before {
                    Shape::Ra(b) => b.as_slice(),
                    _ => &[],
                };
                // Prefixes a link no longer has go out with zero lifetimes.
                let links = ipv6::with_retired(before, adverts);
                let stop = Arc::new(AtomicBool::new(false));
                let thread =
                    ipv6::start_links(links, Arc::clone(&stop)).map_err(|e| e.to_string())?;
                self.ra = Some(Advertiser {
                    cfg,
                    shape,
                    stop,
                    thread,
                });
            }
            Service::Wan => {
                let links = shape.links();
                let running = wan::start_all(&links, &self.paths).map_err(|e| e.to_string())?;
                self.wan = Some(WanClients {
                    cfg,
                    shape,
                    running,
                });
            }
        }
        Ok(())
    }
}

impl Services for ThreadServices {
    fn validate(&self, cfg: &Config) -> Result<(), String> {
        if !dhcp::scopes(cfg).is_empty() {
            let path = self.lease_file();
            match appliance::leases::read(&path) {
                // A damaged file or another format version is moved aside at start
                // (logged, see dhcp::server): no reason to refuse.
                Ok(_)
                | Err(
                    appliance::leases::LeaseError::Parse { .. }
                    | appliance::leases::LeaseError::Version { .. },
                ) => {}
                Err(e) => return Err(format!("dhcp server: {e}; fix or remove the file")),
            }
        }
        Ok(())
    }

    fn plan(&self, service: Service, cfg: Option<&Config>) -> Option<String> {
        self.shape(service).change(&Shape::of(service, cfg))
    }

    fn apply(&mut self, service: Service, cfg: Option<&Config>) -> Result<Option<String>, String> {
        let before = self.shape(service);
        let Some(did) = before.change(&Shape::of(service, cfg)) else {
            return Ok(None);
        };
        // The old one goes first: the new one needs its ports (67, the WAN's DHCP
        // exchange), and the advertisements' goodbye must precede the new adverts.
        let previous = self.running_config(service);
        self.stop_one(service);
        let Some(cfg) = cfg else {
            describe_result(service, &did);
            return Ok(Some(did));
        };
        if Shape::of(service, Some(cfg)).is_empty() {
            describe_result(service, &did);
            return Ok(Some(did));
        }
        match self.start(service, Arc::new(cfg.clone()), &before) {
            Ok(()) => {
                describe_result(service, &did);
                Ok(Some(did))
            }
            Err(e) => {
                let Some(previous) = previous else {
                    return Err(e);
                };
                // Back to what ran: the old sockets were open a moment ago.
                match self.start(service, previous, &Shape::of(service, None)) {
                    Ok(()) => Err(format!("{e}; the previous {service} runs again")),
                    Err(e2) => Err(format!(
                        "{e}; restarting the previous {service} failed too: {e2}"
                    )),
                }
            }
        }
    }

    fn stop(&mut self) {
        for s in [Service::Ra, Service::Dhcp, Service::Wan] {
            self.stop_one(s);
        }
    }
}

/// What [`FakeServices`] holds; shared, so that a test keeps a handle on it.
#[derive(Debug, Default)]
pub struct FakeServiceState {
    /// Each running service and what it runs (its links).
    pub running: BTreeMap<Service, Vec<String>>,
    /// The next start of this service fails, as a taken port would.
    pub fail: Option<Service>,
    /// Every start and stop, in order.
    pub log: Vec<String>,
    /// What each running service serves, in full (a new DHCP range restarts the server).
    shapes: BTreeMap<Service, String>,
}

/// In-memory services for unit tests: they start and stop instantly and can be told to
/// fail a start.
#[derive(Debug, Default, Clone)]
pub struct FakeServices {
    pub state: Arc<Mutex<FakeServiceState>>,
}

impl FakeServices {
    fn with<R>(&self, f: impl FnOnce(&mut FakeServiceState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The links each running service serves.
    pub fn running(&self) -> BTreeMap<Service, Vec<String>> {
        self.with(|s| s.running.clone())
    }
}

impl Services for FakeServices {
    fn validate(&self, _cfg: &Config) -> Result<(), String> {
        Ok(())
    }

    fn plan(&self, service: Service, cfg: Option<&Config>) -> Option<String> {
        let next = Shape::of(service, cfg);
        self.with(|s| {
            let running = s.running.get(&service).cloned().unwrap_or_default();
            let shape = s
                .shapes
                .get(&service)
                .cloned()
                .unwrap_or_else(|| format!("{:?}", Shape::of(service, None)));
            (shape != format!("{next:?}")).then(|| format!("{running:?} -> {:?}", next.links()))
        })
    }

    fn apply(&mut self, service: Service, cfg: Option<&Config>) -> Result<Option<String>, String> {
        let Some(did) = self.plan(service, cfg) else {
            return Ok(None);
        };
        let next = Shape::of(service, cfg);
        let links = next.links();
        self.with(|s| {
            if s.fail == Some(service) && !links.is_empty() {
                s.fail = None;
                s.log.push(format!("{service}: start failed"));
                return Err(format!(
                    "cannot open the socket of {service} on {}: Address in use (os error 98)",
                    links.join(", ")
                ));
            }
            s.log.push(format!("{service}: {did}"));
            if links.is_empty() {
                s.running.remove(&service);
                s.shapes.remove(&service);
            } else {
                s.running.insert(service, links);
                s.shapes.insert(service, format!("{next:?}"));
            }
            Ok(Some(did))
        })
    }

    fn stop(&mut self) {
        self.with(|s| {
            s.running.clear();
            s.shapes.clear();
        });
    }
}
