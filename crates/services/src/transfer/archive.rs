//! Import and export: the images library's importer and exporter over the
//! namespace's content, fed by (or feeding) the client's bytes through a
//! bounded channel on a blocking thread; nothing holds a whole archive.

use super::pull::{select_host_manifest, Pull};
use super::{blocking, AnyOf, Engine, Reporter};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use stevedore_images::archive::{ArchiveImporter, Importer};
use stevedore_metadata::images::Image;
use stevedore_types::platform::{Exact, MatchPlatform};
use stevedore_types::{Descriptor, Digest, Error, Platform, Result};
use tokio::sync::{mpsc, Semaphore};

/// What to import and how, whichever front end asked.
pub(crate) struct ImportOptions {
    /// Naming, platforms, labels: the images library's options.
    pub archive: stevedore_images::archive::ImportOptions,
    /// Unpack each image for this host into this snapshotter.
    pub unpack: Option<String>,
}

impl Engine {
    /// Import an archive streamed by the client: blobs into the content store
    /// (under a lease), image records created or retargeted, then each image
    /// unpacked for this host. Returns the image records.
    pub(crate) async fn import_archive(
        &self,
        ns: String,
        opts: ImportOptions,
        data: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
        report: Reporter,
    ) -> Result<Vec<Image>> {
        let lease = self.create_lease(&ns, "import").await?;
        let options = opts.archive;
        let content = self.db.content(&ns, Some(&lease));
        let records = blocking(move || {
            let adapter = crate::archive::ContentAdapter(content);
            let reader = crate::archive::ChannelReader::new(data);
            // containerd 2.x's ImageImportStream: a gzip- or zstd-compressed
            // archive (`ctr images import image.tar.gz`) is decompressed
            let mut reader = stevedore_images::image::decompress(Box::new(reader))?;
            ArchiveImporter::new(options).import(&adapter, &mut reader)
        })
        .await?;
        if records.is_empty() {
            return Err(Error::invalid(
                "the archive names no image: use --base-name or --oci-name",
            ));
        }
        let mut images = Vec::new();
        for rec in &records {
            let image = Image {
                name: rec.name.clone(),
                labels: rec.labels.clone(),
                target: Descriptor::new(
                    rec.target.media_type.clone(),
                    rec.target.digest.clone(),
                    rec.target.size,
                ),
                created_at: 0,
                updated_at: 0,
            };
            let img = self.store_image(&ns, image).await?;
            report
                .item(&img.target, "image", "imported", img.target.size, &img.name)
                .await;
            images.push(img);
        }
        if let Some(snapshotter) = &opts.unpack {
            let snapshotter = snapshotter.as_str();
            let sn = self.snapshotter("import", snapshotter)?;
            let pull = Arc::new(Pull {
                db: self.db.clone(),
                ns: ns.clone(),
                lease: lease.clone(),
                repo: None,
                report: report.clone(),
                exchange: self.exchange.clone(),
                downloads: Arc::new(Semaphore::new(1)),
            });
            let mut done: Vec<Digest> = Vec::new();
            for rec in &records {
                if done.contains(&rec.target.digest) {
                    continue;
                }
                done.push(rec.target.digest.clone());
                let Some(selected) = select_host_manifest(&pull, &rec.target).await? else {
                    continue;
                };
                let chain = self
                    .unpack(&pull, &sn, snapshotter, &selected, &HashMap::new())
                    .await?;
                pull.set_labels(
                    &selected.manifest.config.digest,
                    HashMap::from([(
                        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                        chain.to_string(),
                    )]),
                )
                .await?;
                for (i, l) in selected.manifest.layers.iter().enumerate() {
                    pull.set_labels(
                        &l.digest,
                        HashMap::from([(
                            crate::diff::LABEL_UNCOMPRESSED.to_string(),
                            selected.config.rootfs.diff_ids[i].to_string(),
                        )]),
                    )
                    .await?;
                }
            }
        }
        self.delete_lease(&ns, &lease).await;
        Ok(images)
    }

    /// Export images as an OCI archive (what `ctr images export` writes)
    /// into `out`, on a blocking thread; an image that does not exist is
    /// NotFound before a byte is written.
    pub(crate) async fn export(
        &self,
        ns: &str,
        opts: ExportOptions,
        mut out: impl Write + Send + 'static,
    ) -> Result<()> {
        use stevedore_images::archive::Exporter;
        if opts.names.is_empty() {
            return Err(Error::invalid("export: name at least one image"));
        }
        let mut images = Vec::new();
        for name in &opts.names {
            let (db, n, name2) = (self.db.clone(), ns.to_string(), name.clone());
            let img = blocking(move || db.get_image(&n, &name2)).await?;
            let target = Descriptor::new(
                img.target.media_type.clone(),
                img.target.digest.clone(),
                img.target.size,
            );
            images.push(stevedore_images::archive::ExportImage::named(name, &target));
        }
        let exporter = stevedore_images::archive::OciExporter {
            platform: opts.platform,
            all_platforms: opts.all_platforms,
            skip_docker_manifest: opts.skip_manifest_json,
            skip_non_distributable: opts.skip_non_distributable,
            progress: None,
        };
        let content = self.db.content(ns, None);
        let r = blocking(move || {
            let adapter = crate::archive::ContentAdapter(content);
            exporter.export(&adapter, &images, &mut out)?;
            out.flush().map_err(Error::from)
        })
        .await;
        // the end of an export: its stream's buffers are free now (an
        // export takes no lease, so `delete_lease` does not say it)
        crate::memory::work_done();
        r
    }
}

/// What to export and how, whichever front end asked.
pub(crate) struct ExportOptions {
    pub names: Vec<String>,
    /// Which manifests of an index go in; None: all of them.
    pub platform: Option<Box<dyn MatchPlatform>>,
    pub all_platforms: bool,
    pub skip_manifest_json: bool,
    pub skip_non_distributable: bool,
}

/// The platforms an export keeps (with `all_platforms`: the one whose
/// manifest goes into `manifest.json`): exactly the named ones, or exactly
/// the host's (containerd's `DefaultStrict`).
pub(crate) fn export_platforms(platforms: &[Platform]) -> Option<Box<dyn MatchPlatform>> {
    if platforms.is_empty() {
        return Some(Box::new(Exact(Platform::host())));
    }
    Some(Box::new(AnyOf(
        platforms
            .iter()
            .map(|p| Box::new(Exact(p.clone())) as Box<dyn MatchPlatform>)
            .collect(),
    )))
}
