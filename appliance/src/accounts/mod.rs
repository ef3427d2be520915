//! The API's accounts: users and roles from `[api.users]`, password and TOTP checks, a
//! login rate limit, sessions, named API tokens and the audit log.
//!
//! Sessions and tokens are random 256-bit values handed to the client once; only their
//! SHA-256 is kept (in memory for sessions, in `tokens.json` under the state dir for API
//! tokens), so neither a memory dump of the map nor the file lets anyone log in. A user's
//! role and `disabled` flag are read from the current config at every request: demoting or
//! disabling an account takes effect at once, for its sessions and its tokens alike.

pub mod audit;
pub mod password;
pub mod ratelimit;
pub mod totp;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::{Api, ApiUser, Role};
use ratelimit::{Key, Limiter};

/// Where the API keeps its certificate, tokens and audit log on the appliance.
pub const DEFAULT_STATE_DIR: &str = "/data/api";
/// File name of the API tokens (hashes only) in the state dir.
pub const TOKENS_FILE: &str = "tokens.json";
/// Prefix of API tokens, so that a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "appl_";
/// Open sessions per user; logging in once more ends the one that would end first.
pub const MAX_SESSIONS_PER_USER: usize = 32;
/// The longest lifetime of an API token: one year.
pub const MAX_TOKEN_TTL: u64 = 366 * 86_400;

/// The time, in unix seconds. Tests move a [`ManualClock`] to expire sessions.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why a request is not let in, or a login or token request refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credentials: log in at /api/v1/auth/login and send `Authorization: Bearer <token>`"
    )]
    Missing,
    #[error("the token is not valid (unknown, revoked or for a removed user); log in again")]
    InvalidToken,
    #[error("the session or token has expired; log in again or create a new token")]
    Expired,
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("this account needs a TOTP code: send it as `totp` with the password")]
    TotpRequired,
    #[error("the TOTP code is wrong or was already used; wait for the next one")]
    BadTotp,
    #[error("too many failed logins; try again in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("this needs the {needed} role; ask an admin")]
    Forbidden { needed: &'static str },
    #[error("{0}")]
    BadRequest(String),
    #[error("a token named {0:?} exists already; delete it first or choose another name")]
    TokenExists(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error("the TOTP secret of this account cannot be used: {0}")]
    TotpSecret(#[from] totp::SecretError),
    #[error(
        "cannot keep the API state in {path}: {source}; check that the data partition is mounted and writable"
    )]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    pub role: Role,
    /// The API token's name when a token was used, None for a login session.
    pub token: Option<String>,
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(AuthError::Forbidden { needed: "admin" }),
        }
    }
}

/// A new login session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The bearer token; shown to the client once, never logged.
    pub token: String,
    pub role: Role,
    /// Unix time.
    pub expires: u64,
}

/// An API token as listed: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    /// The admin who created it; the token acts as this user.
    pub user: String,
    pub role: Role,
    pub created: u64,
    pub expires: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// SHA-256 of the token, hex.
    sha256: String,
}

#[derive(Debug)]
struct LiveSession {
    user: String,
    expires: u64,
}

#[derive(Debug, Default)]
struct Inner {
    users: BTreeMap<String, ApiUser>,
    session_timeout: u64,
    /// By SHA-256 of the token.
    sessions: HashMap<[u8; 32], LiveSession>,
    tokens: Vec<StoredToken>,
    limiter: Limiter,
    /// The last TOTP step used per user: a code is good once.
    totp_used: HashMap<String, u64>,
}

/// The accounts, their sessions and tokens. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Accounts {
    dir: PathBuf,
    /// Prefix of the secret files' paths from the config ("/" on the appliance).
    secrets_root: PathBuf,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_hex() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        AuthError::State {
            path: PathBuf::from("/dev/urandom"),
            source: std::io::Error::other("the system's random source failed"),
        }
    })?;
    Ok(hex::encode(bytes))
}

/// Byte comparison whose time does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Accounts {
    /// Opens the state dir (made 0700 when missing), loads the API tokens and takes the
    /// users from `api`.
    pub fn open(
        dir: impl Into<PathBuf>,
        api: &Api,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuthError> {
        let dir = dir.into();
        let state = |source| AuthError::State {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(state)?;
        let tokens = load_tokens(&dir.join(TOKENS_FILE))?;
        let accounts = Self {
            dir,
            secrets_root: PathBuf::from("/"),
            clock,
            inner: Mutex::new(Inner {
                tokens,
                ..Inner::default()
            }),
        };
        accounts.set_api(api);
        Ok(accounts)
    }

    /// Reads the config's secret files (like `/data/alice.totp`) below `root` instead of
    /// `/`: for a system image mounted elsewhere, and for tests.
    pub fn with_secrets_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.secrets_root = root.into();
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the users and session lifetime of a newly applied config. Sessions of users
    /// who are gone end.
    pub fn set_api(&self, api: &Api) {
        let mut inner = self.lock();
        inner.users = api
            .users
            .iter()
            .map(|(name, user)| (name.to_string(), user.clone()))
            .collect();
        inner.session_timeout = api.session_timeout.as_secs();
        let Inner {
            users, sessions, ..
        } = &mut *inner;
        sessions.retain(|_, s| users.contains_key(&s.user));
    }

    /// Checks a login and opens a session. Runs argon2: call it off the async executor.
    pub fn login(
        &self,
        client: IpAddr,
        user: &str,
        password: &str,
        totp_code: Option<&str>,
    ) -> Result<Session, AuthError> {
        let now = self.clock.now();
        let (addr_key, user_key) = (Key::Addr(client), Key::User(user.to_owned()));
        let account = {
            let inner = self.lock();
            for key in [&addr_key, &user_key] {
                inner
                    .limiter
                    .check(key, now)
                    .map_err(|retry_after| AuthError::RateLimited { retry_after })?;
            }
            inner.users.get(user).cloned()
        };
        // A name that is no account is not logged: people type their password into the
        // user field often enough.
        let known = account.is_some();
        let fail = |this: &Self, err: AuthError| {
            let mut inner = this.lock();
            inner.limiter.fail(addr_key.clone(), now);
            inner.limiter.fail(user_key.clone(), now);
            let shown = if known { user } else { "(unknown)" };
            tracing::warn!(user = shown, %client, reason = %err, "login refused");
            Err(err)
        };
        let Some(account) = account.filter(|a| !a.disabled) else {
            // Same cost as a real check, so that timing does not tell which names exist.
            let _ = password::verify(password::DUMMY_HASH, password);
            return fail(self, AuthError::BadCredentials);
        };
        if !password::verify(account.password_hash.as_str(), password) {
            return fail(self, AuthError::BadCredentials);
        }
        if let Some(file) = &account.totp_secret_file {
            let path = self
                .secrets_root
                .join(file.as_str().trim_start_matches('/'));
            let secret = totp::Secret::read_file(&path)?;
            let Some(code) = totp_code else {
                return Err(AuthError::TotpRequired);
            };
            let step = secret.matching_step(code, now);
            let mut inner = self.lock();
            let last = inner.totp_used.get(user).copied();
            match step {
                Some(step) if last.is_none_or(|last| step > last) => {
                    inner.totp_used.insert(user.to_owned(), step);
                }
                _ => {
                    drop(inner);
                    return fail(self, AuthError::BadTotp);
                }
            }
        }
        let token = random_hex()?;
        let mut inner = self.lock();
        inner.limiter.reset(&addr_key);
        inner.limiter.reset(&user_key);
        let expires = now + inner.session_timeout;
        inner.sessions.retain(|_, s| s.expires > now);
        // A script that logs in for every request must not fill the memory: past the cap
        // the user's session that ends first goes.
        let theirs = inner.sessions.iter().filter(|(_, s)| s.user == user);
        if theirs.clone().count() >= MAX_SESSIONS_PER_USER
            && let Some(oldest) = theirs.min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            inner.sessions.remove(&oldest);
        }
        inner.sessions.insert(
            digest(&token),
            LiveSession {
                user: user.to_owned(),
                expires,
            },
        );
        tracing::info!(user, %client, "logged in");
        Ok(Session {
            token,
            role: account.role,
            expires,
        })
    }

    /// Who holds `bearer` (a session or an API token).
    pub fn authenticate(&self, bearer: &str) -> Result<Principal, AuthError> {
        let now = self.clock.now();
        let hash = digest(bearer);
        let mut inner = self.lock();
        let (user, token, token_role) = if let Some(s) = inner.sessions.get(&hash) {
            if s.expires <= now {
                inner.sessions.remove(&hash);
                return Err(AuthError::Expired);
            }
            (s.user.clone(), None, Role::Admin)
        } else if bearer.starts_with(TOKEN_PREFIX) {
            let hex_hash = hex::encode(hash);
            let t = inner
                .tokens
                .iter()
                .find(|t| same(t.sha256.as_bytes(), hex_hash.as_bytes()))
                .ok_or(AuthError::InvalidToken)?;
            if t.info.expires <= now {
                return Err(AuthError::Expired);
            }
            (t.info.user.clone(), Some(t.info.name.clone()), t.info.role)
        } else {
            return Err(AuthError::InvalidToken);
        };
        let account = inner
            .users
            .get(&user)
            .filter(|a| !a.disabled)
            .ok_or(AuthError::InvalidToken)?;
        // A token never has more rights than its user has now.
        let role = match (account.role, token_role) {
            (Role::Admin, Role::Admin) => Role::Admin,
            _ => Role::Viewer,
        };
        Ok(Principal { user, role, token })
    }

    /// Ends the session of `bearer`; API tokens are deleted by name instead.
    pub fn logout(&self, bearer: &str) -> bool {
        self.lock().sessions.remove(&digest(bearer)).is_some()
    }

    /// Makes a named API token for `by` (an admin); returns the secret, shown once.
    pub fn create_token(
        &self,
        by: &Principal,
        name: &str,
        role: Role,
        ttl: u64,
    ) -> Result<(String, TokenInfo), AuthError> {
        by.require_admin()?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(AuthError::BadRequest(
                "a token name is 1 to 64 of A-Z a-z 0-9 - _ .".into(),
            ));
        }
        if ttl == 0 || ttl > MAX_TOKEN_TTL {
            return Err(AuthError::BadRequest(format!(
                "expires_in must be between 1 and {MAX_TOKEN_TTL} seconds"
            )));
        }
        let now = self.clock.now();
        let secret = format!("{TOKEN_PREFIX}{}", random_hex()?);
        let info = TokenInfo {
            name: name.to_owned(),
            user: by.user.clone(),
            role,
            created: now,
            expires: now + ttl,
        };
        let mut inner = self.lock();
        if inner.tokens.iter().any(|t| t.info.name == name) {
            return Err(AuthError::TokenExists(name.to_owned()));
        }
        let mut tokens = inner.tokens.clone();
        tokens.retain(|t| t.info.expires > now);
        tokens.push(StoredToken {
            info: info.clone(),
            sha256: hex::encode(digest(&secret)),
        });
        save_tokens(&self.dir.join(TOKENS_FILE), &tokens)?;
        inner.tokens = tokens;
        tracing::info!(by = %by.user, token = name, ?role, "API token created");
        Ok((secret, info))
    }

    /// The API tokens that have not expired.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        let now = self.clock.now();
        self.lock()
            .tokens
            .iter()
            .filter(|t| t.info.expires > now)
            .map(|t| t.info.clone())
            .collect()
    }

    pub fn delete_token(&self, by: &Principal, name: &str) -> Result<(), AuthError> {
        by.require_admin()?;
        let mut inner = self.lock();
        let mut tokens = inner.tokens.clone();
        let before = tokens.len();
        tokens.retain(|t| t.info.name != name);
        if tokens.len() == before {
            return Err(AuthError::NoSuchToken(name.to_owned()));
        }
        save_tokens(&self.dir.join(TOKENS_FILE), &tokens)?;
        inner.tokens = tokens;
        tracing::info!(by = %by.user, token = name, "API token deleted");
        Ok(())
    }

    /// Appends to the audit log; a failure is logged, and returned so the caller can say so.
    pub fn audit(
        &self,
        by: &Principal,
        action: &str,
        generation: Option<u64>,
        summary: Vec<String>,
    ) -> Result<(), AuthError> {
        let entry = audit::Entry {
            time: self.clock.now(),
            user: by.user.clone(),
            action: action.to_owned(),
            generation,
            summary,
        };
        audit::append(&self.dir, &entry).map_err(|source| {
            tracing::error!(error = %source, action, "cannot write the audit log");
            AuthError::State {
                path: self.dir.join(audit::FILE),
                source,
            }
        })
    }
}

fn load_tokens(path: &Path) -> Result<Vec<StoredToken>, AuthError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AuthError::State {
            path: path.to_owned(),
            source: std::io::Error::other(format!(
                "{e}; the file is damaged: remove it (every API token is then revoked)"
            )),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(AuthError::State {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the token list atomically, mode 0600.
fn save_tokens(path: &Path, tokens: &[StoredToken]) -> Result<(), AuthError> {
    let state = |source| AuthError::State {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(tokens).map_err(|e| state(std::io::Error::other(e)))?;
    crate::tlsgen::write_atomic(path, &json, 0o600)
        .and_then(|()| match path.parent() {
            Some(dir) => fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        })
        .map_err(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Name, PasswordHash};

    fn api(users: &[(&str, Role, &str)]) -> Api {
        let mut api = Api {
            session_timeout: crate::types::Duration::from_secs(600),
            ..Api::default()
        };
        for (name, role, pw) in users {
            let hash =
                password::hash_with(pw, argon2::Params::new(8, 1, 1, None).unwrap()).unwrap();
            api.users.insert(
                Name::parse(name).unwrap(),
                ApiUser {
                    role: *role,
                    password_hash: PasswordHash::parse(&hash).unwrap(),
                    totp_secret_file: None,
                    disabled: false,
                },
            );
        }
        api
    }

    fn setup() -> (tempfile::TempDir, Arc<ManualClock>, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let a = Accounts::open(
            dir.path().join("api"),
            &api(&[
                ("alice", Role::Admin, "alice-pw-1"),
                ("victor", Role::Viewer, "victor-pw"),
            ]),
            clock.clone(),
        )
        .unwrap();
        (dir, clock, a)
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn sessions_carry_the_role_and_expire() {
        let (_d, clock, a) = setup();
        let s = a.login(HERE, "alice", "alice-pw-1", None).unwrap();
        assert_eq!(s.token.len(), 64, "256 bits, hex");
        let p = a.authenticate(&s.token).unwrap();
        assert_eq!((p.user.as_str(), p.role), ("alice", Role::Admin));
        let v = a.login(HERE, "victor", "victor-pw", None).unwrap();
        let pv = a.authenticate(&v.token).unwrap();
        assert!(matches!(
            pv.require_admin(),
            Err(AuthError::Forbidden { .. })
        ));
        clock.advance(599);
        assert!(a.authenticate(&s.token).is_ok());
        clock.advance(1);
        assert!(matches!(a.authenticate(&s.token), Err(AuthError::Expired)));
        assert!(matches!(
            a.authenticate(&s.token),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn a_user_has_at_most_the_capped_number_of_sessions() {
        let (_d, clock, a) = setup();
        let first = a.login(HERE, "alice", "alice-pw-1", None).unwrap().token;
        clock.advance(1);
        let rest: Vec<String> = (1..MAX_SESSIONS_PER_USER)
            .map(|_| a.login(HERE, "alice", "alice-pw-1", None).unwrap().token)
            .collect();
        assert!(a.authenticate(&first).is_ok());
        let newest = a.login(HERE, "alice", "alice-pw-1", None).unwrap().token;
        assert!(matches!(
            a.authenticate(&first),
            Err(AuthError::InvalidToken)
        ));
        assert!(
            rest.iter()
                .chain([&newest])
                .all(|t| a.authenticate(t).is_ok())
        );
    }

    #[test]
    fn wrong_passwords_unknown_and_disabled_users_are_refused_alike() {
        let (_d, _c, a) = setup();
        for (u, p) in [("alice", "wrong-pw-1"), ("nobody", "alice-pw-1")] {
            assert!(matches!(
                a.login(HERE, u, p, None),
                Err(AuthError::BadCredentials)
            ));
        }
        let mut cfg = api(&[("alice", Role::Admin, "alice-pw-1")]);
        let s = a.login(HERE, "alice", "alice-pw-1", None).unwrap();
        if let Some(u) = cfg.users.values_mut().next() {
            u.disabled = true;
        }
        a.set_api(&cfg);
        assert!(matches!(
            a.authenticate(&s.token),
            Err(AuthError::InvalidToken)
        ));
        assert!(matches!(
            a.login(HERE, "alice", "alice-pw-1", None),
            Err(AuthError::BadCredentials)
        ));
    }

    #[test]
    fn five_failures_lock_the_user_out_from_every_address() {
        let (_d, clock, a) = setup();
        for i in 0..5u8 {
            let from = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
            assert!(matches!(
                a.login(from, "alice", "nope-nope", None),
                Err(AuthError::BadCredentials)
            ));
        }
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, 1));
        assert!(matches!(
            a.login(other, "alice", "alice-pw-1", None),
            Err(AuthError::RateLimited { retry_after: 1 })
        ));
        clock.advance(1);
        assert!(a.login(other, "alice", "alice-pw-1", None).is_ok());
    }

    #[test]
    fn api_tokens_are_stored_hashed_listed_capped_by_role_and_deleted() {
        let (d, clock, a) = setup();
        let admin = a
            .authenticate(&a.login(HERE, "alice", "alice-pw-1", None).unwrap().token)
            .unwrap();
        let (secret, info) = a.create_token(&admin, "ci", Role::Admin, 3600).unwrap();
        assert!(secret.starts_with(TOKEN_PREFIX));
        assert_eq!(info.expires, 1_000_000 + 3600);
        let file = fs::read_to_string(d.path().join("api").join(TOKENS_FILE)).unwrap();
        assert!(!file.contains(&secret) && file.contains(&hex::encode(digest(&secret))));
        assert!(matches!(
            a.create_token(&admin, "ci", Role::Viewer, 60),
            Err(AuthError::TokenExists(_))
        ));
        assert!(matches!(
            a.create_token(&admin, "a b", Role::Viewer, 60),
            Err(AuthError::BadRequest(_))
        ));
        let p = a.authenticate(&secret).unwrap();
        assert_eq!((p.role, p.token.as_deref()), (Role::Admin, Some("ci")));

        // Tokens survive a restart.
        let again = Accounts::open(
            d.path().join("api"),
            &api(&[("alice", Role::Admin, "alice-pw-1")]),
            clock.clone(),
        )
        .unwrap();
        assert!(again.authenticate(&secret).is_ok());
        // Demoting the user demotes the token.
        again.set_api(&api(&[("alice", Role::Viewer, "alice-pw-1")]));
        assert_eq!(again.authenticate(&secret).unwrap().role, Role::Viewer);

        let viewer = Principal {
            user: "victor".into(),
            role: Role::Viewer,
            token: None,
        };
        assert!(matches!(
            a.create_token(&viewer, "v", Role::Viewer, 60),
            Err(AuthError::Forbidden { .. })
        ));
        assert_eq!(a.tokens().len(), 1);
        clock.advance(3600);
        assert!(matches!(a.authenticate(&secret), Err(AuthError::Expired)));
        a.delete_token(&admin, "ci").unwrap();
        assert!(matches!(
            a.delete_token(&admin, "ci"),
            Err(AuthError::NoSuchToken(_))
        ));
    }

    #[test]
    fn totp_is_asked_for_checked_and_good_once() {
        use std::os::unix::fs::PermissionsExt as _;
        let (d, clock, _) = setup();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("data")).unwrap();
        let file = root.join("data/alice.totp");
        fs::write(&file, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let mut cfg = api(&[("alice", Role::Admin, "alice-pw-1")]);
        if let Some(u) = cfg.users.values_mut().next() {
            u.totp_secret_file = Some(crate::types::SecretPath::parse("/data/alice.totp").unwrap());
        }
        let a = Accounts::open(d.path().join("api2"), &cfg, clock.clone())
            .unwrap()
            .with_secrets_root(&root);
        assert!(matches!(
            a.login(HERE, "alice", "alice-pw-1", None),
            Err(AuthError::TotpRequired)
        ));
        let secret = totp::Secret::from_bytes(b"12345678901234567890".to_vec());
        let now = clock.now();
        let code = format!("{:06}", secret.code_at(now, 6));
        let wrong = format!("{:06}", (secret.code_at(now, 6) + 1) % 1_000_000);
        assert!(matches!(
            a.login(HERE, "alice", "alice-pw-1", Some(&wrong)),
            Err(AuthError::BadTotp)
        ));
        assert!(a.login(HERE, "alice", "alice-pw-1", Some(&code)).is_ok());
        assert!(
            matches!(
                a.login(HERE, "alice", "alice-pw-1", Some(&code)),
                Err(AuthError::BadTotp)
            ),
            "a code is good once"
        );
        clock.advance(totp::STEP);
        let next = format!("{:06}", secret.code_at(clock.now(), 6));
        assert!(a.login(HERE, "alice", "alice-pw-1", Some(&next)).is_ok());
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            a.login(HERE, "alice", "alice-pw-1", Some(&next)),
            Err(AuthError::TotpSecret(totp::SecretError::Mode { .. }))
        ));
    }
}
