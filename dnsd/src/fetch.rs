//! Getting block lists and keeping them compiled under /data.
//!
//! Downloads use conditional requests (ETag and Last-Modified), so an unchanged list costs a
//! 304 and nothing else. Whatever goes wrong, the previous compiled list stays: a failed
//! download, a server error, an oversized or an empty list are reported and change nothing,
//! because a list server having a bad day must not unblock every ad in the house.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance::model::{BlockList, ListFormat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compiled::{CompileError, CompiledList};
use crate::lists::{ParseStats, ParsedList, parse_reader};
use crate::policy::Lists;

/// Where compiled lists live on the appliance.
pub const DEFAULT_DIR: &str = "/data/dns/lists";
/// Larger downloads are refused; the biggest public lists are a few tens of MB.
pub const MAX_LIST_BYTES: usize = 256 << 20;
/// A whole download, connection to last byte.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// What is known about the stored copy of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {
    /// The URL or file it came from; a changed source invalidates the copy.
    pub source: String,
    /// The format it was parsed as; a changed format invalidates the copy too, since the
    /// same text reads differently. Absent in copies stored before it was recorded, which
    /// are then taken as they are rather than all downloaded again after an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ListFormat>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// SHA-256 of the raw list, to notice an unchanged body served without validators.
    pub sha256: String,
    /// Unix time of the last successful check and of the last change.
    pub checked_at: u64,
    pub updated_at: u64,
    pub stats: ParseStats,
}

impl ListMeta {
    /// Whether the copy was parsed as `format` (or either is unknown).
    fn compiled_as(&self, format: Option<ListFormat>) -> bool {
        match (self.format, format) {
            (Some(had), Some(want)) => had == want,
            _ => true,
        }
    }
}

/// What a refresh did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The source has not changed since the stored copy.
    Unchanged,
    /// A new copy was compiled and stored.
    Updated(Arc<CompiledList>),
}

/// Why a refresh kept the previous copy.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {source}")]
    Network { url: String, source: reqwest::Error },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: the list is larger than {MAX_LIST_BYTES} bytes")]
    TooLarge { url: String },
    #[error(
        "{source_name}: the list has no usable entries ({skipped} lines skipped); keeping the previous copy"
    )]
    Empty { source_name: String, skipped: u64 },
    #[error("list {name} has neither url nor file")]
    NoSource { name: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// An HTTP client for list downloads, with rustls on the ring provider and the system's
/// CA certificates.
pub fn http_client() -> Result<reqwest::Client, FetchError> {
    // Installing twice is harmless: the first provider stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(DOWNLOAD_TIMEOUT)
        .connect_timeout(Duration::from_secs(15))
        .user_agent(concat!("appliance-dnsd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The compiled lists under one directory: `<name>.bin` and `<name>.json` beside it.
#[derive(Debug, Clone)]
pub struct ListStore {
    dir: PathBuf,
    /// Compiled lists read from `dir` by this store and its clones: what an apply costs.
    loads: Arc<std::sync::atomic::AtomicU64>,
}

impl ListStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            loads: Arc::default(),
        }
    }

    /// How many compiled lists this store (and its clones) read so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.bin"))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The stored metadata of a list, if any.
    pub fn meta(&self, name: &str) -> Option<ListMeta> {
        let text = std::fs::read_to_string(self.meta_path(name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The stored compiled list, if present, intact, and from `source`.
    pub fn load(&self, name: &str, source: &str) -> Option<Arc<CompiledList>> {
        self.load_as(name, source, None)
    }

    /// [`load`](Self::load), and parsed as `format` when given: a copy of another format
    /// is left out, so that it is compiled again at once.
    pub fn load_as(
        &self,
        name: &str,
        source: &str,
        format: Option<ListFormat>,
    ) -> Option<Arc<CompiledList>> {
        let meta = self.meta(name)?;
        if meta.source != source || !meta.compiled_as(format) {
            return None;
        }
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match CompiledList::load(&self.bin(name)) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                tracing::warn!(list = name, error = %e, "stored list is unusable; it will be downloaded again");
                None
            }
        }
    }

    /// Every stored list that the config declares, so that blocking works from the first
    /// second after a start, before any download.
    pub fn load_all<'a>(&self, lists: impl IntoIterator<Item = (&'a str, &'a BlockList)>) -> Lists {
        lists
            .into_iter()
            .filter_map(|(name, l)| {
                let src = source_of(l)?;
                self.load_as(name, &src, Some(l.format))
                    .map(|c| (name.to_owned(), c))
            })
            .collect()
    }

    /// Checks a list's source and, when it changed, compiles and stores the new copy.
    pub async fn refresh(
        &self,
        client: &reqwest::Client,
        name: &str,
        list: &BlockList,
    ) -> Result<Outcome, FetchError> {
        self.refresh_from(client, name, list, None).await
    }

    /// [`refresh`](Self::refresh), with the copy in use: the new copy shares the names the
    /// two have in common (see [`ParsedList::against`]), so that a reload costs what
    /// changed rather than a second copy of the list.
    ///
    /// The body is never held whole: a download is spooled to `<name>.download` beside the
    /// compiled lists and kept as `<name>.list` once compiled, a file list is read from its
    /// file, both line by line, on a thread of the lowest priority.
    pub async fn refresh_from(
        &self,
        client: &reqwest::Client,
        name: &str,
        list: &BlockList,
        previous: Option<Arc<CompiledList>>,
    ) -> Result<Outcome, FetchError> {
        let source = source_of(list).ok_or_else(|| FetchError::NoSource { name: name.into() })?;
        // Every file of the store is read and written (with its fsyncs) away from the
        // runtime's workers: on a busy disk one fsync can take a hundred milliseconds, and
        // the single worker of the appliance is the one that reads the UDP socket.
        let format = list.format;
        let old = {
            let (store, name, source) = (self.clone(), name.to_owned(), source.clone());
            let in_use = previous.is_some();
            off_the_workers(move || {
                // A copy of another format is no copy: the download must not be skipped
                // on a 304, nor the compile on an unchanged text.
                let old = store.meta(&name).filter(|m| {
                    m.source == source && m.compiled_as(Some(format)) && store.bin(&name).exists()
                });
                // A stored copy that is not in use may be one that failed to load: were it
                // taken as current, a 304 would leave the list missing and due again at once.
                if old.is_some() && !in_use && store.load(&name, &source).is_none() {
                    return Ok(None);
                }
                Ok(old)
            })
            .await?
        };
        let (raw, spooled, sha, etag, last_modified) = match (&list.url, &list.file) {
            (Some(url), _) => {
                let spool = self.dir.join(format!("{name}.download"));
                match download(client, url.as_url(), old.as_ref(), &spool).await? {
                    Some((sha, etag, last_modified)) => {
                        (spool, true, Some(sha), etag, last_modified)
                    }
                    None => {
                        let (store, name) = (self.clone(), name.to_owned());
                        off_the_workers(move || {
                            store.touch(&name, old);
                            Ok(())
                        })
                        .await?;
                        return Ok(Outcome::Unchanged);
                    }
                }
            }
            (None, Some(file)) => (PathBuf::from(file.as_str()), false, None, None, None),
            (None, None) => return Err(FetchError::NoSource { name: name.into() }),
        };
        let job = Compile {
            raw,
            spooled,
            sha,
            format: list.format,
            previous,
            kept_copy: self.dir.join(format!("{name}.list")),
            store: self.clone(),
            name: name.to_owned(),
            meta: ListMeta {
                source,
                format: Some(format),
                etag,
                last_modified,
                ..ListMeta::default()
            },
            old,
        };
        let Some(compiled) = off_the_workers(move || job.run()).await? else {
            return Ok(Outcome::Unchanged);
        };
        tracing::info!(
            list = name,
            entries = compiled.stats.entries,
            skipped = compiled.stats.skipped,
            shared = compiled.block.is_layered(),
            "list updated"
        );
        Ok(Outcome::Updated(Arc::new(compiled)))
    }

    fn touch(&self, name: &str, old: Option<ListMeta>) {
        if let Some(mut m) = old {
            m.checked_at = now();
            if let Err(e) = self.write_meta(name, &m) {
                tracing::warn!(list = name, error = %e, "could not record the check time");
            }
        }
    }

    fn write_meta(&self, name: &str, meta: &ListMeta) -> Result<(), FetchError> {
        let path = self.meta_path(name);
        let io = |e| FetchError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let text = serde_json::to_vec_pretty(meta).map_err(|e| io(std::io::Error::other(e)))?;
        write_atomic(&path, &text).map_err(io)
    }
}

fn source_of(l: &BlockList) -> Option<String> {
    l.url
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| l.file.as_ref().map(ToString::to_string))
}

fn hex(sum: &[u8]) -> String {
    sum.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of a file, read in blocks.
fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sha.update(buf.get(..n).unwrap_or(&buf)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&sha.finalize()))
}

/// One list to hash, parse, compile and store, with its metadata, away from the async
/// workers.
struct Compile {
    /// The list text: the spooled download or the list file.
    raw: PathBuf,
    /// `raw` is a download spool: kept as `kept_copy` on success, removed otherwise.
    spooled: bool,
    /// Known when the download hashed the body on its way to disk.
    sha: Option<String>,
    format: appliance::model::ListFormat,
    previous: Option<Arc<CompiledList>>,
    kept_copy: PathBuf,
    store: ListStore,
    name: String,
    /// The metadata to store with a new copy: source and validators.
    meta: ListMeta,
    /// The stored copy's metadata, if that copy is usable.
    old: Option<ListMeta>,
}

impl Compile {
    /// `None` when the text has not changed since the stored copy (whose check time is
    /// then brought forward).
    fn run(mut self) -> Result<Option<CompiledList>, FetchError> {
        let started = std::time::Instant::now();
        let out = self.compile();
        tracing::debug!(list = %self.name, took_us = started.elapsed().as_micros(), "hashed, compiled and saved");
        if self.spooled {
            let kept = match &out {
                Ok(Some(_)) => std::fs::rename(&self.raw, &self.kept_copy),
                _ => std::fs::remove_file(&self.raw),
            };
            if let Err(e) = kept {
                tracing::warn!(path = %self.raw.display(), error = %e, "cannot tidy the downloaded list");
            }
        }
        match out? {
            Some((compiled, sha)) => {
                let t = now();
                let meta = ListMeta {
                    sha256: sha,
                    checked_at: t,
                    updated_at: t,
                    stats: compiled.stats,
                    ..self.meta
                };
                let started = std::time::Instant::now();
                self.store.write_meta(&self.name, &meta)?;
                tracing::debug!(list = %self.name, took_us = started.elapsed().as_micros(), "metadata written");
                Ok(Some(compiled))
            }
            None => {
                self.store.touch(&self.name, self.old.take());
                Ok(None)
            }
        }
    }

    fn compile(&mut self) -> Result<Option<(CompiledList, String)>, FetchError> {
        let io = |e| FetchError::Io {
            path: self.raw.display().to_string(),
            source: e,
        };
        let sha = match self.sha.take() {
            Some(s) => s,
            None => hash_file(&self.raw).map_err(io)?,
        };
        if self.old.as_ref().map(|m| m.sha256.as_str()) == Some(sha.as_str()) {
            return Ok(None);
        }
        let file = std::fs::File::open(&self.raw).map_err(io)?;
        let start = self
            .previous
            .take()
            .map_or_else(ParsedList::default, |p| ParsedList::against(&p));
        let parsed = parse_reader(
            std::io::BufReader::with_capacity(1 << 16, file),
            self.format,
            start,
        )
        .map_err(io)?;
        let stats = parsed.stats;
        let compiled = CompiledList::compile(parsed)?;
        if compiled.is_empty() {
            return Err(FetchError::Empty {
                source_name: self.meta.source.clone(),
                skipped: stats.skipped,
            });
        }
        compiled.save(&self.store.bin(&self.name))?;
        Ok(Some((compiled, sha)))
    }
}

/// Runs `job` on a background thread ([`crate::background`]) and waits for it without
/// blocking the runtime. Compiling a 1M-name list takes a good part of a second of CPU; on
/// the appliance's single core a thread of normal priority (a `spawn_blocking` one too)
/// gets half of it while queries queue up, and queries were lost. In the background the
/// compile runs when the listeners leave the core idle, and gives it back the moment a
/// query arrives. Counted as a reload in flight, so the reclaim thread does not trim the
/// heap meanwhile.
async fn off_the_workers<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    let _reloading = crate::reclaim::reloading();
    crate::background::run("dnsd-lists", job)
        .await
        .map_err(|e| FetchError::Io {
            path: "list compile thread".into(),
            source: e,
        })?
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Downloads `url` into `spool` unless the validators of `old` say it is unchanged
/// (`None`), hashing the body on its way to disk; returns the SHA-256 and validators. The
/// body is refused beyond [`MAX_LIST_BYTES`], and a failed download leaves no spool.
async fn download(
    client: &reqwest::Client,
    url: &url::Url,
    old: Option<&ListMeta>,
    spool: &Path,
) -> Result<Option<(String, Option<String>, Option<String>)>, FetchError> {
    let got = download_to(client, url, old, spool).await;
    if !matches!(got, Ok(Some(_))) {
        let _ = tokio::fs::remove_file(spool).await;
    }
    got
}

async fn download_to(
    client: &reqwest::Client,
    url: &url::Url,
    old: Option<&ListMeta>,
    spool: &Path,
) -> Result<Option<(String, Option<String>, Option<String>)>, FetchError> {
    use tokio::io::AsyncWriteExt as _;
    let u = url.to_string();
    let mut req = client.get(url.clone());
    if let Some(m) = old {
        if let Some(e) = &m.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        if let Some(lm) = &m.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
    }
    let net = |e| FetchError::Network {
        url: u.clone(),
        source: e,
    };
    let mut resp = req.send().await.map_err(net)?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            url: u,
            status: status.as_u16(),
        });
    }
    let header = |h| {
        resp.headers()
            .get(h)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let etag = header(reqwest::header::ETAG);
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_LIST_BYTES as u64)
    {
        return Err(FetchError::TooLarge { url: u });
    }
    let io = |e| FetchError::Io {
        path: spool.display().to_string(),
        source: e,
    };
    if let Some(dir) = spool.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    let mut out = tokio::io::BufWriter::with_capacity(
        1 << 16,
        tokio::fs::File::create(spool).await.map_err(io)?,
    );
    let (mut len, mut sha) = (0usize, Sha256::new());
    while let Some(chunk) = resp.chunk().await.map_err(net)? {
        len += chunk.len();
        if len > MAX_LIST_BYTES {
            return Err(FetchError::TooLarge { url: u });
        }
        sha.update(&chunk);
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.shutdown().await.map_err(io)?;
    Ok(Some((hex(&sha.finalize()), etag, last_modified)))
}
