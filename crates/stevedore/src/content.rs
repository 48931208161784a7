//! `stevedore content ...` and `stevedore leases ...`.

use crate::client::{rpc_error, Conn};
use crate::output::{human_size, labels_cell, print_json, Format, Removals, Table};
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use stevedore_api::services::content::{self, content_client::ContentClient, WriteAction};
use stevedore_api::services::leases::{self, leases_client::LeasesClient};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Subcommand)]
pub enum ContentCmd {
    /// List blobs (filters: digest==..., size==..., labels.k==v).
    #[command(alias = "list")]
    Ls {
        /// Print only digests.
        #[arg(long, short = 'q')]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Write a blob's bytes to stdout.
    Get { digest: String },
    /// Store stdin as a blob under an ingest reference (resumes an interrupted one).
    Ingest {
        reference: String,
        #[arg(long)]
        expected_digest: Option<String>,
        #[arg(long)]
        expected_size: Option<i64>,
        /// Labels k=v for the committed blob.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Remove blobs from this namespace (the bytes go at the next GC).
    #[command(alias = "remove", alias = "delete", alias = "del")]
    Rm {
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Set labels k=v on a blob; k= removes a label.
    Label { digest: String, labels: Vec<String> },
    /// Show active ingests (optionally matching a regexp).
    Active { regexp: Option<String> },
}

#[derive(Subcommand)]
pub enum LeasesCmd {
    /// Create a lease (labels k=v).
    Create {
        #[arg(long)]
        id: Option<String>,
        /// Expiry, e.g. 24h, 90m; 0 never expires.
        #[arg(long, short = 'x', default_value = "24h")]
        expires: String,
        labels: Vec<String>,
    },
    /// List leases (filters: id==..., labels.k==v).
    #[command(alias = "list")]
    Ls {
        #[arg(long, short = 'q')]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Remove leases.
    #[command(alias = "remove", alias = "delete")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Collect garbage before returning.
        #[arg(long)]
        sync: bool,
    },
}

/// `3 seconds ago`-style ages.
pub fn human_age(t: Option<prost_types::Timestamp>) -> String {
    let Some(t) = t.and_then(|t| SystemTime::try_from(t).ok()) else {
        return "-".into();
    };
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let (n, unit) = match s {
        0..=59 => (s, "second"),
        60..=3599 => (s / 60, "minute"),
        3600..=86_399 => (s / 3600, "hour"),
        _ => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn rfc3339(t: Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

fn parse_labels(items: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in items {
        let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
        if k.is_empty() {
            bail!("invalid label {item:?}: empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

pub async fn run_content(conn: &Conn, fmt: Format, cmd: ContentCmd) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = ContentClient::with_interceptor(ch, ns)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    match cmd {
        ContentCmd::Ls { quiet, filters } => {
            let mut stream = c
                .list(content::ListContentRequest { filters })
                .await
                .map_err(|s| rpc_error("list content", s))?
                .into_inner();
            let mut infos = Vec::new();
            while let Some(r) = stream
                .message()
                .await
                .map_err(|s| rpc_error("list content", s))?
            {
                infos.extend(r.info);
            }
            infos.sort_by(|a, b| a.digest.cmp(&b.digest));
            if fmt == Format::Json {
                let v: Vec<_> = infos
                    .iter()
                    .map(|i| {
                        json!({"digest": i.digest, "size": i.size,
                               "created_at": rfc3339(i.created_at), "updated_at": rfc3339(i.updated_at),
                               "labels": i.labels})
                    })
                    .collect();
                print_json(&json!(v));
            } else if quiet {
                for i in &infos {
                    println!("{}", i.digest);
                }
            } else {
                let mut t = Table::new(&["DIGEST", "SIZE", "AGE", "LABELS"]);
                for i in &infos {
                    t.row(vec![
                        i.digest.clone(),
                        human_size(i.size),
                        human_age(i.created_at),
                        labels_cell(&i.labels),
                    ]);
                }
                t.print();
            }
        }
        ContentCmd::Get { digest } => {
            let mut stream = c
                .read(content::ReadContentRequest {
                    digest: digest.clone(),
                    offset: 0,
                    size: 0,
                })
                .await
                .map_err(|s| rpc_error(&format!("read content {digest}"), s))?
                .into_inner();
            let mut out = tokio::io::stdout();
            while let Some(r) = stream
                .message()
                .await
                .map_err(|s| rpc_error(&format!("read content {digest}"), s))?
            {
                out.write_all(&r.data).await.context("write to stdout")?;
            }
            out.flush().await.context("write to stdout")?;
        }
        ContentCmd::Ingest {
            reference,
            expected_digest,
            expected_size,
            labels,
        } => {
            let labels = parse_labels(&labels)?;
            let d = ingest(
                &mut c,
                &reference,
                expected_digest.unwrap_or_default(),
                expected_size.unwrap_or(0),
                labels,
            )
            .await?;
            match fmt {
                Format::Json => print_json(&json!({"ref": reference, "digest": d})),
                Format::Table => println!("{d}"),
            }
        }
        ContentCmd::Rm { digests } => {
            let mut removals = Removals::new("blob");
            for d in digests {
                let result = c
                    .delete(content::DeleteContentRequest { digest: d.clone() })
                    .await;
                removals.done(
                    &d,
                    result
                        .map(|_| ())
                        .map_err(|s| rpc_error(&format!("remove content {d}"), s)),
                );
            }
            removals.finish()?;
        }
        ContentCmd::Label { digest, labels } => {
            let labels = parse_labels(&labels)?;
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            let info = c
                .update(content::UpdateRequest {
                    info: Some(content::Info {
                        digest: digest.clone(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                })
                .await
                .map_err(|s| rpc_error(&format!("label content {digest}"), s))?
                .into_inner()
                .info
                .unwrap_or_default();
            match fmt {
                Format::Json => print_json(&json!({"digest": info.digest, "labels": info.labels})),
                Format::Table => println!("{}", labels_cell(&info.labels)),
            }
        }
        ContentCmd::Active { regexp } => {
            let filters = regexp
                .map(|r| vec![format!("ref~={}", quote_regexp(&r))])
                .unwrap_or_default();
            let mut list = c
                .list_statuses(content::ListStatusesRequest { filters })
                .await
                .map_err(|s| rpc_error("list active ingests", s))?
                .into_inner()
                .statuses;
            list.sort_by(|a, b| a.r#ref.cmp(&b.r#ref));
            if fmt == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|s| {
                        json!({"ref": s.r#ref, "offset": s.offset, "total": s.total,
                               "expected": s.expected, "started_at": rfc3339(s.started_at),
                               "updated_at": rfc3339(s.updated_at)})
                    })
                    .collect();
                print_json(&json!(v));
            } else {
                let mut t = Table::new(&["REF", "SIZE", "TOTAL", "STARTED", "UPDATED"]);
                for s in &list {
                    t.row(vec![
                        s.r#ref.clone(),
                        human_size(s.offset),
                        if s.total > 0 {
                            human_size(s.total)
                        } else {
                            "-".into()
                        },
                        human_age(s.started_at),
                        human_age(s.updated_at),
                    ]);
                }
                t.print();
            }
        }
    }
    Ok(())
}

/// Quote a regexp for the filter grammar.
fn quote_regexp(r: &str) -> String {
    format!("\"{}\"", r.replace('\\', "\\\\").replace('"', "\\\""))
}

type Chan = tonic::transport::Channel;
type Client = ContentClient<
    tonic::service::interceptor::InterceptedService<Chan, crate::client::WithNamespace>,
>;

/// Stream stdin into the content store through the Write API: STAT to learn
/// the resume offset, WRITE in 1 MiB chunks, COMMIT with the expectations.
async fn ingest(
    c: &mut Client,
    reference: &str,
    expected: String,
    total: i64,
    labels: HashMap<String, String>,
) -> Result<String> {
    let what = format!("ingest {reference:?}");
    let (tx, rx) = mpsc::channel::<content::WriteContentRequest>(4);
    tx.send(content::WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total,
        expected: expected.clone(),
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("{what}: stream closed"))?;
    let mut resp = match c.write(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(expected),
        Err(s) => return Err(rpc_error(&what, s)),
    };
    let recv = |r: Result<Option<content::WriteContentResponse>, tonic::Status>| match r {
        Ok(Some(m)) => Ok(Some(m)),
        Ok(None) => Err(anyhow!("{what}: stream ended early")),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(None),
        Err(s) => Err(rpc_error(&what, s)),
    };
    let Some(first) = recv(resp.message().await)? else {
        return Ok(expected);
    };
    let offset = first.offset;
    if offset > 0 {
        eprintln!("resuming {reference} at {}", human_size(offset));
    }
    // stdin is read on its own thread, up to INGEST_AHEAD chunks ahead, and
    // as many WRITEs are in flight: the daemon hashes and stores one chunk
    // while the next arrives, instead of a round trip per MiB
    let (chunks_tx, mut chunks) = mpsc::channel::<std::io::Result<Vec<u8>>>(INGEST_AHEAD);
    std::thread::spawn(move || read_chunks(offset, chunks_tx));
    let mut sent = offset;
    let mut in_flight = 0;
    let mut reading = true;
    loop {
        while reading && in_flight < INGEST_AHEAD {
            let data = match chunks.recv().await {
                Some(Ok(d)) => d,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    bail!("{what}: stdin ended before the resume offset {offset}")
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e).context("read stdin")),
                None => bail!("{what}: the stdin reader stopped"),
            };
            let n = data.len();
            // a short chunk is the last: it commits
            let last = n < INGEST_CHUNK;
            let req = content::WriteContentRequest {
                action: if last {
                    WriteAction::Commit
                } else {
                    WriteAction::Write
                } as i32,
                offset: sent,
                data: data.into(),
                total,
                expected: if last {
                    expected.clone()
                } else {
                    String::new()
                },
                labels: if last { labels.clone() } else { HashMap::new() },
                ..Default::default()
            };
            tx.send(req)
                .await
                .map_err(|_| anyhow!("{what}: stream closed"))?;
            sent += n as i64;
            in_flight += 1;
            reading = !last;
        }
        let Some(r) = recv(resp.message().await)? else {
            return Ok(expected);
        };
        in_flight -= 1;
        if !reading && in_flight == 0 {
            drop(tx);
            return Ok(r.digest);
        }
    }
}

/// Bytes per WRITE message of an ingest, and how many are read ahead and in
/// flight at once.
const INGEST_CHUNK: usize = 1 << 20;
const INGEST_AHEAD: usize = 4;

/// Read stdin for an ingest on a thread of its own: skip the `skip` bytes
/// the store already has, then send full `INGEST_CHUNK`s and a last short
/// one (possibly empty). Ends when the receiver goes away.
fn read_chunks(skip: i64, out: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    use std::io::Read;
    let mut stdin = std::io::stdin().lock();
    let mut left = skip.max(0) as u64;
    if left > 0 {
        match std::io::copy(&mut (&mut stdin).take(left), &mut std::io::sink()) {
            Ok(n) => left -= n,
            Err(e) => {
                let _ = out.blocking_send(Err(e));
                return;
            }
        }
        if left > 0 {
            let _ = out.blocking_send(Err(std::io::ErrorKind::UnexpectedEof.into()));
            return;
        }
    }
    loop {
        let mut buf = vec![0u8; INGEST_CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match stdin.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = out.blocking_send(Err(e));
                    return;
                }
            }
        }
        buf.truncate(filled);
        let last = filled < INGEST_CHUNK;
        if out.blocking_send(Ok(buf)).is_err() || last {
            return;
        }
    }
}

pub async fn run_leases(conn: &Conn, fmt: Format, cmd: LeasesCmd) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = LeasesClient::with_interceptor(ch, ns);
    match cmd {
        LeasesCmd::Create {
            id,
            expires,
            labels,
        } => {
            let mut labels = parse_labels(&labels)?;
            let exp = humantime::parse_duration(&expires)
                .with_context(|| format!("invalid --expires {expires:?}"))?;
            if !exp.is_zero() {
                let at = SystemTime::now() + exp;
                labels.insert(
                    "containerd.io/gc.expire".into(),
                    humantime::format_rfc3339_seconds(at).to_string(),
                );
            }
            let l = c
                .create(leases::CreateRequest {
                    id: id.unwrap_or_default(),
                    labels,
                })
                .await
                .map_err(|s| rpc_error("create lease", s))?
                .into_inner()
                .lease
                .unwrap_or_default();
            match fmt {
                Format::Json => print_json(&json!({"id": l.id, "labels": l.labels})),
                Format::Table => println!("{}", l.id),
            }
        }
        LeasesCmd::Ls { quiet, filters } => {
            let list = c
                .list(leases::ListRequest { filters })
                .await
                .map_err(|s| rpc_error("list leases", s))?
                .into_inner()
                .leases;
            if fmt == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|l| json!({"id": l.id, "created_at": rfc3339(l.created_at), "labels": l.labels}))
                    .collect();
                print_json(&json!(v));
            } else if quiet {
                for l in &list {
                    println!("{}", l.id);
                }
            } else {
                let mut t = Table::new(&["ID", "CREATED", "LABELS"]);
                for l in &list {
                    t.row(vec![
                        l.id.clone(),
                        human_age(l.created_at),
                        labels_cell(&l.labels),
                    ]);
                }
                t.print();
            }
        }
        LeasesCmd::Rm { ids, sync } => {
            let mut removals = Removals::new("lease");
            for id in ids {
                let result = c
                    .delete(leases::DeleteRequest {
                        id: id.clone(),
                        sync,
                    })
                    .await;
                removals.done(
                    &id,
                    result
                        .map(|_| ())
                        .map_err(|s| rpc_error(&format!("remove lease {id:?}"), s)),
                );
            }
            removals.finish()?;
        }
    }
    Ok(())
}
