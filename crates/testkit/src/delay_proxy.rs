//! A TCP relay that adds a fixed latency each way: network distance for the benchmark, on
//! loopback.
//!
//! [`DelayProxy::start`] listens, and for each connection it accepts opens one to the upstream.
//! Every chunk read from one side is written to the other side `delay` after it was read, in
//! order. Reading never waits for writing (each direction has a queue of chunks in flight), so
//! the relay adds latency, not a bandwidth limit: a request/answer exchange costs one round trip
//! (2 × `delay`) more, and many exchanges in flight on one connection overlap as they would over
//! a real link. A new connection pays one more round trip before its first bytes move on, like
//! a TCP handshake over the same distance. An end of stream (or a read error) is passed on
//! `delay` later too, as a half-close of the other side.
//!
//! Delays use `tokio::time`, so a paused test clock drives them. On a real clock the timer's
//! millisecond ticks make each delay one to two milliseconds longer, never shorter; with no delay
//! a chunk is passed on at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tasks::Tasks;

/// Largest chunk read at once (the size of a socket's usual receive window).
const CHUNK: usize = 64 * 1024;
/// Chunks one direction may hold in flight before reading pauses (TCP back-pressure then
/// reaches the sender). 4,096 chunks per delay is far above what the benchmark sends.
const QUEUE_CHUNKS: usize = 4096;
/// How long [`DelayProxy::shutdown`] waits for connections to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors and the like) instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Traffic relayed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DelayCounts {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes from clients to the upstream.
    pub bytes_up: u64,
    /// Bytes from the upstream to clients.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running relay. Stop it with [`DelayProxy::shutdown`]; dropping it also stops it.
pub struct DelayProxy {
    addr: SocketAddr,
    tasks: Tasks,
    counters: Arc<Counters>,
}

impl DelayProxy {
    /// Listens on `listen` (port 0 picks a free one) and relays each connection to `upstream`,
    /// `delay` each way.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        delay: Duration,
    ) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let proxy = DelayProxy {
            addr,
            tasks: Tasks::default(),
            counters: Arc::default(),
        };
        proxy.tasks.spawn(accept_loop(
            listener,
            Link {
                upstream,
                delay,
                counters: proxy.counters.clone(),
            },
            proxy.tasks.token(),
            proxy.tasks.tracker(),
        ));
        tracing::debug!(%addr, %upstream, ?delay, "delay proxy listening");
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections and bytes relayed so far.
    pub fn counts(&self) -> DelayCounts {
        DelayCounts {
            connections: self.counters.connections.load(Ordering::Relaxed),
            bytes_up: self.counters.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.counters.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, cuts open connections and waits (bounded) for their tasks. A relay
    /// dropped without it still stops.
    pub async fn shutdown(self) {
        self.tasks.stop(SHUTDOWN_GRACE, "delay proxy").await;
    }
}

/// What every connection of one relay shares.
#[derive(Clone)]
struct Link {
    upstream: SocketAddr,
    delay: Duration,
    counters: Arc<Counters>,
}

async fn accept_loop(
    listener: TcpListener,
    link: Link,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = cancel.cancelled() => return,
        };
        match accepted {
            Ok((client, _)) => {
                link.counters.connections.fetch_add(1, Ordering::Relaxed);
                let link = link.clone();
                let cancel = cancel.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = relay(client, &link) => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
            Err(error) => {
                tracing::debug!(%error, "delay proxy: accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

async fn relay(client: TcpStream, link: &Link) {
    // The handshake the client just made over the "distance": its data waits one round trip.
    let handshake_done = Instant::now() + 2 * link.delay;
    let server = match TcpStream::connect(link.upstream).await {
        Ok(s) => s,
        Err(error) => {
            tracing::debug!(%error, upstream = %link.upstream, "delay proxy: upstream refused");
            return;
        }
    };
    // Each chunk is written as soon as it is due: Nagle would add its own, unrelated delay.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(
            client_read,
            server_write,
            link.delay,
            handshake_done,
            &link.counters.bytes_up,
        ),
        pipe(
            server_read,
            client_write,
            link.delay,
            Instant::now(),
            &link.counters.bytes_down,
        ),
    );
}

/// Copies `from` to `to`, each chunk `delay` after it was read (and not before `not_before` +
/// `delay`), then half-closes `to`. Returns when the end of stream was passed on or `to` failed.
async fn pipe<R, W>(mut from: R, mut to: W, delay: Duration, not_before: Instant, bytes: &AtomicU64)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // `None` is the end of stream.
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE_CHUNKS);
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let got = from.read(&mut buf).await;
            let due = Instant::now().max(not_before) + delay;
            let chunk = match got {
                Ok(n) if n > 0 => Some(buf[..n].to_vec()),
                // A reset is passed on as an end of stream: the other side sees the close.
                Ok(_) | Err(_) => None,
            };
            let end = chunk.is_none();
            if tx.send((due, chunk)).await.is_err() || end {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            // The timer rounds up to its next millisecond: a chunk already due goes at once.
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&chunk).await.is_err() {
                // The receiver is gone: dropping `rx` stops the reader at its next chunk.
                return;
            }
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back on each connection, until the client half-closes.
    async fn echo_server(tracker: &TaskTracker) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let conns = tracker.clone();
        tracker.spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    async fn start(delay: Duration) -> (DelayProxy, TaskTracker) {
        let tracker = TaskTracker::new();
        let upstream = echo_server(&tracker).await;
        let proxy = DelayProxy::start(SocketAddr::from(([127, 0, 0, 1], 0)), upstream, delay)
            .await
            .expect("start delay proxy");
        (proxy, tracker)
    }

    async fn exchange(tcp: &mut TcpStream, msg: &[u8]) {
        tcp.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).await.expect("read echo");
        assert_eq!(back, msg);
    }

    /// Real clock, lower bounds only: a timer never fires early, so these cannot be flaky.
    #[tokio::test]
    async fn a_round_trip_costs_at_least_two_delays_and_a_new_connection_one_more() {
        let delay = Duration::from_millis(40);
        let (proxy, _echo) = start(delay).await;
        let started = std::time::Instant::now();
        let mut tcp = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        exchange(&mut tcp, b"first").await;
        let first = started.elapsed();
        assert!(
            first >= 4 * delay,
            "handshake + round trip: {first:?} < 4 × {delay:?}"
        );
        for _ in 0..3 {
            let t = std::time::Instant::now();
            exchange(&mut tcp, b"again").await;
            let rtt = t.elapsed();
            assert!(rtt >= 2 * delay, "round trip {rtt:?} < 2 × {delay:?}");
        }
        let counts = proxy.counts();
        assert_eq!(counts.connections, 1);
        assert_eq!((counts.bytes_up, counts.bytes_down), (20, 20));
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn a_large_transfer_arrives_intact_in_order_and_the_close_follows() {
        let (proxy, _echo) = start(Duration::from_millis(5)).await;
        let mut rng = fastrand::Rng::with_seed(7);
        let data: Vec<u8> = (0..8 * 1024 * 1024).map(|_| rng.u8(..)).collect();
        let tcp = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect");
        let (mut r, mut w) = tcp.into_split();
        let sent = data.clone();
        let send = async move {
            // Writes of every size, so chunks are cut at arbitrary places.
            let mut rest = &sent[..];
            while !rest.is_empty() {
                let n = rng.usize(1..=rest.len().min(200_000));
                w.write_all(&rest[..n]).await.expect("write");
                rest = &rest[n..];
            }
            w.shutdown().await.expect("half-close");
        };
        let receive = async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got)
                .await
                .expect("read to the relayed end");
            got
        };
        let ((), got) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(send, receive)
        })
        .await
        .expect("the transfer ends");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes arrive intact and in order");
        proxy.shutdown().await;
    }

    /// Paused clock and in-memory streams: virtual time moves only by timers, so the bounds
    /// below measure the relay's design, not this machine's speed.
    #[tokio::test(start_paused = true)]
    async fn chunks_in_flight_overlap_instead_of_waiting_for_each_other() {
        let delay = Duration::from_millis(100);
        let (mut client, relay_in) = tokio::io::duplex(CHUNK);
        let (relay_out, mut server) = tokio::io::duplex(CHUNK);
        let bytes = AtomicU64::new(0);
        let started = Instant::now();
        let send = async {
            for i in 0..10u8 {
                client.write_all(&[i]).await.expect("write");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client.shutdown().await.expect("close");
        };
        let receive = async {
            let mut got = Vec::new();
            let mut arrivals = Vec::new();
            let mut byte = [0u8; 1];
            while server.read(&mut byte).await.expect("read") > 0 {
                got.push(byte[0]);
                arrivals.push(started.elapsed());
            }
            (got, arrivals, started.elapsed())
        };
        let ((), (got, arrivals, closed), ()) = tokio::join!(
            send,
            receive,
            pipe(relay_in, relay_out, delay, started, &bytes)
        );
        assert_eq!(got, (0..10).collect::<Vec<u8>>(), "in order");
        for (i, at) in arrivals.iter().enumerate() {
            let sent = Duration::from_millis(10 * i as u64);
            assert!(*at >= sent + delay, "byte {i} early: {at:?}");
            // One chunk at a time would deliver byte i after (i + 1) delays.
            assert!(
                *at < sent + 2 * delay,
                "byte {i} waited for the others: {at:?}"
            );
        }
        assert!(
            closed >= Duration::from_millis(100) + delay,
            "the close is delayed too"
        );
        assert_eq!(bytes.load(Ordering::Relaxed), 10);
    }
}
