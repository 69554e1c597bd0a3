//! Connections that an axum handler can drop without answering: the one listener the test
//! doubles serve on ([`crate::agent_double`], [`crate::fault_proxy`]).
//!
//! Serve a [`KillableListener`] with `into_make_service_with_connect_info::<ConnAddr>()`; a
//! handler takes `ConnectInfo<ConnAddr>` and returns [`ConnAddr::drop_connection`] to have the
//! connection closed before a single byte of an answer is written. The client sees EOF (or a
//! reset) where it expected a status line, as when a server dies mid-exchange.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Pause after a failed accept (out of file descriptors and the like) instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A TCP listener whose connections a handler can kill, to model "no response at all".
pub struct KillableListener(pub TcpListener);

/// Per-connection info handed to handlers through `ConnectInfo`.
#[derive(Clone, Debug)]
pub struct ConnAddr {
    killed: Arc<AtomicBool>,
}

impl ConnAddr {
    /// Marks the connection dead; hyper's write of the returned placeholder fails and the
    /// connection is closed, so the client sees no status line at all.
    pub fn drop_connection(&self) -> Response {
        self.killed.store(true, Ordering::SeqCst);
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

/// Also serves a `KillableListener` wrapped with `ListenerExt::tap_io` (axum forwards it).
impl Connected<IncomingStream<'_, KillableListener>> for ConnAddr {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    let killed = Arc::new(AtomicBool::new(false));
                    let io = KillableStream {
                        inner: stream,
                        killed: killed.clone(),
                    };
                    return (io, ConnAddr { killed });
                }
                Err(error) => {
                    // Like axum's own loop: transient accept errors (EMFILE...) must not kill
                    // the server.
                    tracing::debug!(%error, "killable listener: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(ConnAddr {
            killed: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// One accepted connection; every read and write fails once its [`ConnAddr`] was killed.
pub struct KillableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

impl KillableStream {
    /// The TCP stream underneath (for socket options such as `TCP_NODELAY`).
    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }

    fn check(&self) -> std::io::Result<()> {
        if self.killed.load(Ordering::SeqCst) {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the connection was dropped on purpose",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
