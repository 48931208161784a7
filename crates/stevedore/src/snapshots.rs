//! `stevedore snapshots ...`: ctr's snapshot commands, with tables or JSON.

use crate::client::{rpc_error, Conn};
use crate::output::{labels_cell, print_json, Format, Removals, Table};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use stevedore_api::services::snapshots as pb;
use stevedore_api::services::snapshots::snapshots_client::SnapshotsClient;

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Snapshotter to use (overlayfs, native, btrfs).
    #[arg(
        long,
        short = 's',
        env = "STEVEDORE_SNAPSHOTTER",
        default_value = "overlayfs"
    )]
    snapshotter: String,
    #[command(subcommand)]
    cmd: SnapshotsCmd,
}

#[derive(Subcommand)]
enum SnapshotsCmd {
    /// List snapshots (filters: kind==committed, parent==x, labels."k"==v).
    #[command(alias = "list")]
    Ls { filters: Vec<String> },
    /// Show snapshots as parent/child trees.
    Tree,
    /// Disk usage of snapshots (all when no key is given).
    Usage { keys: Vec<String> },
    /// Create an active snapshot on an optional parent.
    Prepare {
        key: String,
        parent: Option<String>,
        /// Print the mount command for TARGET.
        #[arg(long)]
        target: Option<String>,
        /// Labels k=v.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Create a read-only view of a committed snapshot.
    View {
        key: String,
        parent: String,
        /// Print the mount command for TARGET.
        #[arg(long)]
        target: Option<String>,
    },
    /// Print the mount command of a snapshot for TARGET.
    Mounts { target: String, key: String },
    /// Commit an active snapshot under a name.
    Commit {
        name: String,
        key: String,
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove snapshots (they must have no children).
    #[command(alias = "remove", alias = "delete")]
    Rm {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn kind_name(k: i32) -> &'static str {
    match pb::Kind::try_from(k).unwrap_or(pb::Kind::Unknown) {
        pb::Kind::View => "View",
        pb::Kind::Active => "Active",
        pb::Kind::Committed => "Committed",
        pb::Kind::Unknown => "Unknown",
    }
}

fn labels_of(items: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("invalid label {item:?}: expected key=value");
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn human(bytes: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn print_mounts(target: &str, mounts: &[stevedore_api::types::Mount]) {
    for m in mounts {
        println!(
            "mount -t {} {} {} -o {}",
            m.r#type,
            m.source,
            target,
            m.options.join(",")
        );
    }
}

async fn list_all(
    c: &mut SnapshotsClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            crate::client::WithNamespace,
        >,
    >,
    snapshotter: &str,
    filters: Vec<String>,
) -> Result<Vec<pb::Info>> {
    let mut stream = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters,
        })
        .await
        .map_err(|s| rpc_error("list snapshots", s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream
        .message()
        .await
        .map_err(|s| rpc_error("list snapshots", s))?
    {
        out.extend(batch.info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub async fn run(conn: &Conn, fmt: Format, args: SnapshotsArgs) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = SnapshotsClient::with_interceptor(ch, ns);
    let sn = args.snapshotter;
    match args.cmd {
        SnapshotsCmd::Ls { filters } => {
            let list = list_all(&mut c, &sn, filters).await?;
            if fmt == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|i| {
                        json!({"key": i.name, "parent": i.parent, "kind": kind_name(i.kind).to_lowercase(), "labels": i.labels})
                    })
                    .collect();
                print_json(&json!(v));
            } else {
                let mut t = Table::new(&["KEY", "PARENT", "KIND", "LABELS"]);
                for i in &list {
                    t.row(vec![
                        i.name.clone(),
                        i.parent.clone(),
                        kind_name(i.kind).into(),
                        labels_cell(&i.labels),
                    ]);
                }
                t.print();
            }
        }
        SnapshotsCmd::Tree => {
            let list = list_all(&mut c, &sn, vec![]).await?;
            let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let names: std::collections::HashSet<&str> =
                list.iter().map(|i| i.name.as_str()).collect();
            let mut roots = Vec::new();
            for i in &list {
                if i.parent.is_empty() || !names.contains(i.parent.as_str()) {
                    roots.push(i.name.clone());
                } else {
                    children
                        .entry(i.parent.clone())
                        .or_default()
                        .push(i.name.clone());
                }
            }
            if fmt == Format::Json {
                fn node(n: &str, ch: &BTreeMap<String, Vec<String>>) -> serde_json::Value {
                    let kids: Vec<_> = ch
                        .get(n)
                        .map(|v| v.iter().map(|c| node(c, ch)).collect())
                        .unwrap_or_default();
                    json!({"name": n, "children": kids})
                }
                let v: Vec<_> = roots.iter().map(|r| node(r, &children)).collect();
                print_json(&json!(v));
            } else {
                fn show(n: &str, depth: usize, ch: &BTreeMap<String, Vec<String>>) {
                    println!("{}{n}", " ".repeat(depth * 2));
                    for c in ch.get(n).into_iter().flatten() {
                        show(c, depth + 1, ch);
                    }
                }
                for r in &roots {
                    show(r, 0, &children);
                }
            }
        }
        SnapshotsCmd::Usage { keys } => {
            let keys = if keys.is_empty() {
                list_all(&mut c, &sn, vec![])
                    .await?
                    .into_iter()
                    .map(|i| i.name)
                    .collect()
            } else {
                keys
            };
            let mut rows = Vec::new();
            for k in keys {
                let u = c
                    .usage(pb::UsageRequest {
                        snapshotter: sn.clone(),
                        key: k.clone(),
                    })
                    .await
                    .map_err(|s| rpc_error(&format!("usage of snapshot {k:?}"), s))?
                    .into_inner();
                rows.push((k, u.size, u.inodes));
            }
            if fmt == Format::Json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(k, s, i)| json!({"key": k, "size": s, "inodes": i}))
                    .collect();
                print_json(&json!(v));
            } else {
                let mut t = Table::new(&["KEY", "SIZE", "INODES"]);
                for (k, s, i) in rows {
                    t.row(vec![k, human(s), i.to_string()]);
                }
                t.print();
            }
        }
        SnapshotsCmd::Prepare {
            key,
            parent,
            target,
            labels,
        } => {
            let mounts = c
                .prepare(pb::PrepareSnapshotRequest {
                    snapshotter: sn,
                    key: key.clone(),
                    parent: parent.unwrap_or_default(),
                    labels: labels_of(&labels)?,
                })
                .await
                .map_err(|s| rpc_error(&format!("prepare snapshot {key:?}"), s))?
                .into_inner()
                .mounts;
            if let Some(t) = target {
                print_mounts(&t, &mounts);
            }
        }
        SnapshotsCmd::View {
            key,
            parent,
            target,
        } => {
            let mounts = c
                .view(pb::ViewSnapshotRequest {
                    snapshotter: sn,
                    key: key.clone(),
                    parent,
                    labels: HashMap::new(),
                })
                .await
                .map_err(|s| rpc_error(&format!("view snapshot {key:?}"), s))?
                .into_inner()
                .mounts;
            if let Some(t) = target {
                print_mounts(&t, &mounts);
            }
        }
        SnapshotsCmd::Mounts { target, key } => {
            let mounts = c
                .mounts(pb::MountsRequest {
                    snapshotter: sn,
                    key: key.clone(),
                })
                .await
                .map_err(|s| rpc_error(&format!("mounts of snapshot {key:?}"), s))?
                .into_inner()
                .mounts;
            if fmt == Format::Json {
                let v: Vec<_> = mounts
                    .iter()
                    .map(|m| json!({"type": m.r#type, "source": m.source, "options": m.options}))
                    .collect();
                print_json(&json!(v));
            } else {
                print_mounts(&target, &mounts);
            }
        }
        SnapshotsCmd::Commit { name, key, labels } => {
            c.commit(pb::CommitSnapshotRequest {
                snapshotter: sn,
                name: name.clone(),
                key: key.clone(),
                labels: labels_of(&labels)?,
            })
            .await
            .map_err(|s| rpc_error(&format!("commit snapshot {key:?} as {name:?}"), s))?;
        }
        SnapshotsCmd::Rm { keys } => {
            let mut removals = Removals::new("snapshot");
            for key in keys {
                let result = c
                    .remove(pb::RemoveSnapshotRequest {
                        snapshotter: sn.clone(),
                        key: key.clone(),
                    })
                    .await;
                removals.done(
                    &key,
                    result
                        .map(|_| ())
                        .map_err(|s| rpc_error(&format!("remove snapshot {key:?}"), s)),
                );
            }
            removals.finish()?;
        }
    }
    Ok(())
}
