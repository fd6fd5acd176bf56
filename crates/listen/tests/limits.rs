//! Real servers on 127.0.0.1:0 under short limits: what is closed, what is kept, what waits.
//!
//! Timeouts bound a hung test, they are not timing assertions: a check that the server closed
//! a connection waits up to `WAIT_LIMIT` for it, far beyond the configured limit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use claas_listen::{serve, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

const WAIT_LIMIT: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(3600);

fn limits(max_connections: usize, header_read: Duration, idle: Duration) -> Limits {
    Limits {
        max_connections,
        header_read_timeout: header_read,
        idle_timeout: idle,
    }
}

/// Starts `serve` on a fresh port; dropping the returned sender shuts it down.
async fn start(
    router: Router,
    limits: Limits,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router, limits, async move {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, task)
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

/// Reads until the server closes the connection; returns what it sent. Panics if the
/// connection is still open after `WAIT_LIMIT`.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    tokio::time::timeout(WAIT_LIMIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server kept the connection open");
    got
}

/// Sends one keep-alive GET and reads its complete response (the body is "hello").
async fn get_hello(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello") {
        let n = tokio::time::timeout(WAIT_LIMIT, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let (addr, _stop, _task) = start(hello(), limits(16, LONG, SHORT)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut silent).await.is_empty());
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_once_idle_after_its_request() {
    let (addr, _stop, _task) = start(hello(), limits(16, LONG, SHORT)).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    get_hello(&mut conn).await;
    assert!(read_until_closed(&mut conn).await.is_empty());
}

#[tokio::test]
async fn half_sent_headers_are_closed_after_the_header_read_timeout() {
    // The idle timeout is long and bytes arrived: only the header timer can close it.
    let (addr, _stop, _task) = start(hello(), limits(16, SHORT, LONG)).await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    let got = read_until_closed(&mut half).await;
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

#[tokio::test]
async fn a_client_that_stops_mid_body_is_closed_after_the_idle_timeout() {
    let router = Router::new().route("/", post(|body: String| async move { body }));
    let (addr, _stop, _task) = start(router, limits(16, LONG, SHORT)).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    let got = read_until_closed(&mut conn).await;
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{got:?}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    // An endless response: only the idle timeout on the blocked write can end it.
    let router = Router::new().route(
        "/",
        get(|| async {
            let chunk = Bytes::from(vec![b'x'; 1 << 16]);
            Body::from_stream(futures::stream::repeat_with(move || {
                Ok::<_, Infallible>(chunk.clone())
            }))
        }),
    );
    let (addr, _stop, _task) = start(router, limits(16, LONG, SHORT)).await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Not reading lets the socket buffers fill and the server's writes block.
    tokio::time::sleep(SHORT * 4).await;
    let got = read_until_closed(&mut conn).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &got[..16.min(got.len())]
    );
}

#[tokio::test]
async fn a_slow_handler_and_a_long_stream_are_not_cut_by_the_idle_timeout() {
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(SHORT * 4).await;
                "done"
            }),
        )
        .route(
            "/events",
            get(|| async {
                // Server-sent events over several idle timeouts, with pauses longer than one.
                let events = futures::stream::unfold(0u32, |i| async move {
                    if i == 4 {
                        return None;
                    }
                    tokio::time::sleep(SHORT * 2).await;
                    Some((Ok::<_, Infallible>(format!("data: {i}\n\n")), i + 1))
                });
                (
                    [("content-type", "text/event-stream")],
                    Body::from_stream(events),
                )
            }),
        );
    let (addr, _stop, _task) = start(router, limits(16, LONG, SHORT)).await;
    let client = reqwest::Client::new();
    let slow = client
        .get(format!("http://{addr}/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.text().await.unwrap(), "done");
    let events = client
        .get(format!("http://{addr}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(
        events.text().await.unwrap(),
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n"
    );
}

#[tokio::test]
async fn at_the_cap_a_new_connection_waits_until_one_closes() {
    let served = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let router = {
        let (served, release) = (served.clone(), release.clone());
        Router::new().route(
            "/",
            get(move || async move {
                // The first request holds its connection until the test releases it.
                if served.fetch_add(1, Ordering::SeqCst) == 0 {
                    release.notified().await;
                }
                "hello"
            }),
        )
    };
    let (addr, _stop, _task) = start(router, limits(1, LONG, LONG)).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(WAIT_LIMIT, async {
        while served.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // The kernel completes the handshake, but the server does not accept it yet.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(SHORT).await;
    assert_eq!(served.load(Ordering::SeqCst), 1, "served beyond the cap");

    release.notify_one();
    drop(first);
    let got = read_until_closed(&mut second).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    assert!(got.ends_with(b"hello"), "{got:?}");
    assert_eq!(served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn normal_requests_are_served_and_shutdown_is_graceful() {
    let (addr, stop, task) = start(hello(), Limits::default()).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    // An idle keep-alive connection must not hold up the shutdown.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    get_hello(&mut idle).await;
    drop(stop);
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .expect("shutdown waited on an idle connection")
        .unwrap()
        .unwrap();
    assert!(read_until_closed(&mut idle).await.is_empty());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_zero_connection_cap_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(listener, hello(), limits(0, LONG, LONG), async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let router = {
        let (started, release) = (started.clone(), release.clone());
        Router::new().route(
            "/",
            get(move || async move {
                started.notify_one();
                release.notified().await;
                "done"
            }),
        )
    };
    let (addr, stop, task) = start(router, Limits::default()).await;
    let request = tokio::spawn(reqwest::get(format!("http://{addr}/")));
    started.notified().await;
    drop(stop);
    tokio::time::sleep(SHORT).await;
    assert!(!task.is_finished(), "returned before the request finished");
    release.notify_one();
    let response = tokio::time::timeout(WAIT_LIMIT, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "done");
    tokio::time::timeout(WAIT_LIMIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
