//! The debug endpoint (`[debug] address`), what containerd serves with Go's
//! `net/http/pprof` and what `ctr pprof` asks for:
//!
//! | path | answer |
//! |---|---|
//! | `/debug/pprof/` | the list below |
//! | `/debug/pprof/profile?seconds=N` | CPU profile over N seconds (default 30), pprof protobuf, gzip |
//! | `/debug/pprof/heap`, `/debug/pprof/allocs` | heap profile (sampled allocations), pprof protobuf, gzip |
//! | `/debug/pprof/goroutine?debug=1\|2` | every thread's stack as text (`ctr pprof goroutines`); without `debug`, a pprof profile of the stacks |
//! | `/debug/pprof/cmdline` | the command line, NUL-separated |
//! | `/debug/pprof/block`, `mutex`, `threadcreate`, `trace` | 501: Go runtime profiles with no Rust counterpart |
//! | `/debug/vars` | JSON: `cmdline`, the log level |
//! | `/debug/log-level` | GET: the level; PUT or POST with `trace`/`debug`/`info`/`warn`/`error` as the body: change it (stevedore's own; containerd has none) |

use crate::endpoint::{self, query, text, typed, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use std::time::Duration;

/// The longest CPU profile asked for (Go limits it by the server's write
/// timeout; an hour is plenty).
const MAX_PROFILE: Duration = Duration::from_secs(3600);

const INDEX: &str = "/debug/pprof/

profiles:
  allocs        heap profile (alloc_* and inuse_* of sampled allocations)
  goroutine     stack of every thread (?debug=2: text)
  heap          heap profile (alloc_* and inuse_* of sampled allocations)
  profile       CPU profile (?seconds=N, default 30)
  cmdline       the daemon's command line
also: /debug/vars, /debug/log-level (GET, or PUT a level)
";

/// Answer one request.
pub async fn handle(req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/debug/pprof" | "/debug/pprof/" => text(200, INDEX),
        "/debug/pprof/profile" => cpu(&req).await,
        "/debug/pprof/heap" | "/debug/pprof/allocs" => {
            match tokio::task::spawn_blocking(stevedore_profile::heap::profile).await {
                Ok(p) => {
                    stevedore_services::memory::work_done();
                    profile(p, "heap")
                }
                Err(e) => text(500, format!("heap profile: {e}\n")),
            }
        }
        "/debug/pprof/goroutine" => threads(&req).await,
        "/debug/pprof/cmdline" => {
            let args: Vec<String> = std::env::args().collect();
            text(200, args.join("\0"))
        }
        "/debug/pprof/block" | "/debug/pprof/mutex" | "/debug/pprof/threadcreate"
        | "/debug/pprof/trace" => text(
            501,
            format!(
                "{}: a Go runtime profile with no counterpart in stevedored (it serves profile, heap and goroutine)\n",
                path.trim_start_matches("/debug/pprof/")
            ),
        ),
        "/debug/vars" => {
            let body = serde_json::json!({
                "cmdline": std::env::args().collect::<Vec<_>>(),
                "log_level": crate::logging::level(),
            });
            typed("application/json; charset=utf-8", format!("{body}\n"))
        }
        "/debug/log-level" => log_level(req).await,
        _ => text(404, format!("404 page not found: {path}\n")),
    }
}

fn profile(bytes: Vec<u8>, name: &str) -> Reply {
    let mut r = typed("application/octet-stream", bytes);
    if let Ok(v) = format!("attachment; filename=\"{name}\"").parse() {
        r.headers_mut()
            .insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    r
}

async fn cpu(req: &Request<Incoming>) -> Reply {
    // ctr sends a float (`seconds=5`, `seconds=0.5`); Go's handler an int
    let seconds = match query(req, "seconds") {
        None | Some("") => 30.0,
        Some(s) => match s.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => v,
            _ => return text(400, format!("invalid seconds {s:?}: a positive number\n")),
        },
    };
    let d = Duration::from_secs_f64(seconds);
    if d > MAX_PROFILE {
        return text(
            400,
            format!("profile duration {seconds}s exceeds the limit of {MAX_PROFILE:?}\n"),
        );
    }
    let r = tokio::task::spawn_blocking(move || {
        stevedore_profile::cpu::profile(d, stevedore_profile::cpu::DEFAULT_HZ)
    })
    .await;
    stevedore_services::memory::work_done();
    match r {
        Ok(Ok(p)) => profile(p, "profile"),
        Ok(Err(stevedore_profile::Error::Busy)) => text(
            500,
            "Could not enable CPU profiling: cpu profiling already in use\n",
        ),
        Ok(Err(e)) => text(500, format!("{e}\n")),
        Err(e) => text(500, format!("cpu profile: {e}\n")),
    }
}

async fn threads(req: &Request<Incoming>) -> Reply {
    let as_text = matches!(query(req, "debug"), Some(d) if d != "0" && !d.is_empty());
    let r = tokio::task::spawn_blocking(move || {
        if as_text {
            stevedore_profile::threads::text().map(|t| text(200, t))
        } else {
            stevedore_profile::threads::profile().map(|p| profile(p, "goroutine"))
        }
    })
    .await;
    stevedore_services::memory::work_done();
    match r {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => text(500, format!("{e}\n")),
        Err(e) => text(500, format!("thread dump: {e}\n")),
    }
}

async fn log_level(req: Request<Incoming>) -> Reply {
    use http_body_util::BodyExt;
    match *req.method() {
        Method::GET | Method::HEAD => text(200, format!("{}\n", crate::logging::level())),
        Method::PUT | Method::POST => {
            let body = match http_body_util::Limited::new(req.into_body(), 64)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(400, format!("read level: {e}\n")),
            };
            let level = String::from_utf8_lossy(&body).trim().to_string();
            match crate::logging::set_level(&level) {
                Ok(()) => {
                    tracing::info!(level, "log level changed");
                    text(200, format!("{level}\n"))
                }
                Err(e) => text(400, format!("{e}\n")),
            }
        }
        _ => text(405, "use GET, or PUT a level\n"),
    }
}

/// Serve the debug endpoint.
pub fn serve(listener: endpoint::Listener) {
    endpoint::serve(listener, handle);
}
