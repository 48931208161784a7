//! Image archives inside the daemon: the images library's importer and
//! exporter run over the namespace's content store through small adapters,
//! fed by (or feeding) the client's byte stream through bounded channels.

use bytes::Bytes;
use std::collections::HashMap;
use std::io::{Read, Write};
use stevedore_content::{SeqReader, Store as _, Writer, WriterOpts};
use stevedore_images::content::{ContentWriter, Info, Ingester, LabelManager, Provider};
use stevedore_metadata::content::NsContent;
use stevedore_types::{Descriptor, Digest, Error, ErrorKind, Result};
use tokio::sync::mpsc;

/// The images library's content traits over one namespace's content.
pub struct ContentAdapter(pub NsContent);

impl Provider for ContentAdapter {
    fn info(&self, digest: &Digest) -> Result<Info> {
        let i = self.0.info(digest)?;
        Ok(Info {
            digest: i.digest,
            size: i.size,
            labels: i.labels,
        })
    }
    fn reader(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send>> {
        let ra = self.0.reader_at(&desc.digest)?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            SeqReader::new(ra, offset),
        )))
    }
}

struct IngestWriter {
    writer: Box<dyn Writer>,
    content: NsContent,
    reference: String,
}

impl Write for IngestWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer
            .write(buf)
            .map_err(|e| std::io::Error::other(e.message))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ContentWriter for IngestWriter {
    fn commit(
        mut self: Box<Self>,
        size: i64,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.writer.commit(size, Some(digest), labels).map(|_| ())
    }
    fn abort(self: Box<Self>) -> Result<()> {
        match self.content.abort(&self.reference) {
            Err(e) if e.kind != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Ingester for ContentAdapter {
    fn writer(
        &self,
        reference: &str,
        expected_size: Option<i64>,
        expected_digest: Option<&Digest>,
    ) -> Result<Box<dyn ContentWriter>> {
        if let Some(d) = expected_digest {
            if self.0.info(d).is_ok() {
                return Err(Error::already_exists(format!(
                    "content {d}: already exists"
                )));
            }
        }
        let mut writer = self.0.writer(WriterOpts {
            reference: reference.to_string(),
            total: expected_size.unwrap_or(0),
            expected: expected_digest.cloned(),
        })?;
        // the images library writes every blob from its first byte: start the
        // ingest there. Otherwise the leftover of an interrupted import, or a
        // "shared" ingest of a blob another namespace holds (which reports
        // the whole blob as written, for clients that resume), would be
        // appended to and fail its size check.
        if writer.status()?.offset > 0 {
            writer.truncate(0)?;
        }
        Ok(Box::new(IngestWriter {
            writer,
            content: self.0.clone(),
            reference: reference.to_string(),
        }))
    }
}

impl LabelManager for ContentAdapter {
    fn set_labels(&self, digest: &Digest, labels: &[(String, String)]) -> Result<()> {
        let mut info = self.0.info(digest)?;
        let paths: Vec<String> = labels.iter().map(|(k, _)| format!("labels.{k}")).collect();
        info.labels = labels.iter().cloned().collect();
        self.0.update(info, &paths)?;
        Ok(())
    }
}

/// A blocking `Read` over byte chunks arriving on a channel (the client's
/// upload); used on a blocking thread.
pub struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.current = b,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A blocking `Write` that sends 1 MiB chunks on a channel (the download to
/// the client); used on a blocking thread.
pub struct ChannelWriter<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Vec<u8>) -> T,
    buf: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl<T> ChannelWriter<T> {
    pub fn new(tx: mpsc::Sender<T>, wrap: fn(Vec<u8>) -> T) -> Self {
        ChannelWriter {
            tx,
            wrap,
            buf: Vec::with_capacity(CHUNK),
        }
    }
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send((self.wrap)(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl<T> Write for ChannelWriter<T> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use stevedore_content::local::LocalStore;
    use stevedore_metadata::Db;

    fn ingest(a: &ContentAdapter, reference: &str, bytes: &[u8]) -> Result<()> {
        let d = stevedore_content::digest_of(bytes);
        let mut w = a.writer(reference, Some(bytes.len() as i64), Some(&d))?;
        w.write_all(bytes)?;
        w.commit(bytes.len() as i64, &d, HashMap::new())
    }

    // found by the fuzzer (crates/fuzz, target archive_import over the
    // daemon's store): importing a blob another namespace already holds
    // appended the whole blob a second time and failed "size validation"
    #[test]
    fn imports_blobs_other_namespaces_hold_and_restarts_leftover_ingests() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("meta.db")).unwrap());
        db.attach_content(
            LocalStore::open(&dir.path().join("content")).unwrap(),
            Default::default(),
        )
        .unwrap();
        let bytes = vec![5u8; 3000];
        let d = stevedore_content::digest_of(&bytes);
        ingest(&ContentAdapter(db.content("a", None)), "tar-blob", &bytes).unwrap();
        let b = ContentAdapter(db.content("b", None));
        ingest(&b, "tar-blob", &bytes).unwrap();
        assert_eq!(b.info(&d).unwrap().size, 3000);

        // an import interrupted mid-blob leaves an ingest; the next one
        // writes the blob from the start again
        let c = ContentAdapter(db.content("c", None));
        let other = vec![6u8; 3000];
        let od = stevedore_content::digest_of(&other);
        let mut w = c.writer("tar-other", Some(3000), Some(&od)).unwrap();
        w.write_all(&other[..1000]).unwrap();
        drop(w);
        ingest(&c, "tar-other", &other).unwrap();
        assert_eq!(c.info(&od).unwrap().size, 3000);
    }
}
