//! `stevedore images check|inspect|convert`.

use crate::client::{rpc_error, Conn};
use crate::mount::{read_blob, top_chain_id};
use crate::output::{human_size, print_json, Format, Table};
use anyhow::{Context, Result};
use serde_json::json;
use stevedore_api::services::content::{content_client::ContentClient, InfoRequest};
use stevedore_api::services::images::{
    images_client::ImagesClient, GetImageRequest, Image, ListImagesRequest,
};
use stevedore_api::services::snapshots::{snapshots_client::SnapshotsClient, StatSnapshotRequest};
use stevedore_api::types::Descriptor;
use stevedore_images::mediatypes;
use stevedore_images::spec::{Index, Manifest};
use stevedore_types::platform::MatchPlatform;

/// What `check` found for one image.
struct Status {
    required: usize,
    available: usize,
    size_total: i64,
    size_present: i64,
    unpacked: bool,
}

async fn present(conn: &Conn, digest: &str) -> Result<bool> {
    let (ch, ns) = conn.svc()?;
    match ContentClient::with_interceptor(ch, ns)
        .info(InfoRequest {
            digest: digest.to_string(),
        })
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(rpc_error(&format!("content info {digest}"), s)),
    }
}

/// Walk the image for this host's platform as containerd's `images.Check` does.
async fn check_image(conn: &Conn, img: &Image, snapshotter: &str) -> Result<Status> {
    let target = img.target.clone().unwrap_or_default();
    let mut st = Status {
        required: 0,
        available: 0,
        size_total: 0,
        size_present: 0,
        unpacked: false,
    };
    let mut todo: Vec<Descriptor> = vec![target];
    let matcher = stevedore_types::platform::default_matcher();
    while let Some(d) = todo.pop() {
        st.required += 1;
        st.size_total += d.size;
        if !present(conn, &d.digest).await? {
            continue;
        }
        st.available += 1;
        st.size_present += d.size;
        if mediatypes::is_index_type(&d.media_type) {
            let index: Index = serde_json::from_slice(&read_blob(conn, &d.digest).await?)
                .context("parse index")?;
            let best = index
                .manifests
                .iter()
                .filter_map(|m| match &m.platform {
                    Some(p) => matcher.rank(p).map(|r| (r, m)),
                    None => Some((usize::MAX, m)),
                })
                .min_by_key(|(r, _)| *r);
            if let Some((_, m)) = best {
                todo.push(Descriptor {
                    media_type: m.media_type.clone(),
                    digest: m.digest.to_string(),
                    size: m.size,
                    annotations: Default::default(),
                });
            }
        } else if mediatypes::is_manifest_type(&d.media_type) {
            let m: Manifest = serde_json::from_slice(&read_blob(conn, &d.digest).await?)
                .context("parse manifest")?;
            for c in std::iter::once(&m.config).chain(m.layers.iter()) {
                todo.push(Descriptor {
                    media_type: c.media_type.clone(),
                    digest: c.digest.to_string(),
                    size: c.size,
                    annotations: Default::default(),
                });
            }
        }
    }
    if st.available == st.required {
        if let Ok(chain) = top_chain_id(conn, &img.name).await {
            let (ch, ns) = conn.svc()?;
            st.unpacked = SnapshotsClient::with_interceptor(ch, ns)
                .stat(StatSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: chain,
                })
                .await
                .is_ok();
        }
    }
    Ok(st)
}

pub async fn check(
    conn: &Conn,
    fmt: Format,
    filters: Vec<String>,
    snapshotter: &str,
) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut list = ImagesClient::with_interceptor(ch, ns)
        .list(ListImagesRequest { filters })
        .await
        .map_err(|s| rpc_error("list images", s))?
        .into_inner()
        .images;
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::new();
    for img in &list {
        let st = check_image(conn, img, snapshotter).await?;
        rows.push((img, st));
    }
    if fmt == Format::Json {
        let v: Vec<_> = rows
            .iter()
            .map(|(i, s)| {
                json!({"name": i.name, "complete": s.available == s.required,
                       "available": s.available, "required": s.required,
                       "size": s.size_present, "total": s.size_total, "unpacked": s.unpacked})
            })
            .collect();
        print_json(&json!(v));
        return Ok(());
    }
    let mut t = Table::new(&["REF", "STATUS", "SIZE", "UNPACKED"]);
    for (i, s) in &rows {
        let status = if s.available == s.required {
            "complete"
        } else {
            "incomplete"
        };
        t.row(vec![
            i.name.clone(),
            format!("{status} ({}/{})", s.available, s.required),
            format!(
                "{}/{}",
                human_size(s.size_present),
                human_size(s.size_total)
            ),
            s.unpacked.to_string(),
        ]);
    }
    t.print();
    Ok(())
}

pub async fn inspect(conn: &Conn, name: &str) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let img = ImagesClient::with_interceptor(ch, ns)
        .get(GetImageRequest {
            name: name.to_string(),
        })
        .await
        .map_err(|s| rpc_error(&format!("get image {name:?}"), s))?
        .into_inner()
        .image
        .unwrap_or_default();
    let target = img.target.clone().unwrap_or_default();
    let root: serde_json::Value = serde_json::from_slice(&read_blob(conn, &target.digest).await?)
        .context("parse the image's target")?;
    let mut out = json!({
        "name": img.name,
        "labels": img.labels,
        "target": {"mediaType": target.media_type, "digest": target.digest, "size": target.size},
    });
    if mediatypes::is_index_type(&target.media_type) {
        out["index"] = root;
    } else {
        if let Some(cfg) = root["config"]["digest"].as_str() {
            let config: serde_json::Value = serde_json::from_slice(&read_blob(conn, cfg).await?)
                .context("parse the image config")?;
            out["config"] = config;
        }
        out["manifest"] = root;
    }
    print_json(&out);
    Ok(())
}

pub async fn convert(
    conn: &Conn,
    source: &str,
    target: &str,
    oci: bool,
    layer_compression: Option<String>,
    platforms: Vec<String>,
) -> Result<()> {
    use stevedore_api::services::stevedore_transfer::{
        transfer_client::TransferClient, ConvertRequest,
    };
    let (ch, ns) = conn.svc()?;
    let r = TransferClient::with_interceptor(ch, ns)
        .convert(ConvertRequest {
            source: source.to_string(),
            target: target.to_string(),
            oci,
            layer_compression: layer_compression.unwrap_or_default(),
            platforms,
        })
        .await
        .map_err(|s| rpc_error(&format!("convert {source} to {target}"), s))?
        .into_inner();
    println!("{} {}", r.name, r.target.unwrap_or_default().digest);
    Ok(())
}
