//! [`EmulatedStream`]: delay and rate applied to a byte stream in both directions.
//!
//! The wrapper hands the application one end of an in-memory duplex pipe and runs a task that
//! pumps bytes between the other end and the wrapped stream. Each chunk read in either
//! direction is serialised at `rate_bytes_per_sec` and released `delay` later, in order. Only
//! `delay`, `rate_bytes_per_sec` and `queue_limit_bytes` of the [`LinkProfile`] apply: a byte
//! stream stands for a reliable transport, so there is no loss, jitter, duplication or outage.
//! At most `queue_limit_bytes` (at least one chunk) are held per direction; beyond it the pump
//! stops reading, which back-pressures the writer. End of stream is propagated after the data.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::profile::LinkProfile;

/// Largest chunk the pump moves at once (bytes).
const CHUNK: usize = 16 * 1024;

/// A byte stream with emulated delay and rate in both directions (see the module docs).
#[derive(Debug)]
pub struct EmulatedStream {
    app: DuplexStream,
    task: JoinHandle<()>,
}

impl EmulatedStream {
    /// Wrap `inner`, applying `profile`'s delay and rate to both directions. Must be called
    /// within a tokio runtime (it spawns the pump task).
    pub fn new<S>(inner: S, profile: &LinkProfile) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (app, pump) = tokio::io::duplex(CHUNK);
        let shaping = Shaping {
            delay: profile.delay,
            rate: profile.rate_bytes_per_sec,
            limit: profile.queue_limit_bytes.max(CHUNK),
        };
        let task = tokio::spawn(async move {
            let (inner_r, inner_w) = tokio::io::split(inner);
            let (pump_r, pump_w) = tokio::io::split(pump);
            let up = pump_direction(pump_r, inner_w, shaping);
            let down = pump_direction(inner_r, pump_w, shaping);
            let (a, b) = tokio::join!(up, down);
            if let Err(e) = a.and(b) {
                tracing::debug!(error = %e, "emulated stream ended with error");
            }
        });
        EmulatedStream { app, task }
    }
}

impl Drop for EmulatedStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, Debug)]
struct Shaping {
    delay: Duration,
    rate: Option<u64>,
    limit: usize,
}

async fn pump_direction<R, W>(mut from: R, mut to: W, s: Shaping) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut held = 0usize;
    let mut busy_until = Instant::now();
    let mut eof = false;
    loop {
        if eof && queue.is_empty() {
            to.shutdown().await?;
            return Ok(());
        }
        let next_release = queue.front().map(|(at, _)| *at);
        let can_read = !eof && held < s.limit;
        let mut buf = vec![0u8; CHUNK];
        tokio::select! {
            r = from.read(&mut buf), if can_read => {
                let n = r?;
                if n == 0 {
                    eof = true;
                    continue;
                }
                buf.truncate(n);
                let now = Instant::now();
                let start = now.max(busy_until);
                let ser = match s.rate {
                    Some(rate) => Duration::from_nanos(
                        u64::try_from((n as u128 * 1_000_000_000).div_ceil(rate.max(1) as u128))
                            .unwrap_or(u64::MAX),
                    ),
                    None => Duration::ZERO,
                };
                busy_until = start + ser;
                held += n;
                queue.push_back((busy_until + s.delay, buf));
            }
            _ = tokio::time::sleep_until(next_release.unwrap_or_else(Instant::now)), if next_release.is_some() => {
                let now = Instant::now();
                while let Some((at, _)) = queue.front() {
                    if *at > now {
                        break;
                    }
                    if let Some((_, chunk)) = queue.pop_front() {
                        held -= chunk.len();
                        to.write_all(&chunk).await?;
                    }
                }
                to.flush().await?;
            }
        }
    }
}

impl AsyncRead for EmulatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.app).poll_read(cx, buf)
    }
}

impl AsyncWrite for EmulatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.app).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.app).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.app).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_and_preserves_bytes() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let profile = LinkProfile::builder()
            .delay(Duration::from_millis(50))
            .rate(1_000_000)
            .build()
            .unwrap();
        let mut emu = EmulatedStream::new(a, &profile);
        let mut b = b;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let t0 = std::time::Instant::now();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move {
                emu.write_all(&data).await.unwrap();
                emu.shutdown().await.unwrap();
                emu
            })
        };
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), b.read_to_end(&mut got))
            .await
            .expect("stream completes")
            .unwrap();
        let elapsed = t0.elapsed();
        assert_eq!(got, data);
        // 100 kB at 1 MB/s is 100 ms of serialisation plus 50 ms delay.
        assert!(elapsed >= Duration::from_millis(145), "{elapsed:?}");
        let _emu = writer.await.unwrap();
    }
}
