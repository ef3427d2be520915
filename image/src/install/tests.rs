use std::io::{Read, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;
use crate::bundle::{CHUNK_SIZE, Release as BundleRelease, SecretKey};
use source::FileSource;

const NOW: u64 = 1_800_000_000;
const SLOT_SIZE: u64 = 8 << 20;

struct Box_ {
    dir: tempfile::TempDir,
    key: SecretKey,
    device: Device,
    payload: Vec<u8>,
}

fn appliance_box() -> Box_ {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let paths = Paths {
        esp: d.join("esp"),
        slot_dir: d.join("slots"),
        state_dir: d.join("data/update"),
        release: d.join("release"),
        keyring: d.join("update-keys"),
        cmdline: d.join("cmdline"),
    };
    fs::create_dir_all(paths.esp.join("EFI/appliance")).unwrap();
    BootEnv::new(&paths.esp)
        .init(&BootState::initial())
        .unwrap();
    fs::create_dir_all(&paths.slot_dir).unwrap();
    for s in ["rootA", "rootB"] {
        let f = fs::File::create(paths.slot_dir.join(s)).unwrap();
        f.set_len(SLOT_SIZE).unwrap();
    }
    let (key, _) = SecretKey::generate().unwrap();
    fs::write(&paths.keyring, format!("{}\n", key.public())).unwrap();
    let device = Device {
        paths,
        extra_keys: Vec::new(),
        now: NOW,
        config_generation: None,
    };
    set_release(&device, "1.2.0", 3);
    boot_into(&device, Slot::A);
    let len = (CHUNK_SIZE * 5 + CHUNK_SIZE / 2) as usize;
    let payload: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    fs::write(d.join("rootfs.squashfs"), &payload).unwrap();
    Box_ {
        dir,
        key,
        device,
        payload,
    }
}

fn set_release(device: &Device, version: &str, security: u64) {
    let r = Release {
        version: version.parse().unwrap(),
        security_version: security,
        compatible: bundle::cli::COMPATIBLE.into(),
    };
    fs::write(&device.paths.release, r.render()).unwrap();
}

/// What GRUB does on a boot: pick the slot (spending a try) and pass it on the cmdline.
fn grub_boots(device: &Device) -> Slot {
    let env = BootEnv::new(&device.paths.esp);
    let found = env.read();
    let (i, state) = found.current().unwrap();
    let (slot, trial) = state.next_boot().unwrap();
    if trial {
        // GRUB rewrites the newest copy in place.
        let mut s = state.clone();
        match slot {
            Slot::A => s.a.tries = s.a.tries.map(|t| t - 1),
            Slot::B => s.b.tries = s.b.tries.map(|t| t - 1),
        }
        fs::write(
            device.paths.esp.join(bootstate::COPIES[i]),
            s.encode().unwrap(),
        )
        .unwrap();
    }
    boot_into(device, slot);
    slot
}

fn boot_into(device: &Device, slot: Slot) {
    fs::write(
        &device.paths.cmdline,
        format!("root=PARTLABEL=root{slot} ro appliance.slot={slot}\n"),
    )
    .unwrap();
}

impl Box_ {
    fn bundle(&self, version: &str, security: u64, key: &SecretKey) -> PathBuf {
        let out = self.dir.path().join(format!("{version}-{security}.bundle"));
        bundle::create(
            &self.dir.path().join("rootfs.squashfs"),
            &BundleRelease {
                compatible: bundle::cli::COMPATIBLE.into(),
                version: version.parse().unwrap(),
                security_version: security,
                min_version: None,
                created: NOW - 10,
                expires: NOW + 1000,
                allow_downgrade: false,
            },
            &[key],
            &out,
        )
        .unwrap();
        out
    }

    fn slot_bytes(&self, slot: Slot) -> Vec<u8> {
        fs::read(self.device.slot_device(slot)).unwrap()
    }

    fn boot(&self) -> BootState {
        BootEnv::new(&self.device.paths.esp).current().unwrap()
    }

    fn state(&self) -> UpdateState {
        StateFile::new(&self.device.paths.state_dir).load().unwrap()
    }
}

#[test]
fn install_trial_boot_and_commit() {
    let b = appliance_box();
    let path = b.bundle("1.3.0", 4, &b.key);
    let mut chunks_seen = 0;
    let report = b
        .device
        .install(&mut FileSource(path), |done, _| chunks_seen = done)
        .unwrap();
    assert_eq!(
        (report.slot, report.bytes),
        (Slot::B, b.payload.len() as u64)
    );
    assert_eq!(chunks_seen, 6);
    assert_eq!(&b.slot_bytes(Slot::B)[..b.payload.len()], &b.payload[..]);
    assert_eq!(b.boot().next_boot(), Some((Slot::B, true)));
    assert_eq!(b.state().last.unwrap().phase, Phase::Pending);

    // The reboot: GRUB tries B, the new release runs and is healthy.
    assert_eq!(grub_boots(&b.device), Slot::B);
    set_release(&b.device, "1.3.0", 4);
    assert_eq!(b.device.check_boot().unwrap(), None);
    assert!(b.device.mark_good().unwrap());
    assert_eq!(b.boot().next_boot(), Some((Slot::B, false)));
    let state = b.state();
    assert_eq!(state.security_floor, 4);
    assert_eq!(state.last.unwrap().phase, Phase::Committed);
    assert!(
        !b.device.mark_good().unwrap(),
        "a second mark-good changes nothing"
    );
}

#[test]
fn an_unhealthy_boot_reboots_only_while_on_trial() {
    let b = appliance_box();
    assert!(!b.device.health_failed().unwrap(), "committed A stays up");
    let path = b.bundle("1.3.0", 4, &b.key);
    b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    assert_eq!(grub_boots(&b.device), Slot::B);
    assert!(b.device.health_failed().unwrap(), "B on trial reboots");
}

#[test]
fn an_unhealthy_update_spends_its_tries_and_the_rollback_is_reported() {
    let b = appliance_box();
    let path = b.bundle("1.3.0", 4, &b.key);
    b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    // Three boots of B that never reach mark-good (health fails), then GRUB falls back.
    for _ in 0..3 {
        assert_eq!(grub_boots(&b.device), Slot::B);
    }
    assert_eq!(grub_boots(&b.device), Slot::A);
    let message = b.device.check_boot().unwrap().unwrap();
    assert!(message.contains("rolled back to slot A"), "{message}");
    let boot = b.boot();
    assert!(
        !boot.b.ok,
        "the failed slot is out of the rotation: {boot:?}"
    );
    assert_eq!(boot.next_boot(), Some((Slot::A, false)));
    assert_eq!(b.state().last.unwrap().phase, Phase::RolledBack);
    assert_eq!(b.state().security_floor, 0, "the floor never rose");
    assert_eq!(b.device.check_boot().unwrap(), None, "reported once");
}

#[test]
fn refused_bundles_write_nothing() {
    let b = appliance_box();
    let (stranger, _) = SecretKey::generate().unwrap();
    let before = b.boot();
    for (path, expect) in [
        (
            b.bundle("1.3.0", 4, &stranger),
            "no signature by a trusted key",
        ),
        (b.bundle("1.1.0", 4, &b.key), "older than the installed"),
        (b.bundle("1.3.0", 2, &b.key), "below this device's floor"),
    ] {
        let err = b
            .device
            .install(&mut FileSource(path), |_, _| {})
            .unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }
    assert!(b.slot_bytes(Slot::B).iter().all(|&x| x == 0));
    assert_eq!(b.boot(), before);
    assert_eq!(b.state(), UpdateState::default());
}

#[test]
fn a_tampered_chunk_stops_the_install_and_the_half_slot_never_boots() {
    let b = appliance_box();
    let path = b.bundle("1.3.0", 4, &b.key);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - (CHUNK_SIZE as usize) - 10;
    bytes[at] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = b
        .device
        .install(&mut FileSource(path), |_, _| {})
        .unwrap_err();
    assert!(err.to_string().contains("chunk 4 does not match"), "{err}");
    assert!(!b.boot().b.ok);
    assert_eq!(b.boot().next_boot(), Some((Slot::A, false)));
    assert_eq!(b.state().last.unwrap().phase, Phase::Abandoned);
    // Nothing of the bad chunk reached the disk.
    let written = b.slot_bytes(Slot::B);
    let start = 4 * CHUNK_SIZE as usize;
    assert!(
        written[start..start + CHUNK_SIZE as usize]
            .iter()
            .all(|&x| x == 0)
    );
}

/// A source whose first `cuts` opens end with an error: the first after `after` bytes,
/// later ones after `later` bytes.
#[derive(Debug)]
struct Flaky {
    inner: FileSource,
    after: u64,
    later: u64,
    cuts: usize,
    opens: Vec<u64>,
}

struct CutReader {
    inner: Box<dyn Read + Send>,
    left: u64,
}

impl Read for CutReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
        }
        let n = buf.len().min(self.left as usize);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

impl Source for Flaky {
    fn open_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        self.opens.push(offset);
        let inner = self.inner.open_at(offset)?;
        if self.opens.len() <= self.cuts {
            let left = if self.opens.len() == 1 {
                self.after
            } else {
                self.later
            };
            Ok(Box::new(CutReader { inner, left }))
        } else {
            Ok(inner)
        }
    }
    fn describe(&self) -> String {
        "flaky".into()
    }
}

#[test]
fn a_cut_source_resumes_within_the_run_and_across_runs() {
    let b = appliance_box();
    let path = b.bundle("1.3.0", 4, &b.key);
    let mut flaky = Flaky {
        inner: FileSource(path.clone()),
        after: 2 * CHUNK_SIZE + 5000,
        later: 0,
        cuts: 1,
        opens: Vec::new(),
    };
    b.device.install(&mut flaky, |_, _| {}).unwrap();
    assert_eq!(flaky.opens.len(), 2, "{:?}", flaky.opens);
    let header = flaky.opens[1] - 2 * CHUNK_SIZE;
    assert!(
        header > 12 && header < 4096,
        "resumed at chunk 2: {:?}",
        flaky.opens
    );
    assert_eq!(&b.slot_bytes(Slot::B)[..b.payload.len()], &b.payload[..]);

    // Every reconnect fails: the run gives up, keeping its progress; the next run resumes.
    let b = appliance_box();
    let path = b.bundle("1.3.0", 4, &b.key);
    let mut dead = Flaky {
        inner: FileSource(path.clone()),
        after: 3 * CHUNK_SIZE + 8192,
        later: 100,
        cuts: usize::MAX,
        opens: Vec::new(),
    };
    let err = b.device.install(&mut dead, |_, _| {}).unwrap_err();
    assert!(
        matches!(err, UpdateError::SourceFailed { chunk: 3, .. }),
        "{err}"
    );
    let last = b.state().last.unwrap();
    assert_eq!((last.phase, last.chunks_done), (Phase::Writing, 3));
    assert!(!b.boot().b.ok, "a half-written slot is not bootable");
    let report = b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    assert_eq!(report.resumed_at_chunk, 3);
    assert_eq!(&b.slot_bytes(Slot::B)[..b.payload.len()], &b.payload[..]);
    assert_eq!(b.boot().next_boot(), Some((Slot::B, true)));
}

/// A one-file HTTP/1.1 server that honours `Range: bytes=N-` and cuts its first response
/// after `cut` bytes of body.
fn serve(file: PathBuf, cut: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/update.bundle", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        let body = fs::read(&file).unwrap();
        for (n, conn) in listener.incoming().enumerate() {
            let mut conn = conn.unwrap();
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).unwrap() == 0 {
                    break;
                }
                req.push(byte[0]);
            }
            let req = String::from_utf8_lossy(&req).to_lowercase();
            let from = req
                .lines()
                .find_map(|l| l.strip_prefix("range: bytes="))
                .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok());
            seen.lock().unwrap().push(format!("{from:?}"));
            let (status, part) = match from {
                Some(f) => ("206 Partial Content", &body[f..]),
                None => ("200 OK", &body[..]),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                part.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let send = if n == 0 { &part[..cut] } else { part };
            let _ = conn.write_all(send);
        }
    });
    (url, ranges)
}

#[test]
fn http_downloads_resume_with_range_requests() {
    let b = appliance_box();
    let path = b.bundle("1.3.0", 4, &b.key);
    let (url, ranges) = serve(path, (3 * CHUNK_SIZE) as usize);
    let mut source = source::open(&url);
    let report = b.device.install(source.as_mut(), |_, _| {}).unwrap();
    assert_eq!(report.slot, Slot::B);
    assert_eq!(&b.slot_bytes(Slot::B)[..b.payload.len()], &b.payload[..]);
    let ranges = ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], "None");
    assert!(ranges[1].starts_with("Some("), "{ranges:?}");
}

#[test]
fn manual_rollback_goes_to_the_previous_slot_unless_the_floor_forbids_it() {
    let b = appliance_box();
    let path = b.bundle("1.3.0", 3, &b.key);
    b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    assert_eq!(grub_boots(&b.device), Slot::B);
    set_release(&b.device, "1.3.0", 3);
    b.device.mark_good().unwrap();
    // Same security version: going back to A is allowed, on trial.
    assert_eq!(b.device.rollback().unwrap(), Slot::A);
    assert_eq!(b.boot().next_boot(), Some((Slot::A, true)));

    let b = appliance_box();
    let path = b.bundle("1.3.0", 5, &b.key);
    b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    grub_boots(&b.device);
    set_release(&b.device, "1.3.0", 5);
    b.device.mark_good().unwrap();
    let err = b.device.rollback().unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::RollbackBelowFloor {
                floor: 5,
                version: 3,
                ..
            }
        ),
        "{err}"
    );

    // A fresh device has nothing in B.
    let b = appliance_box();
    assert!(matches!(
        b.device.rollback(),
        Err(UpdateError::NothingToRollBackTo(Slot::B))
    ));
}

#[test]
fn the_new_release_migrates_once_and_a_rollback_restores_the_recorded_generation() {
    let mut b = appliance_box();
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Nothing);
    b.device.config_generation = Some(7);
    let path = b.bundle("1.3.0", 4, &b.key);
    b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    assert_eq!(b.state().last.unwrap().config_generation, Some(7));
    // Still on A before the reboot: nothing to do.
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Nothing);

    // B's first boot migrates (generation 8 is the migrated one), and only once.
    assert_eq!(grub_boots(&b.device), Slot::B);
    set_release(&b.device, "1.3.0", 4);
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Migrate);
    b.device
        .config_step_done(ConfigStep::Migrate, Some(8))
        .unwrap();
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Nothing);
    assert_eq!(b.state().last.unwrap().config_migrated, Some(8));

    // Health fails on every try; back on A, generation 7 comes back, once.
    for _ in 0..2 {
        assert_eq!(grub_boots(&b.device), Slot::B);
    }
    assert_eq!(grub_boots(&b.device), Slot::A);
    set_release(&b.device, "1.2.0", 3);
    assert!(b.device.check_boot().unwrap().is_some());
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Restore(7));
    b.device
        .config_step_done(ConfigStep::Restore(7), Some(7))
        .unwrap();
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Nothing);
}

#[test]
fn a_manual_rollback_restores_but_an_update_that_never_ran_does_not() {
    let mut b = appliance_box();
    b.device.config_generation = Some(3);
    // The same security version, so the floor allows going back.
    let path = b.bundle("1.3.0", 3, &b.key);
    b.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    assert_eq!(grub_boots(&b.device), Slot::B);
    set_release(&b.device, "1.3.0", 3);
    b.device.mark_good().unwrap();
    // A migration step that ran on an already committed slot (an old updater) counts too.
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Migrate);
    b.device
        .config_step_done(ConfigStep::Migrate, Some(4))
        .unwrap();
    b.device.rollback().unwrap();
    assert_eq!(grub_boots(&b.device), Slot::A);
    set_release(&b.device, "1.2.0", 3);
    assert_eq!(b.device.config_step().unwrap(), ConfigStep::Restore(3));

    // An update whose slot never got as far as its migration changed nothing to undo.
    let c = appliance_box();
    let path = c.bundle("1.3.0", 4, &c.key);
    c.device.install(&mut FileSource(path), |_, _| {}).unwrap();
    for _ in 0..3 {
        assert_eq!(grub_boots(&c.device), Slot::B);
    }
    assert_eq!(grub_boots(&c.device), Slot::A);
    assert!(c.device.check_boot().unwrap().is_some());
    assert_eq!(c.device.config_step().unwrap(), ConfigStep::Nothing);
}
