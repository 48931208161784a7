//! `stevedore images ...`: image records.

use crate::client::{rpc_error, Conn};
use crate::output::{labels_cell, print_json, Format, Table};
use anyhow::{bail, Result};
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

/// A byte count for people: 1.5 MiB.
pub fn human_size(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
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
                    })
                    .await;
                match res {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::AlreadyExists && force => {
                        c.delete(DeleteImageRequest {
                            name: t.clone(),
                            sync: false,
                        })
                        .await
                        .map_err(|s| rpc_error(&format!("replace image {t:?}"), s))?;
                        c.create(CreateImageRequest { image: Some(img) })
                            .await
                            .map_err(|s| rpc_error(&format!("tag image {t:?}"), s))?;
                    }
                    Err(s) => return Err(rpc_error(&format!("tag image {t:?}"), s)),
                }
                println!("{t}");
            }
        }
        ImagesCmd::Rm { names, sync } => {
            let mut failed = 0;
            for (i, name) in names.iter().enumerate() {
                let last = i + 1 == names.len();
                match c
                    .delete(DeleteImageRequest {
                        name: name.clone(),
                        sync: sync && last,
                    })
                    .await
                {
                    Ok(_) => println!("{name}"),
                    Err(s) => {
                        failed += 1;
                        eprintln!(
                            "stevedore: {:#}",
                            rpc_error(&format!("remove image {name:?}"), s)
                        );
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} image(s) could not be removed");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
