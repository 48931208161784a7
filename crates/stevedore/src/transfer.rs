//! `stevedore pull` and `stevedore push`: the daemon does the transfer; the
//! CLI shows its progress (live bars on a terminal, plain lines otherwise).

use crate::client::{rpc_error, Conn};
use crate::output::{human_size, print_json, Format};
use anyhow::{bail, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::HashMap;
use std::io::IsTerminal;
use stevedore_api::services::stevedore_transfer::{
    transfer_client::TransferClient, Progress, PullRequest, PushRequest, RegistryOptions,
    TransferProgress,
};

#[derive(Args)]
pub struct RegistryArgs {
    /// Use plain HTTP for the registry.
    #[arg(long)]
    plain_http: bool,
    /// containerd-style hosts directory (`<dir>/<host>/hosts.toml`).
    #[arg(long)]
    hosts_dir: Option<String>,
    /// Registry credentials as user[:password] (password from STEVEDORE_PASSWORD otherwise).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Parallel layer downloads (0: the daemon's default).
    #[arg(long, default_value_t = 0)]
    max_concurrent_downloads: i32,
}

impl RegistryArgs {
    fn options(&self) -> RegistryOptions {
        let (username, password) = match &self.user {
            None => (String::new(), String::new()),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (u.to_string(), p.to_string()),
                None => (
                    u.clone(),
                    std::env::var("STEVEDORE_PASSWORD").unwrap_or_default(),
                ),
            },
        };
        RegistryOptions {
            plain_http: self.plain_http,
            hosts_dir: self.hosts_dir.clone().unwrap_or_default(),
            username,
            password,
            max_concurrent_downloads: self.max_concurrent_downloads,
        }
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// Image reference, e.g. 127.0.0.1:5000/busybox:latest.
    reference: String,
    /// Platform(s) to pull (os/arch[/variant]); default: this machine's.
    #[arg(long)]
    platform: Vec<String>,
    /// Pull every platform of a multi-platform image.
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Do not unpack into a snapshotter.
    #[arg(long)]
    no_unpack: bool,
    /// Snapshotter to unpack into.
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Print only the image name when done.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(Args)]
pub struct PushArgs {
    /// Remote reference (or the local image name when pushing under its name).
    reference: String,
    /// Local image to push, when different from the reference.
    local: Option<String>,
    #[arg(long)]
    platform: Vec<String>,
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Renders progress items as bars (terminal) or lines (pipes, logs).
struct Display {
    quiet: bool,
    live: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    last_status: HashMap<String, String>,
}

fn short(id: &str) -> String {
    let hex = id.split(':').nth(1).unwrap_or(id);
    hex.chars().take(12).collect()
}

impl Display {
    fn new(quiet: bool) -> Self {
        let live = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Display {
            quiet,
            live,
            bars: HashMap::new(),
            last_status: HashMap::new(),
        }
    }

    fn update(&mut self, p: &Progress) {
        if self.quiet {
            return;
        }
        let label = format!("{:<8} {}", p.kind, short(&p.id));
        if let Some(mp) = &self.live {
            let bar = self.bars.entry(p.id.clone()).or_insert_with(|| {
                let b = mp.add(ProgressBar::new(p.total.max(0) as u64));
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix} {msg:<12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(label.clone());
                b
            });
            if p.total > 0 {
                bar.set_length(p.total as u64);
            }
            bar.set_position(p.offset.max(0) as u64);
            bar.set_message(p.status.clone());
            if matches!(p.status.as_str(), "done" | "exists" | "error") {
                bar.finish();
            }
        } else if self.last_status.get(&p.id) != Some(&p.status) {
            self.last_status.insert(p.id.clone(), p.status.clone());
            let size = if p.total > 0 {
                format!(" ({})", human_size(p.total))
            } else {
                String::new()
            };
            let msg = if p.message.is_empty() {
                String::new()
            } else {
                format!(": {}", p.message)
            };
            eprintln!("{label} {}{size}{msg}", p.status);
        }
    }
}

pub(crate) async fn follow(
    mut stream: tonic::Streaming<TransferProgress>,
    what: &str,
    quiet: bool,
    fmt: Format,
) -> Result<TransferProgress> {
    let mut display = Display::new(quiet || fmt == Format::Json);
    let started = std::time::Instant::now();
    while let Some(msg) = stream.message().await.map_err(|s| rpc_error(what, s))? {
        for p in &msg.items {
            display.update(p);
        }
        if msg.done {
            if let Some(mp) = &display.live {
                let _ = mp.clear();
            }
            let elapsed = started.elapsed();
            match fmt {
                Format::Json => {
                    let t = msg.target.clone().unwrap_or_default();
                    print_json(&json!({"name": msg.image_name, "digest": t.digest,
                        "mediaType": t.media_type, "size": t.size,
                        "seconds": elapsed.as_secs_f64()}))
                }
                Format::Table if quiet => println!("{}", msg.image_name),
                Format::Table => {
                    let t = msg.target.clone().unwrap_or_default();
                    println!(
                        "{} {} in {:.2}s",
                        msg.image_name,
                        t.digest,
                        elapsed.as_secs_f64()
                    );
                }
            }
            return Ok(msg);
        }
    }
    bail!("{what}: the daemon ended the transfer without finishing it")
}

pub async fn pull(conn: &Conn, fmt: Format, a: PullArgs) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let stream = TransferClient::with_interceptor(ch, ns)
        .pull(PullRequest {
            reference: a.reference.clone(),
            platforms: a.platform.clone(),
            all_platforms: a.all_platforms,
            registry: Some(a.registry.options()),
            unpack: !a.no_unpack,
            snapshotter: a.snapshotter.clone(),
            labels: Default::default(),
        })
        .await
        .map_err(|s| rpc_error(&format!("pull {}", a.reference), s))?
        .into_inner();
    follow(stream, &format!("pull {}", a.reference), a.quiet, fmt).await?;
    Ok(())
}

pub async fn push(conn: &Conn, fmt: Format, a: PushArgs) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let source = a.local.clone().unwrap_or_else(|| a.reference.clone());
    let stream = TransferClient::with_interceptor(ch, ns)
        .push(PushRequest {
            source,
            reference: a.reference.clone(),
            platforms: a.platform.clone(),
            all_platforms: a.all_platforms,
            registry: Some(a.registry.options()),
        })
        .await
        .map_err(|s| rpc_error(&format!("push {}", a.reference), s))?
        .into_inner();
    follow(stream, &format!("push {}", a.reference), a.quiet, fmt).await?;
    Ok(())
}
