//! The streaming server end to end on 127.0.0.1: exec, attach and port
//! forward over SPDY/3.1 and WebSocket with a fake runtime, tokens, and
//! request validation.

mod support;

use std::time::Duration;

use futures::SinkExt;
use stevedore_cri_streaming::{AttachRequest, Config, ExecRequest, PortForwardRequest};
use stevedore_types::ErrorKind;
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn exec(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "ctr1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdout: true,
        ..Default::default()
    }
}

const V4: &str = "v4.channel.k8s.io";

// ---- request validation and URLs

#[tokio::test]
async fn get_exec_rejects_invalid_requests_like_kubelet() {
    let (server, _) = server().await;
    let cases = [
        (
            ExecRequest {
                container_id: String::new(),
                ..exec(&["true"])
            },
            "missing required container_id",
        ),
        (
            ExecRequest {
                tty: true,
                stderr: true,
                ..exec(&["true"])
            },
            "tty and stderr cannot both be true",
        ),
        (
            ExecRequest {
                stdout: false,
                ..exec(&["true"])
            },
            "one of stdin, stdout, or stderr must be set",
        ),
        (exec(&[]), "missing required cmd"),
    ];
    for (req, msg) in cases {
        let err = server.get_exec(&req).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{req:?}");
        assert_eq!(err.to_string(), msg);
    }
    let attach = AttachRequest {
        container_id: "c".into(),
        ..Default::default()
    };
    assert_eq!(
        server.get_attach(&attach).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    for pf in [
        PortForwardRequest::default(),
        PortForwardRequest {
            pod_sandbox_id: "s".into(),
            port: vec![0],
        },
        PortForwardRequest {
            pod_sandbox_id: "s".into(),
            port: vec![65536],
        },
    ] {
        assert_eq!(
            server.get_port_forward(&pf).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}

#[tokio::test]
async fn urls_name_the_bound_address_and_a_fresh_token() {
    let (server, _) = server().await;
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0, "port 0 binds a free port");
    let a = server.get_exec(&exec(&["true"])).unwrap();
    let b = server.get_exec(&exec(&["true"])).unwrap();
    assert!(a.starts_with(&format!("http://{addr}/exec/")), "{a}");
    assert_ne!(a, b);
    let pf = server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "s".into(),
            port: vec![80],
        })
        .unwrap();
    assert!(
        pf.starts_with(&format!("http://{addr}/portforward/")),
        "{pf}"
    );
}

#[tokio::test]
async fn binds_a_configured_port() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let (server, _) = server_with(Config {
        port: port.to_string(),
        ..Config::default()
    })
    .await;
    assert_eq!(server.local_addr().port(), port);
}

// ---- tokens

#[tokio::test]
async fn unknown_token_is_404() {
    let (server, _) = server().await;
    let url = format!("{}/exec/not-a-token", server.base_url());
    let (status, _, _) = http_request(&url, "GET", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn token_of_another_kind_is_404() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["true"])).unwrap();
    let attach_url = url.replace("/exec/", "/attach/");
    let (status, _, _) = http_request(&attach_url, "GET", &[]).await;
    assert_eq!(status, 404);
    // and the token is spent
    let (status, _, _) = http_request(&url, "GET", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn used_token_is_404() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    let (mut ws, _) = ws_connect(&url, V4).await.unwrap();
    ws_collect(&mut ws).await;
    let (status, _, _) = http_request(&url, "GET", &[]).await;
    assert_eq!(status, 404);
    assert!(ws_connect(&url, V4).await.is_err());
}

#[tokio::test]
async fn expired_token_is_404() {
    let (server, runtime) = server_with(Config {
        request_ttl: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = http_request(&url, "GET", &[]).await;
    assert_eq!(status, 404);
    assert!(runtime.calls.lock().unwrap().is_empty());
}

// ---- remote command over WebSocket

#[tokio::test]
async fn websocket_v5_exec_echoes_stdin_and_reports_success() {
    let (server, runtime) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stdin: true,
            ..exec(&["cat"])
        })
        .unwrap();
    let (mut ws, proto) = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    ws_send(&mut ws, [&[0u8][..], b"hello "].concat()).await;
    ws_send(&mut ws, [&[0u8][..], b"world"].concat()).await;
    // v5's close signal ends stdin, so cat exits
    ws_send(&mut ws, vec![255, 0]).await;
    let msgs = ws_collect(&mut ws).await;
    assert_eq!(
        msgs[0],
        (1, vec![]),
        "the first message is the empty ready message"
    );
    assert_eq!(channel(&msgs, 1), "hello world");
    assert_eq!(channel(&msgs, 3), r#"{"metadata":{},"status":"Success"}"#);
    assert_eq!(
        runtime.calls.lock().unwrap().as_slice(),
        ["exec ctr1 cat tty=false"]
    );
}

#[tokio::test]
async fn websocket_v4_exec_reports_non_zero_exit_code() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "3"])).unwrap();
    let (mut ws, _) = ws_connect(&url, V4).await.unwrap();
    let msgs = ws_collect(&mut ws).await;
    assert_eq!(channel(&msgs, 1), "out");
    let status: serde_json::Value = serde_json::from_str(&channel(&msgs, 3)).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(
        status["message"],
        "command terminated with non-zero exit code: error executing command [exit 3], exit code 3"
    );
}

#[tokio::test]
async fn websocket_exec_writes_stderr_on_channel_2() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stdout: false,
            stderr: true,
            ..exec(&["stderr", "oops"])
        })
        .unwrap();
    let (mut ws, _) = ws_connect(&url, V4).await.unwrap();
    let msgs = ws_collect(&mut ws).await;
    assert_eq!(
        msgs[0],
        (2, vec![]),
        "ready message on the lowest writable channel"
    );
    assert_eq!(channel(&msgs, 2), "oops");
    assert_eq!(channel(&msgs, 1), "");
}

#[tokio::test]
async fn websocket_runtime_failure_is_an_internal_error_status() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["fail"])).unwrap();
    let (mut ws, _) = ws_connect(&url, V4).await.unwrap();
    let msgs = ws_collect(&mut ws).await;
    let status: serde_json::Value = serde_json::from_str(&channel(&msgs, 3)).unwrap();
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(status["code"], 500);
    assert_eq!(
        status["message"],
        "Internal error occurred: error executing command in container: boom"
    );
}

#[tokio::test]
async fn websocket_pre_v4_protocols_write_failures_as_text() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "2"])).unwrap();
    let (mut ws, proto) = ws_connect(&url, "base64.channel.k8s.io").await.unwrap();
    assert_eq!(proto.as_deref(), Some("base64.channel.k8s.io"));
    let msgs = ws_collect(&mut ws).await;
    assert_eq!(channel(&msgs, 1), "out");
    assert_eq!(
        channel(&msgs, 3),
        "command terminated with non-zero exit code: error executing command [exit 2], exit code 2"
    );
}

#[tokio::test]
async fn websocket_tty_resizes_reach_the_runtime() {
    let (server, runtime) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            tty: true,
            ..exec(&["resize", "2"])
        })
        .unwrap();
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws_send(
        &mut ws,
        [&[4u8][..], br#"{"Width":80,"Height":24}"#].concat(),
    )
    .await;
    ws_send(
        &mut ws,
        [&[4u8][..], br#"{"Width":120,"Height":40}"#].concat(),
    )
    .await;
    let msgs = ws_collect(&mut ws).await;
    assert_eq!(channel(&msgs, 1), "80x24\n120x40\n");
    assert_eq!(
        runtime.calls.lock().unwrap().as_slice(),
        ["exec ctr1 resize 2 tty=true"]
    );
}

#[tokio::test]
async fn websocket_refuses_unknown_subprotocols() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    assert!(ws_connect(&url, "v9.channel.k8s.io").await.is_err());
}

#[tokio::test]
async fn websocket_attach_connects_to_the_container() {
    let (server, runtime) = server().await;
    let url = server
        .get_attach(&AttachRequest {
            container_id: "ctr2".into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap();
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await.unwrap();
    ws_send(&mut ws, [&[0u8][..], b"typed"].concat()).await;
    ws_send(&mut ws, vec![255, 0]).await;
    let msgs = ws_collect(&mut ws).await;
    assert_eq!(channel(&msgs, 1), "attached to ctr2\ntyped");
    assert_eq!(channel(&msgs, 3), r#"{"metadata":{},"status":"Success"}"#);
    assert_eq!(
        runtime.calls.lock().unwrap().as_slice(),
        ["attach ctr2 tty=false"]
    );
}

// ---- remote command over SPDY

/// Opens the streams client-go's v4 client opens for these options.
async fn open_exec_streams(
    c: &mut SpdyClient,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> [u32; 5] {
    let mut ids = [0; 5];
    ids[3] = c.open(&[("streamType", "error")]).await;
    if stdin {
        ids[0] = c.open(&[("streamType", "stdin")]).await;
    }
    if stdout {
        ids[1] = c.open(&[("streamType", "stdout")]).await;
    }
    if stderr {
        ids[2] = c.open(&[("streamType", "stderr")]).await;
    }
    if tty {
        ids[4] = c.open(&[("streamType", "resize")]).await;
    }
    ids
}

#[tokio::test]
async fn spdy_v4_exec_echoes_stdin_and_reports_success() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stdin: true,
            ..exec(&["cat"])
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4, "v3.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(c.protocol, V4);
    let [stdin, stdout, _, error, _] = open_exec_streams(&mut c, true, true, false, false).await;
    c.until(|s| s.replied.len() == 3).await;
    c.data(stdin, b"over spdy", true).await;
    c.until_closed().await;
    let got = &c.collected;
    assert_eq!(got.text(stdout), "over spdy");
    assert_eq!(got.text(error), r#"{"metadata":{},"status":"Success"}"#);
    assert!(got.fin.contains(&stdout) && got.fin.contains(&error));
    assert!(got.goaway, "the server ends the session with GOAWAY");
    // received data is credited to the stream and the session (SPDY/3.1)
    let len = "over spdy".len() as u32;
    assert!(
        got.window_updates.contains(&(stdin, len)),
        "{:?}",
        got.window_updates
    );
    assert!(
        got.window_updates.contains(&(0, len)),
        "{:?}",
        got.window_updates
    );
}

#[tokio::test]
async fn spdy_v4_exec_reports_non_zero_exit_code_and_stderr() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stderr: true,
            ..exec(&["exit", "42"])
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    let [_, stdout, _, error, _] = open_exec_streams(&mut c, false, true, true, false).await;
    c.until_closed().await;
    assert_eq!(c.collected.text(stdout), "out");
    let status: serde_json::Value = serde_json::from_str(&c.collected.text(error)).unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "42");
}

#[tokio::test]
async fn spdy_stderr_stream_carries_stderr() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stdout: false,
            stderr: true,
            ..exec(&["stderr", "to stderr"])
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    let [_, _, stderr, error, _] = open_exec_streams(&mut c, false, false, true, false).await;
    c.until_closed().await;
    assert_eq!(c.collected.text(stderr), "to stderr");
    assert_eq!(
        c.collected.text(error),
        r#"{"metadata":{},"status":"Success"}"#
    );
}

#[tokio::test]
async fn spdy_v2_writes_failures_as_text() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "7"])).unwrap();
    let mut c = SpdyClient::connect(&url, &["v2.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(c.protocol, "v2.channel.k8s.io");
    let [_, stdout, _, error, _] = open_exec_streams(&mut c, false, true, false, false).await;
    c.until_closed().await;
    assert_eq!(c.collected.text(stdout), "out");
    assert_eq!(
        c.collected.text(error),
        "command terminated with non-zero exit code: error executing command [exit 7], exit code 7"
    );
}

#[tokio::test]
async fn spdy_tty_resizes_reach_the_runtime() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            tty: true,
            ..exec(&["resize", "3"])
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    let [_, stdout, _, _, resize] = open_exec_streams(&mut c, false, true, false, true).await;
    c.until(|s| s.replied.len() == 3).await;
    // client-go encodes one JSON object per resize; split across frames here
    c.data(resize, br#"{"Width":10,"Height":20}{"Width":30,"#, false)
        .await;
    c.data(resize, br#""Height":40}"#, false).await;
    c.data(resize, br#"{"Width":50,"Height":60}"#, false).await;
    c.until_closed().await;
    assert_eq!(c.collected.text(stdout), "10x20\n30x40\n50x60\n");
}

#[tokio::test]
async fn spdy_attach_connects_to_the_container() {
    let (server, runtime) = server().await;
    let url = server
        .get_attach(&AttachRequest {
            container_id: "ctr3".into(),
            stdin: true,
            stdout: true,
            tty: true,
            ..Default::default()
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    let [stdin, stdout, _, error, _] = open_exec_streams(&mut c, true, true, false, true).await;
    c.until(|s| s.replied.len() == 4).await;
    c.data(stdin, b"keys", true).await;
    c.until_closed().await;
    assert_eq!(c.collected.text(stdout), "attached to ctr3\nkeys");
    assert_eq!(
        c.collected.text(error),
        r#"{"metadata":{},"status":"Success"}"#
    );
    assert_eq!(
        runtime.calls.lock().unwrap().as_slice(),
        ["attach ctr3 tty=true"]
    );
}

#[tokio::test]
async fn spdy_stdin_nobody_reads_is_bounded_by_backpressure() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stdin: true,
            ..exec(&["hold", "700"])
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    let [stdin, _, _, error, _] = open_exec_streams(&mut c, true, true, false, false).await;
    c.until(|s| s.replied.len() == 3).await;
    // 1 MiB (loopback socket buffers take it) that the command never reads
    let chunk = vec![b'x'; 32 << 10];
    for _ in 0..32 {
        c.data(stdin, &chunk, false).await;
    }
    c.collect_for(Duration::from_millis(300)).await;
    // the server credits only what its bounded stream queue took
    let held = c.credited(stdin);
    assert!(held <= 5 * (32 << 10), "credited {held} bytes nobody read");
    // once the command exits, the unread rest cannot stall the session
    c.until_closed().await;
    assert!(c.collected.goaway);
    assert_eq!(
        c.collected.text(error),
        r#"{"metadata":{},"status":"Success"}"#
    );
}

#[tokio::test]
async fn spdy_refuses_streams_beyond_the_expected_ones() {
    let (server, _) = server().await;
    let url = server
        .get_exec(&ExecRequest {
            stdin: true,
            ..exec(&["cat"])
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    let [stdin, stdout, _, _, _] = open_exec_streams(&mut c, true, true, false, false).await;
    c.until(|s| s.replied.len() == 3).await;
    let extra = c.open(&[("streamType", "stdout")]).await;
    c.until(|s| s.reset.contains(&extra)).await;
    c.data(stdin, b"still works", true).await;
    c.until_closed().await;
    assert_eq!(c.collected.text(stdout), "still works");
}

#[tokio::test]
async fn spdy_gives_up_on_clients_that_do_not_open_their_streams() {
    let (server, runtime) = server_with(Config {
        stream_creation_timeout: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    c.open(&[("streamType", "error")]).await;
    c.until_closed().await;
    assert!(c.collected.goaway);
    assert!(runtime.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn spdy_protocol_negotiation_failures_are_refused() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    let (status, head) = SpdyClient::connect(&url, &["v9.channel.k8s.io"])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);
    assert!(head
        .to_ascii_lowercase()
        .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"));
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    let (status, _) = SpdyClient::connect(&url, &[]).await.err().unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn spdy_answers_pings() {
    let (server, _) = server().await;
    let url = server.get_exec(&exec(&["exit", "0"])).unwrap();
    let mut c = SpdyClient::connect(&url, &[V4]).await.unwrap();
    c.send(stevedore_cri_streaming::spdy::Frame::Ping { id: 1 })
        .await;
    open_exec_streams(&mut c, false, true, false, false).await;
    c.until_closed().await;
    assert_eq!(c.collected.pings, [1]);
    assert!(c.collected.goaway);
}

// ---- port forward

#[tokio::test]
async fn spdy_port_forward_echoes_through_the_runtime() {
    let (server, runtime) = server().await;
    let port = echo_server().await.to_string();
    let url = server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![],
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(c.protocol, "portforward.k8s.io");
    // two forwarded connections on one SPDY connection, as kubectl does
    let mut ids = Vec::new();
    for request in ["0", "1"] {
        let error = c
            .open(&[
                ("streamType", "error"),
                ("port", &port),
                ("requestID", request),
            ])
            .await;
        let data = c
            .open(&[
                ("streamType", "data"),
                ("port", &port),
                ("requestID", request),
            ])
            .await;
        ids.push((error, data));
    }
    c.until(|s| s.replied.len() == 4).await;
    for (i, &(_, data)) in ids.iter().enumerate() {
        c.data(data, format!("ping {i}").as_bytes(), true).await;
    }
    c.until(|s| {
        ids.iter()
            .all(|(e, d)| s.fin.contains(d) && s.fin.contains(e))
    })
    .await;
    for (i, &(error, data)) in ids.iter().enumerate() {
        assert_eq!(c.collected.text(data), format!("ping {i}"));
        assert_eq!(c.collected.text(error), "");
    }
    let calls = runtime.calls.lock().unwrap().clone();
    assert_eq!(calls, vec![format!("portforward pod1 {port}"); 2]);
}

#[tokio::test]
async fn spdy_port_forward_reports_runtime_errors_on_the_error_stream() {
    let (server, _) = server().await;
    // nothing listens there: the runtime's connect fails
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    let url = server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![],
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    let error = c
        .open(&[("streamType", "error"), ("port", &port), ("requestID", "0")])
        .await;
    c.open(&[("streamType", "data"), ("port", &port), ("requestID", "0")])
        .await;
    c.until(|s| s.fin.contains(&error)).await;
    let msg = c.collected.text(error);
    assert!(
        msg.starts_with(&format!("error forwarding port {port} to pod pod1, uid : ")),
        "{msg}"
    );
}

#[tokio::test]
async fn spdy_port_forward_refuses_streams_without_a_valid_port() {
    let (server, _) = server().await;
    let url = server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            port: vec![],
        })
        .unwrap();
    let mut c = SpdyClient::connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    let a = c.open(&[("streamType", "data"), ("requestID", "0")]).await;
    let b = c
        .open(&[("streamType", "data"), ("port", "0"), ("requestID", "1")])
        .await;
    let d = c
        .open(&[("streamType", "bogus"), ("port", "80"), ("requestID", "2")])
        .await;
    c.until(|s| [a, b, d].iter().all(|id| s.reset.contains(id)))
        .await;
    assert!(c.collected.replied.is_empty());
}

#[tokio::test]
async fn websocket_port_forward_echoes_with_port_prefixes() {
    let (server, runtime) = server().await;
    let port = echo_server().await;
    let url = server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "pod2".into(),
            port: vec![i32::from(port)],
        })
        .unwrap();
    let (mut ws, proto) = ws_connect(&url, V4).await.unwrap();
    assert_eq!(proto.as_deref(), Some(V4));
    ws_send(&mut ws, [&[0u8][..], b"ping over ws"].concat()).await;
    // read the two port prefixes and the echo, then hang up
    let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
    let want = "ping over ws".len();
    tokio::time::timeout(TIMEOUT, async {
        use futures::StreamExt;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(b) = msg {
                got.push((b[0], b[1..].to_vec()));
            }
            let data: usize = got
                .iter()
                .filter(|(c, _)| *c == 0)
                .map(|(_, d)| d.len())
                .sum();
            if data >= want + 2 && got.iter().any(|(c, _)| *c == 1) {
                break;
            }
        }
    })
    .await
    .unwrap();
    let prefix = port.to_le_bytes().to_vec();
    let first_data = got.iter().find(|(c, _)| *c == 0).unwrap();
    let first_error = got.iter().find(|(c, _)| *c == 1).unwrap();
    assert_eq!(first_data.1, prefix, "data channel starts with the port");
    assert_eq!(first_error.1, prefix, "error channel starts with the port");
    let data: Vec<u8> = got
        .iter()
        .filter(|(c, _)| *c == 0)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(&data[2..], b"ping over ws");
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(
        runtime.calls.lock().unwrap().as_slice(),
        [format!("portforward pod2 {port}")]
    );
}
