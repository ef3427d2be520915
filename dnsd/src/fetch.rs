//! Getting block lists and keeping them compiled under /data.
//!
//! Downloads use conditional requests (ETag and Last-Modified), so an unchanged list costs a
//! 304 and nothing else. Whatever goes wrong, the previous compiled list stays: a failed
//! download, a server error, an oversized or an empty list are reported and change nothing,
//! because a list server having a bad day must not unblock every ad in the house.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance::model::BlockList;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compiled::{CompileError, CompiledList};
use crate::lists::{ParseStats, parse};
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
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// SHA-256 of the raw list, to notice an unchanged body served without validators.
    pub sha256: String,
    /// Unix time of the last successful check and of the last change.
    pub checked_at: u64,
    pub updated_at: u64,
    pub stats: ParseStats,
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
}

impl ListStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
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
        let meta = self.meta(name)?;
        if meta.source != source {
            return None;
        }
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
                self.load(name, &src).map(|c| (name.to_owned(), c))
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
        let source = source_of(list).ok_or_else(|| FetchError::NoSource { name: name.into() })?;
        let old = self
            .meta(name)
            .filter(|m| m.source == source && self.bin(name).exists());
        let (body, etag, last_modified) = match (&list.url, &list.file) {
            (Some(url), _) => match download(client, url.as_url(), old.as_ref()).await? {
                Some(got) => got,
                None => {
                    self.touch(name, old);
                    return Ok(Outcome::Unchanged);
                }
            },
            (None, Some(file)) => {
                let body = tokio::fs::read(file.as_str())
                    .await
                    .map_err(|e| FetchError::Io {
                        path: file.to_string(),
                        source: e,
                    })?;
                (body, None, None)
            }
            (None, None) => return Err(FetchError::NoSource { name: name.into() }),
        };
        let sha = hex_sha(&body);
        if old.as_ref().is_some_and(|m| m.sha256 == sha) {
            self.touch(name, old);
            return Ok(Outcome::Unchanged);
        }
        // Parsing and compiling a big list takes a good part of a second of CPU: off the
        // async workers, so that queries keep being answered meanwhile.
        let format = list.format;
        let bin = self.bin(name);
        let source_name = source.clone();
        let (compiled, stats) = tokio::task::spawn_blocking(move || {
            let parsed = parse(&String::from_utf8_lossy(&body), format);
            drop(body);
            let stats = parsed.stats;
            let compiled = CompiledList::compile(parsed)?;
            if compiled.is_empty() {
                return Err(FetchError::Empty {
                    source_name,
                    skipped: stats.skipped,
                });
            }
            compiled.save(&bin)?;
            Ok((compiled, stats))
        })
        .await
        .map_err(|e| FetchError::Io {
            path: self.bin(name).display().to_string(),
            source: std::io::Error::other(e),
        })??;
        let t = now();
        self.write_meta(
            name,
            &ListMeta {
                source,
                etag,
                last_modified,
                sha256: sha,
                checked_at: t,
                updated_at: t,
                stats,
            },
        )?;
        tracing::info!(
            list = name,
            entries = stats.entries,
            skipped = stats.skipped,
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

fn hex_sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
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

/// Downloads `url` unless the validators of `old` say it is unchanged (`None`). The body
/// is read in chunks and refused beyond [`MAX_LIST_BYTES`].
async fn download(
    client: &reqwest::Client,
    url: &url::Url,
    old: Option<&ListMeta>,
) -> Result<Option<(Vec<u8>, Option<String>, Option<String>)>, FetchError> {
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
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(net)? {
        if body.len() + chunk.len() > MAX_LIST_BYTES {
            return Err(FetchError::TooLarge { url: u });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some((body, etag, last_modified)))
}
