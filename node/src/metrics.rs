//! Prometheus metrics: the text exposition format 0.0.4 (`# HELP`, `# TYPE`, samples with
//! escaped label values) of a [`NodeStats`] snapshot, served by a small HTTP/1.1 server
//! (RFC 9112 message syntax: `GET /metrics` answers 200, other paths 404, other methods 405;
//! one request per connection, `Connection: close`).
//!
//! The server is written by hand because it needs only this: a bounded request head
//! ([`MAX_HEAD`]), a timeout per connection ([`REQUEST_TIMEOUT`]), a limit on concurrent
//! connections ([`MAX_CONNECTIONS`]); an HTTP framework would bring far more than it gives.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use crate::api::{AgentCommand, MetricKind, NodeHandle, NodeStats};

/// Largest request head read (request line and headers); longer requests get 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time allowed for a client to send its request head and read the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once; further ones are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Escapes a label value: backslash, double quote and newline (exposition format 0.0.4).
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text: backslash and newline.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A metric or label name restricted to `[a-zA-Z_:][a-zA-Z0-9_:]*` (others replaced by `_`).
fn sanitize_name(n: &str, out: &mut String) {
    for (i, c) in n.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
    if n.is_empty() {
        out.push('_');
    }
}

fn format_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Renders `stats` in the Prometheus text format: samples grouped by name, one `# HELP` and
/// `# TYPE` line per name (the first sample's help and kind).
pub fn render(stats: &NodeStats) -> String {
    let mut out = String::with_capacity(64 * stats.metrics.len() + 64);
    for (name, samples) in stats.by_name() {
        let Some(first) = samples.first() else {
            continue;
        };
        let mut clean = String::new();
        sanitize_name(name, &mut clean);
        out.push_str("# HELP ");
        out.push_str(&clean);
        out.push(' ');
        escape_help(&first.help, &mut out);
        out.push('\n');
        let kind = match first.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# TYPE {clean} {kind}");
        for m in samples {
            out.push_str(&clean);
            if !m.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in m.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    sanitize_name(k, &mut out);
                    out.push_str("=\"");
                    escape_label(v, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            format_value(m.value, &mut out);
            out.push('\n');
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` with the node's current stats until `shutdown`.
pub async fn serve(listener: TcpListener, node: NodeHandle, mut shutdown: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection limit reached");
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &node)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "metrics request failed: {e}"),
                Err(_) => debug!(%peer, "metrics request timed out"),
            }
        });
    }
}

/// Reads the request head: `Ok(Some(head))`, `Ok(None)` if it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

async fn handle(mut stream: TcpStream, node: &NodeHandle) -> std::io::Result<()> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(head) = read_head(&mut stream).await? else {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            TEXT,
            b"request head too large\n",
        )
        .await;
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", TEXT, b"only GET\n").await;
    }
    if path != "/metrics" {
        return respond(&mut stream, "404 Not Found", TEXT, b"try /metrics\n").await;
    }
    match node.request(|reply| AgentCommand::Stats { reply }).await {
        Ok(stats) => {
            let body = render(&stats);
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
            )
            .await
        }
        Err(e) => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                TEXT,
                format!("{e}\n").as_bytes(),
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Metric;

    fn metric(name: &str, kind: MetricKind, labels: &[(&str, &str)], value: f64) -> Metric {
        let help = format!("help of {name}\nsecond \\ line");
        Metric::new(name, &help, kind, labels, value)
    }

    #[test]
    fn renders_help_type_and_escaped_labels() {
        let stats = NodeStats {
            metrics: vec![
                metric(
                    "dtn_bundles_deleted_total",
                    MetricKind::Counter,
                    &[("reason", "a\"b\\c\nd")],
                    2.0,
                ),
                metric("dtn_store_bytes", MetricKind::Gauge, &[], 1.5),
                metric(
                    "dtn_bundles_deleted_total",
                    MetricKind::Counter,
                    &[("reason", "x")],
                    3.0,
                ),
                metric("bad-name", MetricKind::Gauge, &[("1l", "v")], f64::NAN),
            ],
        };
        let text = render(&stats);
        let expected = "# HELP bad_name help of bad-name\\nsecond \\\\ line\n\
# TYPE bad_name gauge\n\
bad_name{_l=\"v\"} NaN\n\
# HELP dtn_bundles_deleted_total help of dtn_bundles_deleted_total\\nsecond \\\\ line\n\
# TYPE dtn_bundles_deleted_total counter\n\
dtn_bundles_deleted_total{reason=\"a\\\"b\\\\c\\nd\"} 2\n\
dtn_bundles_deleted_total{reason=\"x\"} 3\n\
# HELP dtn_store_bytes help of dtn_store_bytes\\nsecond \\\\ line\n\
# TYPE dtn_store_bytes gauge\n\
dtn_store_bytes 1.5\n";
        assert_eq!(text, expected);
        assert_eq!(render(&NodeStats::default()), "");
    }

    #[test]
    fn values() {
        let mut s = String::new();
        for v in [0.0, -3.0, 1e20, 0.25, f64::INFINITY, f64::NEG_INFINITY] {
            format_value(v, &mut s);
            s.push(' ');
        }
        assert_eq!(s, "0 -3 100000000000000000000 0.25 +Inf -Inf ");
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let node = NodeHandle::new(tx);
        // A fake node answering Stats.
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                if let AgentCommand::Stats { reply } = cmd {
                    let _ = reply.send(NodeStats {
                        metrics: vec![metric("dtn_up", MetricKind::Gauge, &[], 1.0)],
                    });
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(serve(listener, node, stop));

        let r = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("Connection: close"), "{r}");
        assert!(r.ends_with("# TYPE dtn_up gauge\ndtn_up 1\n"), "{r}");
        let body_len = r.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(
            r.contains(&format!("Content-Length: {body_len}\r\n")),
            "{r}"
        );

        let r = get(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        let r = get(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let r = get(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn node_gone_answers_503() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(rx);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(listener, NodeHandle::new(tx), stop));
        let r = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    }
}
