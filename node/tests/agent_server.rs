//! The agent server and client against a fake node core: every request, deliveries pushed
//! between a request and its response, bad frames and oversize lengths closing only that
//! client, unregistration on disconnect, the client limit, the Unix socket, shutdown.

use std::time::Duration;

use bytes::Bytes;
use node::agent::client::{AgentClient, ClientError};
use node::agent::proto::{Message, ProtocolErrorKind, Response, WireError};
use node::agent::server::{serve_tcp, serve_unix, AgentServerConfig};
use node::agent::testing::{shutdown_pair, FakeNode};
use node::api::{AgentError, Metric, MetricKind, NodeStats, Priority, SendRequest, StatusRequests};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(10);

async fn start(config: AgentServerConfig) -> (FakeNode, String, watch::Sender<bool>) {
    let (fake, handle) = FakeNode::start("ipn:1.0");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = shutdown_pair();
    tokio::spawn(serve_tcp(listener, handle, config, rx));
    (fake, addr, stop)
}

fn send_req(dest: &str, payload: &[u8]) -> SendRequest {
    SendRequest {
        source: Some("ipn:1.5".into()),
        destination: dest.into(),
        payload: Bytes::copy_from_slice(payload),
        lifetime_ms: 30_000,
        priority: Priority::Expedited,
        report_to: Some("ipn:1.9".into()),
        requests: StatusRequests {
            received: true,
            forwarded: false,
            delivered: true,
            deleted: false,
        },
        no_fragment: true,
    }
}

/// Read one frame from a raw stream (bounded by T).
async fn raw_frame(s: &mut TcpStream) -> Option<Message> {
    tokio::time::timeout(T, async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Message::decode(&Bytes::from(body)).ok()
    })
    .await
    .expect("frame within the timeout")
}

async fn assert_eof(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(T, s.read(&mut b))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed by the server");
}

#[tokio::test]
async fn every_request_round_trips() {
    let (fake, addr, _stop) = start(AgentServerConfig::default()).await;
    fake.with(|s| {
        s.stats = NodeStats {
            metrics: vec![Metric {
                name: "dtn_bundles_received_total".into(),
                help: "Bundles received".into(),
                kind: MetricKind::Counter,
                labels: vec![("cl".into(), "tcpcl".into())],
                value: 42.0,
            }],
        }
    });
    let mut c = AgentClient::connect(&addr).await.unwrap();

    let acc = c.send(send_req("ipn:2.1", b"hello")).await.unwrap();
    assert_eq!(acc.id.source, "ipn:1.5");
    assert_eq!(acc.id.sequence, 1);
    let sent = fake.with(|s| s.sent[0].clone());
    assert_eq!(sent.destination, "ipn:2.1");
    assert_eq!(&sent.payload[..], b"hello");
    assert_eq!(sent.lifetime_ms, 30_000);
    assert_eq!(sent.priority, Priority::Expedited);
    assert_eq!(sent.report_to.as_deref(), Some("ipn:1.9"));
    assert!(sent.requests.received && sent.requests.delivered);
    assert!(!sent.requests.forwarded && !sent.requests.deleted);
    assert!(sent.no_fragment);

    let reg = c.register("ipn:1.5").await.unwrap();
    let err = c.register("ipn:1.5").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused(AgentError::AlreadyRegistered(ref e)) if e == "ipn:1.5"),
        "{err}"
    );

    let info = c.info().await.unwrap();
    assert_eq!(info.node_id, "ipn:1.0");
    assert_eq!(info.registrations, vec!["ipn:1.5".to_string()]);
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.total("dtn_bundles_received_total"), Some(42.0));
    assert_eq!(stats.metrics[0].labels[0].1, "tcpcl");

    let token = fake
        .push("ipn:1.5", "ipn:3.1", Bytes::from_static(b"data"))
        .unwrap();
    let (r, d) = tokio::time::timeout(T, c.next_push())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, reg);
    assert_eq!(d.token, token);
    assert_eq!(&d.payload[..], b"data");
    assert_eq!(d.id.source, "ipn:3.1");
    c.ack(reg, d.token).await.unwrap();
    assert_eq!(fake.with(|s| s.acks.clone()), vec![(reg, token)]);

    c.unregister(reg).await.unwrap();
    assert_eq!(fake.with(|s| s.unregistered.clone()), vec![reg]);
    // After unregistering, the registration is unknown to this client (not sent to the node).
    let err = c.ack(reg, 1).await.unwrap_err();
    assert!(matches!(err, ClientError::Refused(AgentError::UnknownRegistration(r)) if r == reg));
    let err = c.unregister(reg).await.unwrap_err();
    assert!(matches!(
        err,
        ClientError::Refused(AgentError::UnknownRegistration(_))
    ));

    fake.with(|s| s.refuse_sends = Some(AgentError::StoreFull("quota of 10 bundles".into())));
    let err = c.send(send_req("ipn:2.1", b"x")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused by the node: store full: quota of 10 bundles"
    );
}

#[tokio::test]
async fn pushes_interleave_with_responses() {
    let (fake, addr, _stop) = start(AgentServerConfig::default()).await;
    let mut c = AgentClient::connect(&addr).await.unwrap();
    let reg = c.register("ipn:1.5").await.unwrap();
    // Deliveries queued before the next requests arrive while the client waits for responses.
    for i in 0..5u8 {
        fake.push("ipn:1.5", "ipn:2.1", Bytes::from(vec![i; 100]))
            .unwrap();
    }
    for _ in 0..3 {
        c.info().await.unwrap();
        c.send(send_req("ipn:2.1", b"x")).await.unwrap();
    }
    for i in 0..5u8 {
        let d = tokio::time::timeout(T, c.next_delivery())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.payload[0], i, "deliveries come in order");
        c.ack(reg, d.token).await.unwrap();
    }
    assert_eq!(fake.with(|s| s.acks.len()), 5);
}

#[tokio::test]
async fn a_bad_frame_closes_only_that_client() {
    let (_fake, addr, _stop) = start(AgentServerConfig::default()).await;
    let mut good = AgentClient::connect(&addr).await.unwrap();
    good.info().await.unwrap();

    let mut bad = TcpStream::connect(&addr).await.unwrap();
    // A 3-byte frame that is not a valid message: [1, 99] (unknown type, too short).
    bad.write_all(&[0, 0, 0, 3, 0x82, 1, 99]).await.unwrap();
    match raw_frame(&mut bad).await {
        Some(Message::Response {
            id: 0,
            response:
                Response::Error(WireError::Protocol {
                    kind: ProtocolErrorKind::BadFrame,
                    ..
                }),
        }) => {}
        other => panic!("expected a bad-frame error, got {other:?}"),
    }
    assert_eof(&mut bad).await;

    // Another protocol version is refused the same way.
    let mut old = TcpStream::connect(&addr).await.unwrap();
    old.write_all(&[0, 0, 0, 4, 0x83, 9, 5, 1]).await.unwrap();
    match raw_frame(&mut old).await {
        Some(Message::Response {
            response:
                Response::Error(WireError::Protocol {
                    kind: ProtocolErrorKind::UnsupportedVersion,
                    ..
                }),
            ..
        }) => {}
        other => panic!("expected unsupported version, got {other:?}"),
    }
    assert_eof(&mut old).await;

    // The well-behaved client is still served.
    good.info().await.unwrap();
    good.send(send_req("ipn:2.1", b"still here")).await.unwrap();
}

#[tokio::test]
async fn an_oversize_length_is_refused_before_the_body_arrives() {
    let config = AgentServerConfig {
        max_frame: 1024,
        ..Default::default()
    };
    let (fake, addr, _stop) = start(config).await;
    let mut bad = TcpStream::connect(&addr).await.unwrap();
    // Only the length prefix (4 GiB - 1): the server must answer without waiting for (or
    // allocating) the body.
    bad.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    match raw_frame(&mut bad).await {
        Some(Message::Response {
            id: 0,
            response:
                Response::Error(WireError::Protocol {
                    kind: ProtocolErrorKind::FrameTooLarge,
                    message,
                }),
        }) => assert!(message.contains("4294967295"), "{message}"),
        other => panic!("expected frame-too-large, got {other:?}"),
    }
    drop(bad);

    // A client that knows the limit refuses locally; one that does not gets the node's reason.
    let mut c = AgentClient::connect_with_max_frame(&addr, 1024)
        .await
        .unwrap();
    let err = c.send(send_req("ipn:2.1", &[0u8; 2000])).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Refused(AgentError::TooLarge { .. })),
        "{err}"
    );
    let mut c = AgentClient::connect(&addr).await.unwrap();
    let err = c.send(send_req("ipn:2.1", &[0u8; 2000])).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                kind: ProtocolErrorKind::FrameTooLarge,
                ..
            }
        ),
        "{err}"
    );
    let mut raw = TcpStream::connect(&addr).await.unwrap();
    let frame = Message::Request {
        id: 1,
        request: node::agent::proto::Request::Send(send_req("ipn:2.1", &[7u8; 2000])),
    }
    .encode()
    .unwrap()
    .to_vec();
    let _ = raw.write_all(&frame).await;
    match raw_frame(&mut raw).await {
        Some(Message::Response {
            response:
                Response::Error(WireError::Protocol {
                    kind: ProtocolErrorKind::FrameTooLarge,
                    ..
                }),
            ..
        }) => {}
        other => panic!("expected frame-too-large, got {other:?}"),
    }
    assert_eq!(fake.with(|s| s.sent.len()), 0);
    // Others are unaffected.
    let mut good = AgentClient::connect(&addr).await.unwrap();
    good.send(send_req("ipn:2.1", &[1u8; 500])).await.unwrap();
}

#[tokio::test]
async fn disconnect_unregisters_the_clients_registrations() {
    let (fake, addr, _stop) = start(AgentServerConfig::default()).await;
    let mut c = AgentClient::connect(&addr).await.unwrap();
    let a = c.register("ipn:1.5").await.unwrap();
    let b = c.register("dtn://node1/app").await.unwrap();
    let mut other = AgentClient::connect(&addr).await.unwrap();
    let o = other.register("ipn:1.6").await.unwrap();
    // Another client cannot ack or unregister these.
    assert!(matches!(
        other.unregister(a).await.unwrap_err(),
        ClientError::Refused(AgentError::UnknownRegistration(_))
    ));
    drop(c);
    assert!(
        fake.wait_for(T, |s| s.unregistered.len() == 2).await,
        "both registrations are unregistered"
    );
    let mut gone = fake.with(|s| s.unregistered.clone());
    gone.sort();
    assert_eq!(gone, vec![a, b]);
    assert!(fake.with(|s| s.registrations.contains_key(&o)));
    // The endpoint can be registered again by someone else.
    other.register("ipn:1.5").await.unwrap();
}

#[tokio::test]
async fn a_slow_client_stalls_only_itself() {
    let config = AgentServerConfig {
        delivery_buffer: 4,
        ..Default::default()
    };
    let (fake, addr, _stop) = start(config).await;
    let mut slow = AgentClient::connect(&addr).await.unwrap();
    slow.register("ipn:1.5").await.unwrap();
    // The slow client never reads: its channel fills (socket buffers, the push queue and the
    // delivery buffer), and the node sees a full channel instead of growing memory.
    let big = Bytes::from(vec![0u8; 1 << 20]);
    let mut pushed = 0;
    let mut full = false;
    for _ in 0..200 {
        if fake.push("ipn:1.5", "ipn:2.1", big.clone()).is_some() {
            pushed += 1;
        } else {
            // Give the forwarder a chance to drain into the socket, then check again.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            if fake.push("ipn:1.5", "ipn:2.1", big.clone()).is_none() {
                full = true;
                break;
            }
            pushed += 1;
        }
    }
    assert!(
        full,
        "the delivery channel is bounded (pushed {pushed} MiB)"
    );
    let mut fast = AgentClient::connect(&addr).await.unwrap();
    let reg = fast.register("ipn:1.6").await.unwrap();
    fake.push("ipn:1.6", "ipn:2.1", Bytes::from_static(b"quick"))
        .unwrap();
    let d = tokio::time::timeout(T, fast.next_delivery())
        .await
        .unwrap()
        .unwrap();
    fast.ack(reg, d.token).await.unwrap();
    // The slow client can still catch up.
    let d = tokio::time::timeout(T, slow.next_delivery())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.payload.len(), 1 << 20);
}

#[tokio::test]
async fn client_limit_answers_busy() {
    let config = AgentServerConfig {
        max_clients: 1,
        ..Default::default()
    };
    let (_fake, addr, _stop) = start(config).await;
    let mut first = AgentClient::connect(&addr).await.unwrap();
    first.info().await.unwrap();
    let mut second = AgentClient::connect(&addr).await.unwrap();
    let err = second.info().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Rejected {
                kind: ProtocolErrorKind::Busy,
                ..
            }
        ),
        "{err}"
    );
    drop(first);
    // The slot is released once the first client is gone (bounded retries).
    let mut ok = false;
    for _ in 0..100 {
        let mut c = AgentClient::connect(&addr).await.unwrap();
        if c.info().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a new client is served after the first left");
}

#[tokio::test]
async fn unix_socket() {
    let dir = std::env::temp_dir().join(format!("agent-unix-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dtnd.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (fake, handle) = FakeNode::start("ipn:1.0");
    let (_stop, rx) = shutdown_pair();
    tokio::spawn(serve_unix(
        listener,
        handle,
        AgentServerConfig::default(),
        rx,
    ));
    let addr = path.to_str().unwrap().to_string();
    let mut c = AgentClient::connect(&addr).await.unwrap();
    let reg = c.register("ipn:1.5").await.unwrap();
    c.send(send_req("ipn:1.5", b"over unix")).await.unwrap();
    fake.push("ipn:1.5", "ipn:1.5", Bytes::from_static(b"back"))
        .unwrap();
    let d = tokio::time::timeout(T, c.next_delivery())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload[..], b"back");
    c.ack(reg, d.token).await.unwrap();
    drop(c);
    assert!(fake.wait_for(T, |s| s.unregistered == vec![reg]).await);
    // A missing socket is reported as "node not running".
    let err = AgentClient::connect(dir.join("nope.sock").to_str().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn node_not_running_is_reported_clearly() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let err = AgentClient::connect(&addr).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach the node at {addr}: connection refused — is dtnd running?")
    );
}

#[tokio::test]
async fn shutdown_closes_clients_and_returns() {
    let (_fake, handle) = FakeNode::start("ipn:1.0");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, rx) = shutdown_pair();
    let server = tokio::spawn(serve_tcp(
        listener,
        handle,
        AgentServerConfig::default(),
        rx,
    ));
    let mut c = AgentClient::connect(&addr).await.unwrap();
    c.register("ipn:1.5").await.unwrap();
    stop.send(true).unwrap();
    tokio::time::timeout(T, server)
        .await
        .expect("server returns")
        .unwrap();
    let err = tokio::time::timeout(T, c.next_delivery())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused(AgentError::ShuttingDown) | ClientError::Closed
        ),
        "{err}"
    );
    assert!(
        AgentClient::connect(&addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn large_payload_round_trip() {
    let (fake, addr, _stop) = start(AgentServerConfig::default()).await;
    let mut c = AgentClient::connect(&addr).await.unwrap();
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut calls = 0;
    let mut last = 0;
    c.send_with_progress(send_req("ipn:2.1", &payload), |done, total| {
        calls += 1;
        assert!(done >= last && done <= total);
        last = done;
    })
    .await
    .unwrap();
    assert!(calls >= 8, "progress reported per MiB");
    assert!(
        last as usize > payload.len(),
        "the total counts the whole frame"
    );
    assert!(fake.with(|s| s.sent[0].payload == payload));
    c.register("ipn:1.5").await.unwrap();
    fake.push("ipn:1.5", "ipn:2.1", Bytes::from(payload.clone()))
        .unwrap();
    let d = tokio::time::timeout(T, c.next_delivery())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.payload, payload);
}
