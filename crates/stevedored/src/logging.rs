//! The daemon's log: `tracing` to stderr (text or JSON) behind a filter that
//! the debug endpoint can change while the daemon runs.

use anyhow::{bail, Result};
use std::sync::{Mutex, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The levels `--log-level`, `[debug] level` and the endpoint accept.
pub const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

struct Handle {
    filter: reload::Handle<EnvFilter, Registry>,
    level: Mutex<String>,
}

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// The filter for a level: ours at `level`, the HTTP/2 stack quieter.
fn filter(level: &str) -> EnvFilter {
    EnvFilter::new(format!("{level},h2=warn,hyper=warn,tower=warn"))
}

fn check(level: &str) -> Result<()> {
    if !LEVELS.contains(&level) {
        bail!("invalid log level {level:?}: use trace, debug, info, warn or error");
    }
    Ok(())
}

/// Install the global subscriber (`STEVEDORE_LOG`, an `EnvFilter`
/// directive, overrides `level` until the level is changed at run time).
pub fn init(level: &str, format: &str) -> Result<()> {
    check(level)?;
    let initial = EnvFilter::try_from_env("STEVEDORE_LOG").unwrap_or_else(|_| filter(level));
    let (layer, handle) = reload::Layer::new(initial);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        // at debug level each gRPC call's span (`serve`) logs its duration
        // when it closes: where a client's time goes, call by call
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
    let registry = tracing_subscriber::registry().with(layer);
    match format {
        "json" => registry.with(fmt.json()).init(),
        "text" | "" => registry.with(fmt).init(),
        other => bail!("invalid log format {other:?}: use text or json"),
    }
    let _ = HANDLE.set(Handle {
        filter: handle,
        level: Mutex::new(level.to_string()),
    });
    Ok(())
}

/// The level in effect.
pub fn level() -> String {
    HANDLE
        .get()
        .map(|h| h.level.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .unwrap_or_default()
}

/// Change the level of the running daemon.
pub fn set_level(level: &str) -> Result<()> {
    check(level)?;
    let Some(h) = HANDLE.get() else {
        bail!("logging is not initialised");
    };
    h.filter
        .reload(filter(level))
        .map_err(|e| anyhow::anyhow!("change log level: {e}"))?;
    *h.level.lock().unwrap_or_else(|p| p.into_inner()) = level.to_string();
    Ok(())
}
