//! Push primitives: blob existence (HEAD), uploads (POST then monolithic PUT or
//! chunked PATCH + PUT), cross-repository mounts, manifest PUT by tag or digest.
//! Ordering (children before parents) is the caller's; [`Repository::push_all`]
//! pushes a caller-ordered list.

use crate::client::{error_chain, header_len, status_error, Endpoint, Need, Repository, ReqBody};
use crate::media;
use crate::verify::Hasher;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION,
};
use reqwest::{Method, StatusCode};
use std::sync::Mutex;
use stevedore_types::{Descriptor, Digest, Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What happened to a blob on push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The registry already had it (HEAD said so): nothing sent.
    Exists,
    /// Mounted from another repository of the same registry: nothing sent.
    Mounted,
    /// Uploaded.
    Uploaded,
}

/// Options of one blob upload.
#[derive(Debug, Clone, Default)]
pub struct PushBlobOptions {
    /// Try a cross-repository mount from this repository path first (same registry).
    pub mount_from: Option<String>,
    /// Upload in PATCH chunks of this many bytes instead of one PUT.
    pub chunk_size: Option<usize>,
}

/// A boxed async reader of content to push.
pub type PushReader = Box<dyn AsyncRead + Send + Unpin>;

const READ_BUF: usize = 256 * 1024;

impl Repository {
    fn push_endpoint(&self, what: &str) -> Result<Endpoint> {
        self.endpoints_for(Need::Push)
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "{what} to {}: no host with push capability",
                    self.name()
                ))
            })
    }

    /// Whether the registry has blob `digest` in this repository (HEAD).
    pub async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        let what = format!("check blob {digest} in {}", self.name());
        let ep = self.push_endpoint(&what)?;
        let url = self.url(&ep, &format!("blobs/{digest}"))?;
        let resp = self
            .send(
                &ep,
                Method::HEAD,
                url,
                HeaderMap::new(),
                ReqBody::Empty,
                &self.push_scope(),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(resp, &what, &ep.host.host).await),
        }
    }

    /// Whether manifest `reference` (tag or digest) exists (HEAD).
    pub async fn manifest_exists(&self, reference: &str) -> Result<bool> {
        let what = format!("check manifest {reference} in {}", self.name());
        let ep = self.push_endpoint(&what)?;
        let url = self.url(&ep, &format!("manifests/{reference}"))?;
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(media::MANIFEST_ACCEPT),
        );
        let resp = self
            .send(
                &ep,
                Method::HEAD,
                url,
                h,
                ReqBody::Empty,
                &self.push_scope(),
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(resp, &what, &ep.host.host).await),
        }
    }

    /// Start an upload, or mount `digest` from repository `from` when given.
    /// Returns None when mounted, else the upload URL.
    async fn start_upload(
        &self,
        ep: &Endpoint,
        mount: Option<(&Digest, &str)>,
        what: &str,
    ) -> Result<Option<url::Url>> {
        let mut url = self.url(ep, "blobs/uploads/")?;
        let mut scopes = self.push_scope();
        if let Some((d, from)) = mount {
            url.query_pairs_mut()
                .append_pair("mount", &d.to_string())
                .append_pair("from", from);
            scopes.push(format!("repository:{from}:pull"));
        }
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(ep, Method::POST, url.clone(), h, ReqBody::Empty, &scopes)
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(None),
            StatusCode::ACCEPTED | StatusCode::CREATED => {
                Ok(Some(location(&resp, &url, what, &ep.host.host)?))
            }
            _ => Err(status_error(resp, what, &ep.host.host).await),
        }
    }

    /// Mount blob `desc` from repository path `from` of the same registry. Returns
    /// whether the registry mounted it (false: it does not have it there).
    pub async fn mount_blob(&self, desc: &Descriptor, from: &str) -> Result<bool> {
        let what = format!(
            "mount blob {} from {from} into {}",
            desc.digest,
            self.name()
        );
        let ep = self.push_endpoint(&what)?;
        match self
            .start_upload(&ep, Some((&desc.digest, from)), &what)
            .await?
        {
            None => Ok(true),
            Some(upload) => {
                // not mounted: cancel the upload the registry opened instead
                let _ = self
                    .send(
                        &ep,
                        Method::DELETE,
                        upload,
                        HeaderMap::new(),
                        ReqBody::Empty,
                        &self.push_scope(),
                    )
                    .await;
                Ok(false)
            }
        }
    }

    /// Push blob `desc` from `reader` unless the registry has it; the reader must
    /// yield exactly `desc.size` bytes hashing to `desc.digest`.
    pub async fn push_blob(
        &self,
        desc: &Descriptor,
        reader: PushReader,
        options: &PushBlobOptions,
    ) -> Result<PushOutcome> {
        let what = format!("push blob {} to {}", desc.digest, self.name());
        let ep = self.push_endpoint(&what)?;
        if self.blob_exists(&desc.digest).await? {
            return Ok(PushOutcome::Exists);
        }
        let mount = options.mount_from.as_deref().map(|f| (&desc.digest, f));
        let Some(upload) = self.start_upload(&ep, mount, &what).await? else {
            return Ok(PushOutcome::Mounted);
        };
        let upload = match options.chunk_size {
            Some(n) if n > 0 => {
                self.patch_chunks(&ep, upload, desc, reader, n, &what)
                    .await?
            }
            _ => {
                let body = verified_body(reader, desc.clone());
                let mut h = HeaderMap::new();
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                h.insert(CONTENT_LENGTH, HeaderValue::from(desc.size.max(0) as u64));
                let mut url = upload;
                url.query_pairs_mut()
                    .append_pair("digest", &desc.digest.to_string());
                let resp = self
                    .send(
                        &ep,
                        Method::PUT,
                        url,
                        h,
                        ReqBody::Once(Mutex::new(Some(body))),
                        &self.push_scope(),
                    )
                    .await?;
                return finish_put(resp, desc, &what, &ep.host.host).await;
            }
        };
        let mut url = upload;
        url.query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(&ep, Method::PUT, url, h, ReqBody::Empty, &self.push_scope())
            .await?;
        finish_put(resp, desc, &what, &ep.host.host).await
    }

    async fn patch_chunks(
        &self,
        ep: &Endpoint,
        mut upload: url::Url,
        desc: &Descriptor,
        mut reader: PushReader,
        chunk: usize,
        what: &str,
    ) -> Result<url::Url> {
        let mut hasher = Hasher::new(desc.digest.algorithm());
        let mut offset: u64 = 0;
        loop {
            let mut buf = BytesMut::with_capacity(chunk);
            while buf.len() < chunk {
                let n = reader
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::from(e).context(format!("{what}: read content")))?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            hasher.update(&buf);
            let end = offset + buf.len() as u64 - 1;
            let mut h = HeaderMap::new();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(CONTENT_LENGTH, HeaderValue::from(buf.len() as u64));
            if let Ok(v) = HeaderValue::try_from(format!("{offset}-{end}")) {
                h.insert(CONTENT_RANGE, v);
            }
            let n = buf.len() as u64;
            let resp = self
                .send(
                    ep,
                    Method::PATCH,
                    upload.clone(),
                    h,
                    ReqBody::Bytes(buf.freeze()),
                    &self.push_scope(),
                )
                .await?;
            if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT {
                return Err(status_error(resp, what, &ep.host.host).await);
            }
            upload = location(&resp, &upload, what, &ep.host.host)?;
            offset += n;
        }
        check_content(offset, hasher.finish(), desc, what)?;
        Ok(upload)
    }

    /// PUT a manifest under `tag_or_digest` with its media type as Content-Type.
    /// Returns the digest the registry reports (checked against the bytes).
    pub async fn push_manifest(
        &self,
        tag_or_digest: &str,
        media_type: &str,
        manifest: Bytes,
    ) -> Result<Digest> {
        let what = format!("push manifest {}:{tag_or_digest}", self.name());
        let ep = self.push_endpoint(&what)?;
        let digest = crate::verify::sha256(&manifest);
        if let Ok(d) = tag_or_digest.parse::<Digest>() {
            if d != digest {
                return Err(Error::invalid(format!(
                    "{what}: manifest bytes have digest {digest}, not {d}"
                )));
            }
        }
        let url = self.url(&ep, &format!("manifests/{tag_or_digest}"))?;
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::try_from(media_type).map_err(|_| {
                Error::invalid(format!("{what}: invalid media type {media_type:?}"))
            })?,
        );
        let resp = self
            .send(
                &ep,
                Method::PUT,
                url,
                h,
                ReqBody::Bytes(manifest),
                &self.push_scope(),
            )
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(status_error(resp, &what, &ep.host.host).await);
        }
        if let Some(got) = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
        {
            if got != digest.to_string() {
                return Err(Error::unknown(format!(
                    "{what}: registry stored digest {got}, expected {digest}"
                )));
            }
        }
        Ok(digest)
    }

    /// Push one piece of content: manifests and indexes by digest, anything else as
    /// a blob.
    pub async fn push(
        &self,
        desc: &Descriptor,
        mut reader: PushReader,
        options: &PushBlobOptions,
    ) -> Result<PushOutcome> {
        if !media::is_manifest(&desc.media_type) {
            return self.push_blob(desc, reader, options).await;
        }
        let what = format!("push manifest {} to {}", desc.digest, self.name());
        if self.manifest_exists(&desc.digest.to_string()).await? {
            return Ok(PushOutcome::Exists);
        }
        let bytes = read_manifest(&mut reader, desc, &what).await?;
        self.push_manifest(&desc.digest.to_string(), &desc.media_type, bytes)
            .await?;
        Ok(PushOutcome::Uploaded)
    }

    /// Push `items` in the given order (children first), then tag the last one
    /// (the root) with `tag` when given. `open` yields each item's content.
    pub async fn push_all<'a, F>(
        &'a self,
        items: &'a [Descriptor],
        tag: Option<&'a str>,
        options: &'a PushBlobOptions,
        open: F,
    ) -> Result<Vec<PushOutcome>>
    where
        F: Fn(&Descriptor) -> BoxFuture<'a, Result<PushReader>>,
    {
        let mut out = Vec::with_capacity(items.len());
        for d in items {
            let reader = open(d).await?;
            out.push(self.push(d, reader, options).await?);
        }
        if let (Some(tag), Some(root)) = (tag, items.last()) {
            let what = format!("tag {} as {}:{tag}", root.digest, self.name());
            let mut reader = open(root).await?;
            let bytes = read_manifest(&mut reader, root, &what).await?;
            self.push_manifest(tag, &root.media_type, bytes).await?;
        }
        Ok(out)
    }
}

async fn read_manifest(reader: &mut PushReader, desc: &Descriptor, what: &str) -> Result<Bytes> {
    if desc.size > media::MAX_MANIFEST_SIZE {
        return Err(Error::invalid(format!(
            "{what}: {} byte manifest exceeds the limit",
            desc.size
        )));
    }
    let mut buf = Vec::with_capacity(desc.size.max(0) as usize);
    reader
        .take(media::MAX_MANIFEST_SIZE as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| Error::from(e).context(format!("{what}: read content")))?;
    check_content(buf.len() as u64, crate::verify::sha256(&buf), desc, what)?;
    Ok(Bytes::from(buf))
}

fn check_content(n: u64, actual: Digest, desc: &Descriptor, what: &str) -> Result<()> {
    if desc.size >= 0 && n != desc.size as u64 {
        return Err(Error::invalid(format!(
            "{what}: content has {n} bytes, descriptor says {}",
            desc.size
        )));
    }
    if desc.digest.algorithm() == actual.algorithm() && actual != desc.digest {
        return Err(Error::invalid(format!(
            "{what}: digest mismatch: expected {}, got {actual}",
            desc.digest
        )));
    }
    Ok(())
}

async fn finish_put(
    resp: reqwest::Response,
    desc: &Descriptor,
    what: &str,
    host: &str,
) -> Result<PushOutcome> {
    if resp.status() == StatusCode::CREATED || resp.status().is_success() {
        let _ = header_len(resp.headers());
        return Ok(PushOutcome::Uploaded);
    }
    let e = status_error(resp, what, host).await;
    Err(e.context(format!("digest {}", desc.digest)))
}

/// The upload URL from `Location`, resolved against the request URL.
fn location(resp: &reqwest::Response, base: &url::Url, what: &str, host: &str) -> Result<url::Url> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::unknown(format!(
                "{what} on registry {host}: upload response has no Location"
            ))
        })?;
    base.join(loc).map_err(|e| {
        Error::unknown(format!(
            "{what} on registry {host}: invalid Location {loc:?}: {e}"
        ))
    })
}

/// A streaming request body from `reader` that fails (aborting the request) when
/// the content does not have the descriptor's size and digest.
fn verified_body(reader: PushReader, desc: Descriptor) -> reqwest::Body {
    struct St {
        reader: PushReader,
        hasher: Option<Hasher>,
        n: u64,
        desc: Descriptor,
    }
    let st = St {
        reader,
        hasher: Some(Hasher::new(desc.digest.algorithm())),
        n: 0,
        desc,
    };
    let s = futures::stream::unfold(Some(st), |state| async move {
        let mut st = state?;
        let mut buf = BytesMut::with_capacity(READ_BUF);
        match st.reader.read_buf(&mut buf).await {
            Err(e) => Some((Err(std::io::Error::other(error_chain(&e))), None)),
            Ok(0) => {
                let actual = st.hasher.take()?.finish();
                match check_content(st.n, actual, &st.desc, "push blob") {
                    Ok(()) => None,
                    Err(e) => Some((Err(std::io::Error::other(e.message)), None)),
                }
            }
            Ok(n) => {
                st.n += n as u64;
                if let Some(h) = &mut st.hasher {
                    h.update(&buf);
                }
                let b: Bytes = buf.freeze();
                Some((Ok(b), Some(st)))
            }
        }
    });
    reqwest::Body::wrap_stream(s)
}
