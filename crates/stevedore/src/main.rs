//! stevedore: the command-line client of stevedored.

mod check;
mod client;
mod content;
mod docs;
mod fsck;
mod images;
mod mount;
mod output;
mod run;
mod snapshots;
mod tasks;
mod transfer;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use client::{rpc_error, Conn};
use output::{labels_cell, print_json, Format, Removals, Table};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use stevedore_api::services::{events, introspection, namespaces, version};

#[derive(Parser)]
#[command(
    name = "stevedore",
    version,
    about = "stevedore: a container runtime speaking containerd's API"
)]
struct Cli {
    /// stevedored's socket.
    #[arg(
        long,
        short = 'a',
        global = true,
        env = "STEVEDORE_ADDRESS",
        default_value = "/run/stevedore/stevedore.sock"
    )]
    address: PathBuf,
    /// Namespace to work in.
    #[arg(
        long,
        short = 'n',
        global = true,
        env = "STEVEDORE_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show client and daemon versions.
    Version,
    /// Inspect the daemon's plugins.
    #[command(subcommand)]
    Plugins(PluginsCmd),
    /// Manage namespaces.
    #[command(subcommand, alias = "ns")]
    Namespaces(NamespacesCmd),
    /// Manage images.
    #[command(subcommand, alias = "image", alias = "i")]
    Images(images::ImagesCmd),
    /// Pull an image from a registry (in the daemon) and unpack it.
    Pull(transfer::PullArgs),
    /// Push an image to a registry (from the daemon).
    Push(transfer::PushArgs),
    /// Manage snapshots (prepare, view, mounts, commit, ls, tree, usage, rm).
    #[command(alias = "snapshot")]
    Snapshots(snapshots::SnapshotsArgs),
    /// Create a container from an image and run it (exit code is the container's).
    Run(Box<run::RunArgs>),
    /// Manage container records.
    #[command(subcommand, alias = "c")]
    Containers(tasks::ContainersCmd),
    /// Manage tasks (running containers).
    #[command(subcommand, alias = "t")]
    Tasks(tasks::TasksCmd),
    /// Print events as they happen (filters: topic==/tasks/exit, namespace==x, ...).
    Events { filters: Vec<String> },
    /// Manage blobs in the content store.
    #[command(subcommand)]
    Content(content::ContentCmd),
    /// Manage leases (holds that keep content from garbage collection).
    #[command(subcommand)]
    Leases(content::LeasesCmd),
    /// Check a stopped daemon's root offline (blobs, ingests, records, snapshots); --repair fixes.
    Check(fsck::CheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (stevedore.1 and one per subcommand) into a directory.
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginsCmd {
    /// List plugins in init order (filters: type==..., id==...).
    #[command(alias = "list")]
    Ls {
        /// Show platforms, exports and errors of each plugin.
        #[arg(long, short = 'd')]
        detailed: bool,
        filters: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NamespacesCmd {
    /// Create a namespace, with optional labels k=v.
    Create { name: String, labels: Vec<String> },
    /// List namespaces.
    #[command(alias = "list")]
    Ls(QuietArg),
    /// Set labels (k=v) on a namespace; k= removes a label.
    Label { name: String, labels: Vec<String> },
    /// Remove namespaces (they must be empty).
    #[command(alias = "remove", alias = "delete")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args)]
struct QuietArg {
    /// Print only names.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // commands that need no daemon
    let offline = match &cli.cmd {
        Cmd::Check(a) => return fsck::run(a, cli.output),
        Cmd::Completion { shell } => Some(docs::completion(*shell)),
        Cmd::Man { dir } => Some(docs::man_pages(dir).map(|_| ())),
        _ => None,
    };
    if let Some(res) = offline {
        return match res {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stevedore: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start async runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stevedore: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_labels(items: &[String]) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("invalid label {item:?}: expected key=value");
        };
        if k.is_empty() {
            bail!("invalid label {item:?}: empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

async fn run(cli: Cli) -> Result<()> {
    let conn = Conn::open(&cli.address, &cli.namespace).await?;
    match cli.cmd {
        Cmd::Version => cmd_version(&conn, cli.output).await,
        Cmd::Plugins(PluginsCmd::Ls { detailed, filters }) => {
            cmd_plugins(&conn, cli.output, detailed, filters).await
        }
        Cmd::Namespaces(c) => cmd_namespaces(&conn, cli.output, c).await,
        Cmd::Images(c) => images::run(&conn, cli.output, c).await,
        Cmd::Pull(a) => transfer::pull(&conn, cli.output, a).await,
        Cmd::Push(a) => transfer::push(&conn, cli.output, a).await,
        Cmd::Events { filters } => cmd_events(&conn, cli.output, filters).await,
        Cmd::Content(c) => content::run_content(&conn, cli.output, c).await,
        Cmd::Leases(c) => content::run_leases(&conn, cli.output, c).await,
        Cmd::Snapshots(a) => snapshots::run(&conn, cli.output, a).await,
        Cmd::Run(a) => {
            let code = run::run(&conn, *a).await?;
            exit_with(code)
        }
        Cmd::Containers(c) => tasks::containers(&conn, cli.output, c).await,
        Cmd::Tasks(c) => tasks::tasks(&conn, cli.output, c).await,
        Cmd::Check(_) | Cmd::Completion { .. } | Cmd::Man { .. } => {
            bail!("this command works offline, not through the socket")
        }
    }
}

/// End the process with a container's exit code (after flushing output).
pub(crate) fn exit_with(code: u32) -> Result<()> {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code as i32)
}

async fn cmd_version(conn: &Conn, fmt: Format) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let v = version::version_client::VersionClient::with_interceptor(ch.clone(), ns.clone())
        .version(())
        .await
        .map_err(|s| rpc_error("get daemon version", s))?
        .into_inner();
    let uuid = introspection::introspection_client::IntrospectionClient::with_interceptor(ch, ns)
        .server(())
        .await
        .map_err(|s| rpc_error("get server info", s))?
        .into_inner()
        .uuid;
    let client = env!("CARGO_PKG_VERSION");
    match fmt {
        Format::Json => print_json(&json!({
            "client": {"version": client},
            "server": {"version": v.version, "revision": v.revision, "uuid": uuid},
        })),
        Format::Table => {
            println!("Client:\n  Version:  {client}\n");
            println!(
                "Server:\n  Version:  {}\n  Revision: {}\n  UUID:     {uuid}",
                v.version, v.revision
            );
        }
    }
    Ok(())
}

fn platform_str(p: &stevedore_api::types::Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if !p.variant.is_empty() {
        s.push('/');
        s.push_str(&p.variant);
    }
    s
}

fn plugin_status(p: &introspection::Plugin) -> &'static str {
    match &p.init_err {
        None => "ok",
        Some(e) if e.message.contains("skip plugin") => "skip",
        Some(_) => "error",
    }
}

async fn cmd_plugins(conn: &Conn, fmt: Format, detailed: bool, filters: Vec<String>) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let plugins =
        introspection::introspection_client::IntrospectionClient::with_interceptor(ch, ns)
            .plugins(introspection::PluginsRequest { filters })
            .await
            .map_err(|s| rpc_error("list plugins", s))?
            .into_inner()
            .plugins;
    if fmt == Format::Json {
        let v: Vec<_> = plugins
            .iter()
            .map(|p| {
                json!({
                    "type": p.r#type,
                    "id": p.id,
                    "platforms": p.platforms.iter().map(platform_str).collect::<Vec<_>>(),
                    "requires": p.requires,
                    "exports": p.exports,
                    "capabilities": p.capabilities,
                    "status": plugin_status(p),
                    "error": p.init_err.as_ref().map(|e| json!({
                        "code": format!("{:?}", tonic::Code::from(e.code)),
                        "message": e.message,
                    })),
                })
            })
            .collect();
        print_json(&json!(v));
        return Ok(());
    }
    if detailed {
        for (i, p) in plugins.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("Type:       {}", p.r#type);
            println!("ID:         {}", p.id);
            if !p.requires.is_empty() {
                println!("Requires:   {}", p.requires.join(", "));
            }
            if !p.platforms.is_empty() {
                let ps: Vec<String> = p.platforms.iter().map(platform_str).collect();
                println!("Platforms:  {}", ps.join(", "));
            }
            if !p.exports.is_empty() {
                println!("Exports:");
                let mut ex: Vec<_> = p.exports.iter().collect();
                ex.sort();
                for (k, v) in ex {
                    println!("            {k}  {v}");
                }
            }
            println!("Status:     {}", plugin_status(p));
            if let Some(e) = &p.init_err {
                println!("Error:");
                println!("            Code:     {:?}", tonic::Code::from(e.code));
                println!("            Message:  {}", e.message);
            }
        }
        return Ok(());
    }
    let mut t = Table::new(&["TYPE", "ID", "PLATFORMS", "STATUS"]);
    for p in &plugins {
        let platforms = if p.platforms.is_empty() {
            "-".to_string()
        } else {
            p.platforms
                .iter()
                .map(platform_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        t.row(vec![
            p.r#type.clone(),
            p.id.clone(),
            platforms,
            plugin_status(p).to_string(),
        ]);
    }
    t.print();
    Ok(())
}

async fn cmd_namespaces(conn: &Conn, fmt: Format, cmd: NamespacesCmd) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = namespaces::namespaces_client::NamespacesClient::with_interceptor(ch, ns);
    match cmd {
        NamespacesCmd::Create { name, labels } => {
            let labels = parse_labels(&labels)?;
            c.create(namespaces::CreateNamespaceRequest {
                namespace: Some(namespaces::Namespace {
                    name: name.clone(),
                    labels,
                }),
            })
            .await
            .map_err(|s| rpc_error(&format!("create namespace {name:?}"), s))?;
        }
        NamespacesCmd::Ls(q) => {
            let mut list = c
                .list(namespaces::ListNamespacesRequest::default())
                .await
                .map_err(|s| rpc_error("list namespaces", s))?
                .into_inner()
                .namespaces;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            if fmt == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|n| json!({"name": n.name, "labels": n.labels}))
                    .collect();
                print_json(&json!(v));
            } else if q.quiet {
                for n in &list {
                    println!("{}", n.name);
                }
            } else {
                let mut t = Table::new(&["NAME", "LABELS"]);
                for n in &list {
                    t.row(vec![n.name.clone(), labels_cell(&n.labels)]);
                }
                t.print();
            }
        }
        NamespacesCmd::Label { name, labels } => {
            let labels = parse_labels(&labels)?;
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            c.update(namespaces::UpdateNamespaceRequest {
                namespace: Some(namespaces::Namespace {
                    name: name.clone(),
                    labels,
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            })
            .await
            .map_err(|s| rpc_error(&format!("label namespace {name:?}"), s))?;
        }
        NamespacesCmd::Rm { names } => {
            let mut removals = Removals::new("namespace");
            for name in names {
                let result = c
                    .delete(namespaces::DeleteNamespaceRequest { name: name.clone() })
                    .await;
                removals.done(
                    &name,
                    result
                        .map(|_| ())
                        .map_err(|s| rpc_error(&format!("remove namespace {name:?}"), s)),
                );
            }
            removals.finish()?;
        }
    }
    Ok(())
}

/// A readable rendering of known event payloads (containerd's event
/// messages: namespaces, images, containers, content, snapshots, tasks,
/// sandboxes); anything else as its type URL and size.
fn event_json(any: &prost_types::Any) -> serde_json::Value {
    use stevedore_api::events::*;
    use stevedore_api::services::images::{ImageCreate, ImageDelete, ImageUpdate};
    use stevedore_api::typeurl::from_any;
    let ts = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok())
            .map(|t| humantime::format_rfc3339_nanos(t).to_string())
    };
    macro_rules! decode {
        ($($ty:ty => |$e:ident| $body:expr),* $(,)?) => {
            $(if let Some($e) = from_any::<$ty>(any) {
                return $body;
            })*
        };
    }
    decode!(
        NamespaceCreate => |e| json!({"name": e.name, "labels": e.labels}),
        NamespaceUpdate => |e| json!({"name": e.name, "labels": e.labels}),
        NamespaceDelete => |e| json!({"name": e.name}),
        ImageCreate => |e| json!({"name": e.name, "labels": e.labels}),
        ImageUpdate => |e| json!({"name": e.name, "labels": e.labels}),
        ImageDelete => |e| json!({"name": e.name}),
        ContainerCreate => |e| json!({"id": e.id, "image": e.image,
            "runtime": e.runtime.map(|r| r.name)}),
        ContainerUpdate => |e| json!({"id": e.id, "image": e.image, "labels": e.labels,
            "snapshot_key": e.snapshot_key}),
        ContainerDelete => |e| json!({"id": e.id}),
        ContentDelete => |e| json!({"digest": e.digest}),
        SnapshotPrepare => |e| json!({"key": e.key, "parent": e.parent,
            "snapshotter": e.snapshotter}),
        SnapshotCommit => |e| json!({"key": e.key, "name": e.name,
            "snapshotter": e.snapshotter}),
        SnapshotRemove => |e| json!({"key": e.key, "snapshotter": e.snapshotter}),
        ContentCreate => |e| json!({"digest": e.digest, "size": e.size}),
        TaskCreate => |e| json!({"container_id": e.container_id, "bundle": e.bundle,
            "pid": e.pid, "io": e.io.map(|io| json!({"stdin": io.stdin, "stdout": io.stdout,
                "stderr": io.stderr, "terminal": io.terminal}))}),
        TaskStart => |e| json!({"container_id": e.container_id, "pid": e.pid}),
        TaskDelete => |e| json!({"container_id": e.container_id, "id": e.id, "pid": e.pid,
            "exit_status": e.exit_status, "exited_at": ts(&e.exited_at)}),
        TaskExit => |e| json!({"container_id": e.container_id, "id": e.id, "pid": e.pid,
            "exit_status": e.exit_status, "exited_at": ts(&e.exited_at)}),
        TaskOom => |e| json!({"container_id": e.container_id}),
        TaskExecAdded => |e| json!({"container_id": e.container_id, "exec_id": e.exec_id}),
        TaskExecStarted => |e| json!({"container_id": e.container_id, "exec_id": e.exec_id,
            "pid": e.pid}),
        TaskPaused => |e| json!({"container_id": e.container_id}),
        TaskResumed => |e| json!({"container_id": e.container_id}),
        TaskCheckpointed => |e| json!({"container_id": e.container_id,
            "checkpoint": e.checkpoint}),
        SandboxCreate => |e| json!({"sandbox_id": e.sandbox_id}),
        SandboxStart => |e| json!({"sandbox_id": e.sandbox_id}),
        SandboxExit => |e| json!({"sandbox_id": e.sandbox_id, "exit_status": e.exit_status,
            "exited_at": ts(&e.exited_at)}),
    );
    json!({"type_url": any.type_url, "bytes": any.value.len()})
}

async fn cmd_events(conn: &Conn, fmt: Format, filters: Vec<String>) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut stream = events::events_client::EventsClient::with_interceptor(ch, ns)
        .subscribe(events::SubscribeRequest { filters })
        .await
        .map_err(|s| rpc_error("subscribe to events", s))?
        .into_inner();
    while let Some(env) = stream
        .message()
        .await
        .map_err(|s| rpc_error("receive event", s))?
    {
        let when = env
            .timestamp
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .map(|t| humantime::format_rfc3339_millis(t).to_string())
            .unwrap_or_default();
        let payload = env.event.as_ref().map(event_json).unwrap_or(json!(null));
        match fmt {
            Format::Json => println!(
                "{}",
                json!({"timestamp": when, "namespace": env.namespace, "topic": env.topic, "event": payload})
            ),
            Format::Table => println!("{when} {} {} {payload}", env.namespace, env.topic),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_decoded_into_their_fields() {
        use prost::Name;
        let any = |type_url: String, value: Vec<u8>| prost_types::Any { type_url, value };
        use prost::Message;
        let e = stevedore_api::events::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 3,
            exited_at: None,
        };
        let v = event_json(&any(
            stevedore_api::events::TaskExit::type_url(),
            e.encode_to_vec(),
        ));
        assert_eq!(v["container_id"], "c1");
        assert_eq!(v["exit_status"], 3);
        let e = stevedore_api::events::SnapshotCommit {
            key: "k".into(),
            name: "n".into(),
            snapshotter: "overlayfs".into(),
        };
        let v = event_json(&any(
            stevedore_api::events::SnapshotCommit::type_url(),
            e.encode_to_vec(),
        ));
        assert_eq!(v["name"], "n");
        let v = event_json(&any("example.com/Unknown".into(), vec![1, 2]));
        assert_eq!(v["bytes"], 2);
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
