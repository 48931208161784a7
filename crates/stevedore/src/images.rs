//! `stevedore images ...`: image records.

use crate::client::{rpc_error, Conn};
use crate::output::{human_size, labels_cell, print_json, Format, Removals, Table};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use stevedore_api::services::images::{
    images_client::ImagesClient, CreateImageRequest, DeleteImageRequest, GetImageRequest,
    ListImagesRequest,
};

#[derive(Subcommand)]
pub enum ImagesCmd {
    /// List images (filters: name==..., labels.k==v, target.digest==...).
    #[command(alias = "list")]
    Ls {
        /// Print only names.
        #[arg(long, short = 'q')]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Give an image another name.
    Tag {
        source: String,
        #[arg(required = true)]
        targets: Vec<String>,
        /// Replace a target that already exists.
        #[arg(long)]
        force: bool,
    },
    /// Import an image archive (OCI layout or `docker save` tar) and unpack it.
    Import {
        /// The archive (`-` for standard input).
        file: String,
        /// Keep only images under this name.
        #[arg(long)]
        base_name: Option<String>,
        /// Name the images `<name>:<ref>` and `<name>@<digest>`.
        #[arg(long)]
        oci_name: Option<String>,
        /// Also create `<name>@<digest>` images (with --base-name).
        #[arg(long)]
        digests: bool,
        /// Keep the index itself as an image of this name.
        #[arg(long)]
        index_name: Option<String>,
        #[arg(long)]
        platform: Vec<String>,
        #[arg(long, conflicts_with = "platform")]
        all_platforms: bool,
        /// Do not unpack into a snapshotter.
        #[arg(long)]
        no_unpack: bool,
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// Print only the image names.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Export images as an OCI archive (what `ctr images export` writes).
    Export {
        /// The archive to write (`-` for standard output).
        file: String,
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        platform: Vec<String>,
        #[arg(long, conflicts_with = "platform")]
        all_platforms: bool,
        /// Leave out the Docker `manifest.json`.
        #[arg(long)]
        skip_manifest_json: bool,
        /// Leave out non-distributable (foreign) layers.
        #[arg(long)]
        skip_non_distributable: bool,
    },
    /// Mount an image's rootfs on a directory (read-only unless --rw).
    Mount {
        image: String,
        target: std::path::PathBuf,
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
        /// A writable snapshot instead of a read-only view.
        #[arg(long)]
        rw: bool,
    },
    /// Unmount what `images mount` mounted and remove its snapshot.
    Unmount {
        target: std::path::PathBuf,
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
    },
    /// Check that images' content is present and unpacked (filters as for ls).
    Check {
        filters: Vec<String>,
        #[arg(long, default_value = "overlayfs")]
        snapshotter: String,
    },
    /// Print an image's record, manifest (or index) and config as JSON.
    Inspect { name: String },
    /// Convert an image into a new one: Docker to OCI media types, layer recompression.
    Convert {
        source: String,
        target: String,
        /// Rewrite Docker media types to OCI ones.
        #[arg(long)]
        oci: bool,
        /// Recompress layers: gzip or zstd.
        #[arg(long)]
        layer_compression: Option<String>,
        /// Keep only these platforms' manifests (multi-platform images).
        #[arg(long)]
        platform: Vec<String>,
    },
    /// Remove images (their content is collected by the GC).
    #[command(alias = "remove", alias = "delete")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
        /// Collect the garbage before returning.
        #[arg(long)]
        sync: bool,
    },
}

/// A live bytes/speed bar on a terminal (None when quiet or not a terminal).
fn byte_bar(quiet: bool, total: u64, verb: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let template = if total > 0 {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    let b = indicatif::ProgressBar::with_draw_target(
        (total > 0).then_some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(verb.to_string());
    Some(b)
}

pub async fn run(conn: &Conn, fmt: Format, cmd: ImagesCmd) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = ImagesClient::with_interceptor(ch, ns);
    match cmd {
        ImagesCmd::Ls { quiet, filters } => {
            let mut list = c
                .list(ListImagesRequest { filters })
                .await
                .map_err(|s| rpc_error("list images", s))?
                .into_inner()
                .images;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            if fmt == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|i| {
                        let t = i.target.clone().unwrap_or_default();
                        json!({"name": i.name, "labels": i.labels,
                               "target": {"mediaType": t.media_type, "digest": t.digest, "size": t.size}})
                    })
                    .collect();
                print_json(&json!(v));
            } else if quiet {
                for i in &list {
                    println!("{}", i.name);
                }
            } else {
                let mut t = Table::new(&["REF", "TYPE", "DIGEST", "SIZE", "LABELS"]);
                for i in &list {
                    let d = i.target.clone().unwrap_or_default();
                    t.row(vec![
                        i.name.clone(),
                        d.media_type,
                        d.digest,
                        human_size(d.size),
                        labels_cell(&i.labels),
                    ]);
                }
                t.print();
            }
        }
        ImagesCmd::Tag {
            source,
            targets,
            force,
        } => {
            let src = c
                .get(GetImageRequest {
                    name: source.clone(),
                })
                .await
                .map_err(|s| rpc_error(&format!("get image {source:?}"), s))?
                .into_inner()
                .image
                .unwrap_or_default();
            for t in targets {
                let mut img = src.clone();
                img.name = t.clone();
                img.created_at = None;
                img.updated_at = None;
                let res = c
                    .create(CreateImageRequest {
                        image: Some(img.clone()),
                        source_date_epoch: None,
                    })
                    .await;
                match res {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::AlreadyExists && force => {
                        c.delete(DeleteImageRequest {
                            name: t.clone(),
                            sync: false,
                            target: None,
                        })
                        .await
                        .map_err(|s| rpc_error(&format!("replace image {t:?}"), s))?;
                        c.create(CreateImageRequest {
                            image: Some(img),
                            source_date_epoch: None,
                        })
                        .await
                        .map_err(|s| rpc_error(&format!("tag image {t:?}"), s))?;
                    }
                    Err(s) => return Err(rpc_error(&format!("tag image {t:?}"), s)),
                }
                println!("{t}");
            }
        }
        ImagesCmd::Import {
            file,
            base_name,
            oci_name,
            digests,
            index_name,
            platform,
            all_platforms,
            no_unpack,
            snapshotter,
            quiet,
        } => {
            use stevedore_api::services::stevedore_transfer::{
                transfer_client::TransferClient, ImportOptions, ImportRequest,
            };
            use tokio::io::AsyncReadExt;
            let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if file == "-" {
                Box::new(tokio::io::stdin())
            } else {
                Box::new(
                    tokio::fs::File::open(&file)
                        .await
                        .map_err(|e| anyhow::anyhow!("open archive {file}: {e}"))?,
                )
            };
            let options = ImportOptions {
                base_name: base_name.unwrap_or_default(),
                oci_name: oci_name.unwrap_or_default(),
                digests,
                platforms: platform,
                all_platforms,
                unpack: !no_unpack,
                snapshotter,
                labels: Default::default(),
                index_name: index_name.unwrap_or_default(),
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<ImportRequest>(4);
            tx.send(ImportRequest {
                options: Some(options),
                data: Vec::new(),
            })
            .await
            .ok();
            let what = format!("read archive {file}");
            let total = if file == "-" {
                0
            } else {
                std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0)
            };
            let bar = byte_bar(quiet || fmt == Format::Json, total, "uploading");
            let feeder_bar = bar.clone();
            let feeder = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = input.read(&mut buf).await?;
                    if let Some(b) = &feeder_bar {
                        b.inc(n as u64);
                    }
                    if n == 0 {
                        if let Some(b) = &feeder_bar {
                            b.finish_and_clear();
                        }
                        return Ok::<(), std::io::Error>(());
                    }
                    if tx
                        .send(ImportRequest {
                            options: None,
                            data: buf[..n].to_vec(),
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            });
            let (ch, ns) = conn.svc()?;
            let stream = TransferClient::with_interceptor(ch, ns)
                .import(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| rpc_error(&format!("import {file}"), s))?
                .into_inner();
            let done = crate::transfer::follow(stream, &format!("import {file}"), quiet, fmt).await;
            feeder
                .await
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            done?;
        }
        ImagesCmd::Export {
            file,
            names,
            platform,
            all_platforms,
            skip_manifest_json,
            skip_non_distributable,
        } => {
            use std::io::Write;
            use stevedore_api::services::stevedore_transfer::{
                transfer_client::TransferClient, ExportRequest,
            };
            let (ch, ns) = conn.svc()?;
            let mut stream = TransferClient::with_interceptor(ch, ns)
                .export(ExportRequest {
                    names: names.clone(),
                    platforms: platform,
                    all_platforms,
                    skip_manifest_json,
                    skip_non_distributable,
                })
                .await
                .map_err(|s| rpc_error(&format!("export {}", names.join(" ")), s))?
                .into_inner();
            let (mut out, tmp): (Box<dyn Write>, Option<std::path::PathBuf>) = if file == "-" {
                (Box::new(std::io::stdout().lock()), None)
            } else {
                let tmp = std::path::PathBuf::from(format!("{file}.partial"));
                let f = std::fs::File::create(&tmp)
                    .map_err(|e| anyhow::anyhow!("create {}: {e}", tmp.display()))?;
                (Box::new(std::io::BufWriter::new(f)), Some(tmp))
            };
            let mut total = 0usize;
            let bar = byte_bar(file == "-" || fmt == Format::Json, 0, "exporting");
            let result: Result<()> = async {
                while let Some(chunk) = stream
                    .message()
                    .await
                    .map_err(|s| rpc_error(&format!("export {}", names.join(" ")), s))?
                {
                    total += chunk.data.len();
                    if let Some(b) = &bar {
                        b.inc(chunk.data.len() as u64);
                    }
                    out.write_all(&chunk.data)?;
                }
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                out.flush()?;
                Ok(())
            }
            .await;
            drop(out);
            match (result, tmp) {
                (Err(e), Some(tmp)) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                (Err(e), None) => return Err(e),
                (Ok(()), Some(tmp)) => {
                    std::fs::rename(&tmp, &file)
                        .map_err(|e| anyhow::anyhow!("rename {} to {file}: {e}", tmp.display()))?;
                    eprintln!(
                        "exported {} to {file} ({})",
                        names.join(", "),
                        human_size(total as i64)
                    );
                }
                (Ok(()), None) => {}
            }
        }
        ImagesCmd::Mount {
            image,
            target,
            snapshotter,
            rw,
        } => crate::mount::mount(conn, &image, &target, &snapshotter, rw).await?,
        ImagesCmd::Unmount {
            target,
            snapshotter,
        } => crate::mount::unmount(conn, &target, &snapshotter).await?,
        ImagesCmd::Check {
            filters,
            snapshotter,
        } => crate::check::check(conn, fmt, filters, &snapshotter).await?,
        ImagesCmd::Inspect { name } => crate::check::inspect(conn, &name).await?,
        ImagesCmd::Convert {
            source,
            target,
            oci,
            layer_compression,
            platform,
        } => {
            crate::check::convert(conn, &source, &target, oci, layer_compression, platform).await?
        }
        ImagesCmd::Rm { names, sync } => {
            let mut removals = Removals::new("image");
            for (i, name) in names.iter().enumerate() {
                let last = i + 1 == names.len();
                let result = c
                    .delete(DeleteImageRequest {
                        name: name.clone(),
                        sync: sync && last,
                        target: None,
                    })
                    .await;
                removals.done(
                    name,
                    result
                        .map(|_| ())
                        .map_err(|s| rpc_error(&format!("remove image {name:?}"), s)),
                );
            }
            removals.finish()?;
        }
    }
    Ok(())
}
