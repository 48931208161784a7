//! stevedored: serves containerd's gRPC API on a unix socket.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use stevedore_plugin::{
    types::{EVENT, GRPC},
    Environment,
};
use stevedore_services::exchange::Exchange;
use stevedore_services::GrpcService;
use stevedored::config::{Config, DEFAULT_CONFIG_PATH};
use stevedored::endpoint::{bind_unix, restrict_socket};
use stevedored::logging;
use tokio_stream::wrappers::UnixListenerStream;

/// glibc's malloc (tuned by `malloc::tune`), with sampled allocations
/// recorded for the debug endpoint's heap profile.
#[global_allocator]
static ALLOCATOR: stevedore_profile::heap::Sampling<std::alloc::System> =
    stevedore_profile::heap::Sampling::new(std::alloc::System);

/// How long a graceful shutdown waits for open streams.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Parser)]
#[command(
    name = "stevedored",
    version,
    about = "stevedore daemon: containerd's API, in Rust"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Persistent root directory (overrides the config).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides the config).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// gRPC socket path (overrides the config).
    #[arg(long, short = 'a', global = true)]
    address: Option<PathBuf>,
    /// trace, debug, info, warn or error (overrides the config).
    #[arg(long, short = 'l', global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the full default configuration.
    Default,
    /// Print the configuration in effect (file plus flags).
    Dump,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stevedored: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    // before any thread starts: the allocator's arenas and thresholds
    stevedore_sys::malloc::tune();
    let cli = Cli::parse();
    let mut registry = stevedore_services::registry::plugins();
    stevedore_cri::register(&mut registry);
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if let Some(Cmd::Config {
        what: ConfigCmd::Default,
    }) = cli.cmd
    {
        print!("{}", Config::default_toml(&registry));
        return Ok(());
    }
    let mut cfg = Config::load(&path, explicit, &registry)?;
    if let Some(r) = cli.root {
        cfg.root = r;
    }
    if let Some(s) = cli.state {
        cfg.state = s;
    }
    if let Some(a) = cli.address {
        cfg.grpc.address = a;
    }
    if let Some(l) = cli.log_level {
        cfg.debug.level = l;
    }
    if let Some(Cmd::Config {
        what: ConfigCmd::Dump,
    }) = cli.cmd
    {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    logging::init(&cfg.debug.level, &cfg.debug.format)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stevedored")
        .build()
        .context("start async runtime")?;
    rt.block_on(serve(cfg, registry))
}

fn create_dir(path: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

async fn serve(cfg: Config, registry: stevedore_plugin::Registry) -> Result<()> {
    create_dir(&cfg.root, 0o711)?;
    create_dir(&cfg.state, 0o711)?;
    let listener = bind_unix(&cfg.grpc.address, cfg.grpc.uid, cfg.grpc.gid)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#} (gRPC socket; choose another --address)"))?;
    // the debug endpoint serves while plugins initialise: a slow start can
    // be profiled
    let mut extra_sockets = Vec::new();
    if !cfg.debug.address.is_empty() {
        let (uid, gid) = cfg.debug_ids();
        let l = stevedored::endpoint::bind("debug", &cfg.debug.address, uid, gid).await?;
        tracing::info!(address = %l.describe(), "debug endpoint serving");
        extra_sockets.extend(l.path().map(Path::to_path_buf));
        stevedored::debug::serve(l);
    }
    let (ttrpc_address, ttrpc_uid, ttrpc_gid) = cfg.ttrpc_socket();
    let env = Environment {
        root: cfg.root.clone(),
        state: cfg.state.clone(),
        address: cfg.grpc.address.clone(),
        ttrpc_address: ttrpc_address.clone(),
        plugin_config: cfg.plugins.clone(),
        disabled: cfg.disabled_plugins.iter().cloned().collect::<HashSet<_>>(),
    };
    let required = cfg.required_plugins.clone();
    let address = cfg.grpc.address.clone();
    // plugin inits do blocking file and database work
    let init = tokio::task::spawn_blocking(move || registry.init(&env, &required))
        .await
        .context("plugin init panicked")?;
    let plugins = match init {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(&address);
            bail!("plugin initialisation failed: {e}");
        }
    };
    // the runtime plugin serves the ttrpc socket (when it is enabled)
    if ttrpc_address.exists() {
        if let Err(e) = restrict_socket(&ttrpc_address, ttrpc_uid, ttrpc_gid) {
            let _ = std::fs::remove_file(&address);
            return Err(e);
        }
    }
    if !cfg.metrics.address.is_empty() {
        let l =
            stevedored::endpoint::bind("metrics", &cfg.metrics.address, cfg.grpc.uid, cfg.grpc.gid)
                .await?;
        tracing::info!(address = %l.describe(), "metrics endpoint serving");
        extra_sockets.extend(l.path().map(Path::to_path_buf));
        let tasks = plugins
            .get::<stevedore_services::tasks::RuntimeV2>(
                stevedore_plugin::types::RUNTIME_V2,
                "task",
            )
            .map(|rt| rt.manager.clone());
        stevedored::metrics::serve(l, stevedored::metrics::Sources { tasks });
    }
    let mut routes = tonic::service::RoutesBuilder::default();
    for (id, inst) in plugins.instances_of(GRPC) {
        match inst.clone().downcast::<GrpcService>() {
            Ok(svc) => svc.add_to(&mut routes),
            Err(_) => tracing::error!(id, "grpc plugin has no service"),
        }
    }
    tracing::info!(
        address = %address.display(),
        root = %cfg.root.display(),
        state = %cfg.state.display(),
        "stevedored serving"
    );
    stevedore_services::memory::spawn_trimmer();
    // the signal streams exist before readiness is announced: a SIGTERM
    // that follows READY=1 at once must not be lost
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    // containerd dumps its goroutines on SIGUSR1; stevedored its threads
    let mut usr1 = signal(SignalKind::user_defined1()).context("install SIGUSR1 handler")?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match tokio::task::spawn_blocking(stevedore_profile::threads::text).await {
                Ok(Ok(dump)) => {
                    tracing::info!("=== BEGIN thread dump ===\n{dump}=== END thread dump ===")
                }
                Ok(Err(e)) => tracing::warn!("SIGUSR1: {e}"),
                Err(e) => tracing::warn!("SIGUSR1: thread dump: {e}"),
            }
        }
    });
    // a systemd unit with Type=notify starts dependants only now
    sd_notify("READY=1");
    let exchange = plugins.get::<Exchange>(EVENT, "exchange");
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        sd_notify("STOPPING=1");
        // end event subscriptions so they do not hold connections open
        if let Some(ex) = exchange {
            ex.shutdown();
        }
        // never hang on a client that keeps a stream open
        tokio::spawn(async {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!("clients still connected after {SHUTDOWN_GRACE:?}: exiting anyway");
            std::process::exit(0);
        });
    };
    // large flow-control windows (adapted to the link): blobs stream in and
    // out in 1 MiB messages, and 64 KiB windows would stall every one of them
    let result = tonic::transport::Server::builder()
        // disabled (and nearly free) below debug level
        .trace_fn(|req| tracing::debug_span!("grpc", method = %req.uri().path()))
        .layer(stevedored::metrics::GrpcMetricsLayer {
            histogram: cfg.metrics.grpc_histogram,
        })
        .http2_adaptive_window(Some(true))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&address);
    for p in &extra_sockets {
        let _ = std::fs::remove_file(p);
    }
    result.context("serve gRPC")?;
    tracing::info!("stevedored stopped");
    Ok(())
}

/// Tell systemd (`$NOTIFY_SOCKET`, for `Type=notify` units) about a state
/// change; nothing without the variable. Failures are logged, not fatal.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(&path))?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("sd_notify {state}: {e}");
    }
}
