//! Where a bundle comes from: a file, or HTTP(S) with Range requests so that a cut download
//! continues where it stopped instead of starting over.

use std::fs;
use std::io::{self, Read, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// A bundle that can be read from any byte offset.
pub trait Source: std::fmt::Debug {
    /// A reader positioned at `offset`.
    fn open_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + Send>>;
    /// For logs and the state file.
    fn describe(&self) -> String;
}

#[derive(Debug)]
pub struct FileSource(pub PathBuf);

impl Source for FileSource {
    fn open_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut f = fs::File::open(&self.0)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

#[derive(Debug)]
pub struct HttpSource {
    url: String,
    agent: ureq::Agent,
}

impl HttpSource {
    pub fn new(url: &str) -> HttpSource {
        let config = ureq::Agent::config_builder()
            // A stalled connection is cut and resumed rather than waited on for ever.
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_body(Some(Duration::from_secs(60)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .build();
        HttpSource {
            url: url.to_owned(),
            agent: config.into(),
        }
    }
}

impl Source for HttpSource {
    fn open_at(&mut self, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let mut req = self.agent.get(&self.url);
        if offset > 0 {
            req = req.header("Range", &format!("bytes={offset}-"));
        }
        let resp = req.call().map_err(io::Error::other)?;
        let status = resp.status().as_u16();
        let reader = resp.into_body().into_reader();
        match (offset, status) {
            (0, 200) | (_, 206) => Ok(Box::new(reader)),
            // A server without Range support: skip to the offset (slow, but correct).
            (_, 200) => {
                let mut r = reader;
                io::copy(&mut (&mut r).take(offset), &mut io::sink())?;
                Ok(Box::new(r))
            }
            (_, s) => Err(io::Error::other(format!("{}: HTTP status {s}", self.url))),
        }
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

/// A file path or an http(s):// URL.
pub fn open(spec: &str) -> Box<dyn Source + Send> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        Box::new(HttpSource::new(spec))
    } else {
        Box::new(FileSource(PathBuf::from(spec)))
    }
}
