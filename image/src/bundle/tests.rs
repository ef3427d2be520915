use super::*;

const DAY: u64 = 86_400;
const NOW: u64 = 1_800_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
    payload: Vec<u8>,
}

/// A payload of 3.5 chunks, so the last chunk is short.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SecretKey::generate().unwrap();
    let len = (CHUNK_SIZE * 3 + CHUNK_SIZE / 2) as usize;
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
    fs::write(dir.path().join("rootfs.squashfs"), &payload).unwrap();
    Fixture { dir, key, payload }
}

fn release(version: &str) -> Release {
    Release {
        compatible: "appliance-x86_64-efi".into(),
        version: version.parse().unwrap(),
        security_version: 3,
        min_version: Some("1.0.0".parse().unwrap()),
        created: NOW - DAY,
        expires: NOW + 30 * DAY,
        allow_downgrade: false,
    }
}

impl Fixture {
    fn bundle(&self, name: &str, release: &Release, keys: &[&SecretKey]) -> std::path::PathBuf {
        let out = self.dir.path().join(name);
        create(
            &self.dir.path().join("rootfs.squashfs"),
            release,
            keys,
            &out,
        )
        .unwrap();
        out
    }

    fn policy(&self) -> Policy {
        Policy {
            keyring: Keyring::new(vec![self.key.public()], 1),
            compatible: "appliance-x86_64-efi".into(),
            installed: "1.2.0".parse().unwrap(),
            security_floor: 3,
            now: NOW,
        }
    }
}

fn payload_of(path: &Path, policy: &Policy) -> Result<Vec<u8>, BundleError> {
    let mut f = io::BufReader::new(fs::File::open(path).unwrap());
    let header = read_header(&mut f)?;
    let manifest = header.verify(policy)?;
    let mut reader = PayloadReader::new(f, &manifest);
    let mut out = Vec::new();
    while let Some((i, chunk)) = reader.next_chunk()? {
        assert_eq!(i as u64 * CHUNK_SIZE, out.len() as u64);
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

#[test]
fn a_signed_bundle_verifies_and_streams_its_payload() {
    let fx = fixture();
    let path = fx.bundle("b", &release("1.3.0"), &[&fx.key]);
    assert_eq!(payload_of(&path, &fx.policy()).unwrap(), fx.payload);
    let m = verify_file(&path, &fx.policy()).unwrap();
    assert_eq!(m.payload.chunks.len(), 4);
    assert_eq!(m.payload.size, fx.payload.len() as u64);
    assert_eq!(m.payload.sha256, hex::encode(Sha256::digest(&fx.payload)));
}

/// Flips one bit of the byte at `at`.
fn tamper(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    let i = at as usize;
    bytes[i] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

fn header_len(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    12 + u64::from(u32::from_le_bytes(bytes[8..12].try_into().unwrap()))
}

#[test]
fn a_tampered_payload_is_caught_at_its_chunk_before_it_is_handed_on() {
    let fx = fixture();
    let path = fx.bundle("b", &release("1.3.0"), &[&fx.key]);
    tamper(&path, header_len(&path) + 2 * CHUNK_SIZE + 17);
    let mut f = io::BufReader::new(fs::File::open(&path).unwrap());
    let manifest = read_header(&mut f).unwrap().verify(&fx.policy()).unwrap();
    let mut reader = PayloadReader::new(f, &manifest);
    assert_eq!(reader.next_chunk().unwrap().unwrap().0, 0);
    assert_eq!(reader.next_chunk().unwrap().unwrap().0, 1);
    assert!(matches!(
        reader.next_chunk(),
        Err(BundleError::ChunkMismatch { chunk: 2 })
    ));
}

#[test]
fn a_tampered_manifest_fails_the_signature() {
    let fx = fixture();
    let path = fx.bundle("b", &release("1.3.0"), &[&fx.key]);
    let text = fs::read(&path).unwrap();
    let at = text.windows(7).position(|w| w == b"version").unwrap();
    // `version` -> `vershon`: still JSON, no longer the signed bytes.
    let mut edited = text.clone();
    edited[at + 4] = b'h';
    fs::write(&path, edited).unwrap();
    let err = verify_file(&path, &fx.policy()).unwrap_err();
    assert!(matches!(err, BundleError::Untrusted { .. }), "{err}");
}

#[test]
fn refusals_name_their_reason() {
    let fx = fixture();
    let (stranger, _) = SecretKey::generate().unwrap();
    let good = release("1.3.0");
    type Expect = Box<dyn Fn(&BundleError) -> bool>;
    let cases: Vec<(&str, Release, Vec<&SecretKey>, Expect)> = vec![
        (
            "wrong key",
            good.clone(),
            vec![&stranger],
            Box::new(|e| matches!(e, BundleError::Untrusted { .. })),
        ),
        (
            "unsigned",
            good.clone(),
            vec![],
            Box::new(|e| matches!(e, BundleError::Untrusted { .. })),
        ),
        (
            "downgrade",
            release("1.1.9"),
            vec![&fx.key],
            Box::new(|e| matches!(e, BundleError::Downgrade { .. })),
        ),
        (
            "below floor",
            Release {
                security_version: 2,
                ..good.clone()
            },
            vec![&fx.key],
            Box::new(|e| {
                matches!(
                    e,
                    BundleError::BelowFloor {
                        bundle: 2,
                        floor: 3
                    }
                )
            }),
        ),
        (
            "expired",
            Release {
                expires: NOW - 1,
                ..good.clone()
            },
            vec![&fx.key],
            Box::new(|e| matches!(e, BundleError::Expired { .. })),
        ),
        (
            "wrong compatible",
            Release {
                compatible: "appliance-arm64".into(),
                ..good.clone()
            },
            vec![&fx.key],
            Box::new(|e| matches!(e, BundleError::Incompatible { .. })),
        ),
        (
            "installed too old",
            Release {
                min_version: Some("1.2.1".parse().unwrap()),
                ..good.clone()
            },
            vec![&fx.key],
            Box::new(|e| matches!(e, BundleError::TooOld { .. })),
        ),
    ];
    for (name, release, keys, expected) in cases {
        let path = fx.bundle(name, &release, &keys);
        let err = verify_file(&path, &fx.policy()).unwrap_err();
        assert!(expected(&err), "{name}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_signed_exception_allows_a_downgrade() {
    let fx = fixture();
    let back = Release {
        security_version: 1,
        allow_downgrade: true,
        ..release("1.1.0")
    };
    let path = fx.bundle("b", &back, &[&fx.key]);
    assert!(verify_file(&path, &fx.policy()).is_ok());
}

#[test]
fn truncated_and_extended_payloads_are_refused() {
    let fx = fixture();
    let path = fx.bundle("b", &release("1.3.0"), &[&fx.key]);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(
        verify_file(&path, &fx.policy()),
        Err(BundleError::Truncated {
            chunk: 3,
            chunks: 4
        })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    assert!(matches!(
        verify_file(&path, &fx.policy()),
        Err(BundleError::TrailingData)
    ));
    fs::write(&path, &bytes[..5]).unwrap();
    assert!(matches!(
        verify_file(&path, &fx.policy()),
        Err(BundleError::NotABundle)
    ));
}

#[test]
fn a_threshold_needs_that_many_trusted_signers() {
    let fx = fixture();
    let (second, _) = SecretKey::generate().unwrap();
    let mut policy = fx.policy();
    policy.keyring = Keyring::new(vec![fx.key.public(), second.public()], 2);
    let once = fx.bundle("once", &release("1.3.0"), &[&fx.key]);
    assert!(matches!(
        verify_file(&once, &policy),
        Err(BundleError::NotEnoughSignatures { have: 1, need: 2 })
    ));
    // The same signature twice counts once.
    let twice = fx.bundle("twice", &release("1.3.0"), &[&fx.key, &fx.key]);
    assert!(verify_file(&twice, &policy).is_err());
    add_signature(&once, &second).unwrap();
    assert!(verify_file(&once, &policy).is_ok());
    assert_eq!(
        payload_of(&once, &policy).unwrap(),
        fx.payload,
        "re-signing keeps the payload"
    );
}

#[test]
fn a_resumed_stream_checks_every_remaining_chunk() {
    let fx = fixture();
    let path = fx.bundle("b", &release("1.3.0"), &[&fx.key]);
    let manifest = verify_file(&path, &fx.policy()).unwrap();
    let bytes = fs::read(&path).unwrap();
    let from = header_len(&path) + 2 * CHUNK_SIZE;
    let mut reader = PayloadReader::resume(&bytes[from as usize..], &manifest, 2);
    assert_eq!(reader.next_chunk().unwrap().unwrap().0, 2);
    assert_eq!(reader.next_chunk().unwrap().unwrap().0, 3);
    assert!(reader.next_chunk().unwrap().is_none());
}

#[test]
fn a_newer_format_says_so() {
    let text = r#"{"format": 2, "whatever": true}"#;
    assert!(matches!(
        parse_manifest(text),
        Err(BundleError::UnsupportedFormat(2))
    ));
    let garbage = Header {
        manifest: "{".into(),
        signatures: vec![],
    };
    assert!(garbage.unverified_manifest().is_err());
}
