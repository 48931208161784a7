//! Fetching manifests and blobs as byte streams, verified while they flow: the size
//! must match the descriptor and the digest is checked at the end. A dropped
//! connection or truncated body is resumed with `Range: bytes=<offset>-` on the
//! same endpoint (bounded retries with backoff), keeping the running hash, so the
//! caller sees one continuous, verified stream.

use crate::client::{backoff, error_chain, status_error, Endpoint, Need, Repository, ReqBody};
use crate::media;
use crate::verify::Hasher;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, RANGE};
use reqwest::{Method, StatusCode};
use stevedore_types::{Descriptor, Error, Result};

/// A verified byte stream of one descriptor's content.
pub struct BlobReader {
    repo: Repository,
    desc: Descriptor,
    /// Bytes delivered so far (including any prefix the caller already had).
    pos: u64,
    hasher: Option<Hasher>,
    body: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    /// Bytes still to drop when a server ignored our Range header.
    skip: u64,
    /// Index of the endpoint that served us last; resumes go there first.
    endpoint: Option<usize>,
    done: bool,
    resumes: u32,
}

impl Repository {
    /// Fetch the whole content of `desc`, verifying size and digest.
    pub async fn fetch(&self, desc: &Descriptor) -> Result<BlobReader> {
        let hasher = Hasher::new(desc.digest.algorithm());
        self.fetch_from(desc, 0, Some(hasher)).await
    }

    /// Fetch `desc` from byte `offset` on. With `prefix` (the running hash of the
    /// first `offset` bytes, e.g. from a partial ingest, or a fresh hasher at
    /// offset 0) the digest is verified at the end; without it only the size
    /// is checked and the caller must verify the digest (a content store does
    /// on commit: hashing here too would hash every blob twice).
    pub async fn fetch_from(
        &self,
        desc: &Descriptor,
        offset: u64,
        prefix: Option<Hasher>,
    ) -> Result<BlobReader> {
        if desc.size >= 0 && offset > desc.size as u64 {
            return Err(Error::new(
                stevedore_types::ErrorKind::OutOfRange,
                format!(
                    "fetch {} from {}: offset {offset} beyond size {}",
                    desc.digest,
                    self.name(),
                    desc.size
                ),
            ));
        }
        let mut r = BlobReader {
            repo: self.clone(),
            desc: desc.clone(),
            pos: offset,
            hasher: prefix,
            body: None,
            skip: 0,
            endpoint: None,
            done: false,
            resumes: 0,
        };
        if desc.size < 0 || offset < desc.size as u64 {
            r.open().await?;
        }
        Ok(r)
    }

    /// Fetch a manifest or index into memory (bounded by the 4 MiB manifest limit),
    /// verified.
    pub async fn fetch_manifest(&self, desc: &Descriptor) -> Result<Bytes> {
        if desc.size > media::MAX_MANIFEST_SIZE {
            return Err(Error::invalid(format!(
                "fetch {} from {}: {} byte manifest exceeds the {} byte limit",
                desc.digest,
                self.name(),
                desc.size,
                media::MAX_MANIFEST_SIZE
            )));
        }
        let mut r = self.fetch(desc).await?;
        let mut buf = Vec::with_capacity(desc.size.max(0) as usize);
        while let Some(c) = r.chunk().await? {
            buf.extend_from_slice(&c);
        }
        Ok(Bytes::from(buf))
    }
}

impl BlobReader {
    /// The descriptor being fetched.
    pub fn descriptor(&self) -> &Descriptor {
        &self.desc
    }

    /// Bytes of the blob delivered so far (counting the resume offset).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// How many times the transfer was resumed after a broken or short response.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    fn what(&self) -> String {
        format!("fetch {} from {}", self.desc.digest, self.repo.name())
    }

    /// Open a response at `self.pos` on the first endpoint that has the content.
    async fn open(&mut self) -> Result<()> {
        let endpoints = self.repo.endpoints_for(Need::Pull);
        if endpoints.is_empty() {
            return Err(Error::not_found(format!("{}: no pull hosts", self.what())));
        }
        let manifest = media::is_manifest(&self.desc.media_type);
        let d = self.desc.digest.to_string();
        let paths = if manifest {
            [format!("manifests/{d}"), format!("blobs/{d}")]
        } else {
            [format!("blobs/{d}"), format!("manifests/{d}")]
        };
        let mut order: Vec<usize> = (0..endpoints.len()).collect();
        if let Some(i) = self.endpoint.filter(|&i| i < endpoints.len()) {
            order.retain(|&x| x != i);
            order.insert(0, i);
        }
        let mut headers = HeaderMap::new();
        if manifest {
            let accept = format!("{}, {}", self.desc.media_type, media::MANIFEST_ACCEPT);
            if let Ok(v) = HeaderValue::try_from(accept) {
                headers.insert(ACCEPT, v);
            }
        }
        if self.pos > 0 {
            if let Ok(v) = HeaderValue::try_from(format!("bytes={}-", self.pos)) {
                headers.insert(RANGE, v);
            }
        }
        let scopes = self.repo.pull_scope();
        let mut first_err: Option<Error> = None;
        for path in &paths {
            for &i in &order {
                let ep: &Endpoint = &endpoints[i];
                let url = self.repo.url(ep, path)?;
                let resp = match self
                    .repo
                    .send(
                        ep,
                        Method::GET,
                        url,
                        headers.clone(),
                        ReqBody::Empty,
                        &scopes,
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        first_err.get_or_insert(e.context(self.what()));
                        continue;
                    }
                };
                let status = resp.status();
                if status == StatusCode::NOT_FOUND {
                    continue;
                }
                if !status.is_success() {
                    first_err.get_or_insert(status_error(resp, &self.what(), &ep.host.host).await);
                    continue;
                }
                self.skip = 0;
                if self.pos > 0 {
                    if status == StatusCode::PARTIAL_CONTENT {
                        let start = resp
                            .headers()
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bytes "))
                            .and_then(|v| v.split('-').next())
                            .and_then(|v| v.parse::<u64>().ok());
                        if start != Some(self.pos) {
                            return Err(Error::unavailable(format!(
                                "{} on registry {}: asked for bytes from {}, got Content-Range {:?}",
                                self.what(),
                                ep.host.host,
                                self.pos,
                                resp.headers().get(CONTENT_RANGE)
                            )));
                        }
                    } else {
                        // the server ignored Range: drop what we already have
                        self.skip = self.pos;
                    }
                }
                self.endpoint = Some(i);
                self.body = Some(resp.bytes_stream().boxed());
                return Ok(());
            }
        }
        Err(first_err.unwrap_or_else(|| {
            Error::not_found(format!(
                "{}: not found on {}",
                self.what(),
                endpoints
                    .iter()
                    .map(|e| e.host.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }))
    }

    /// The next chunk of verified bytes, or None at the verified end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        let opts = self.repo.inner.options.clone();
        let mut attempt = 0u32;
        loop {
            let complete = self.desc.size >= 0 && self.pos >= self.desc.size as u64;
            if self.body.is_none() && !complete {
                match self.open().await {
                    Ok(()) => {}
                    Err(e)
                        if attempt < opts.retries
                            && e.is(stevedore_types::ErrorKind::Unavailable) =>
                    {
                        backoff(&opts, attempt).await;
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let next = match self.body.as_mut() {
                Some(body) => body.next().await,
                // everything was already there (resume at the end): just verify
                None => None,
            };
            let size = self.desc.size;
            match next {
                Some(Ok(mut b)) => {
                    if self.skip > 0 {
                        let n = (self.skip as usize).min(b.len());
                        self.skip -= n as u64;
                        b = b.slice(n..);
                        if b.is_empty() {
                            continue;
                        }
                    }
                    if size >= 0 && self.pos + b.len() as u64 > size as u64 {
                        self.done = true;
                        return Err(Error::invalid(format!(
                            "{}: registry sent more than the expected {size} bytes",
                            self.what()
                        )));
                    }
                    if let Some(h) = &mut self.hasher {
                        h.update(&b);
                    }
                    self.pos += b.len() as u64;
                    return Ok(Some(b));
                }
                Some(Err(e)) => {
                    self.body = None;
                    if attempt < opts.retries {
                        tracing::debug!(pos = self.pos, error = %error_chain(&e), "blob stream broke, resuming");
                        self.resumes += 1;
                        backoff(&opts, attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::unavailable(format!(
                        "{} at byte {}: {}",
                        self.what(),
                        self.pos,
                        error_chain(&e)
                    )));
                }
                None => {
                    self.body = None;
                    if size >= 0 && self.pos < size as u64 {
                        if attempt < opts.retries {
                            tracing::debug!(
                                pos = self.pos,
                                size,
                                "blob stream ended early, resuming"
                            );
                            self.resumes += 1;
                            backoff(&opts, attempt).await;
                            attempt += 1;
                            continue;
                        }
                        return Err(Error::unavailable(format!(
                            "{}: stream ended at byte {} of {size}",
                            self.what(),
                            self.pos
                        )));
                    }
                    self.done = true;
                    if let Some(h) = self.hasher.take() {
                        let actual = h.finish();
                        if actual != self.desc.digest {
                            return Err(Error::new(
                                stevedore_types::ErrorKind::FailedPrecondition,
                                format!(
                                    "{}: digest mismatch: expected {}, got {actual}",
                                    self.what(),
                                    self.desc.digest
                                ),
                            ));
                        }
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The reader as a `futures::Stream` of verified chunks.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        futures::stream::unfold(Some(self), |state| async move {
            let mut r = state?;
            match r.chunk().await {
                Ok(Some(b)) => Some((Ok(b), Some(r))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }
}
