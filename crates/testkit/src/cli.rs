//! Helpers for the kit's binaries (their `main`s only: library code takes a cancellation token).

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on SIGTERM, SIGINT, or when stdin reaches EOF, so a driver that dies (closing the
/// pipe) never leaves a tool running. Fails only when the signal handlers cannot be installed.
pub async fn stop_requested() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // tokio's io-std feature is not enabled in this crate: watch stdin from a plain thread.
    // Anything written is ignored; EOF (or an error) ends the run.
    let (eof_tx, stdin_eof) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = std::io::Read::read(&mut stdin, &mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = eof_tx.send(());
    });
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = stdin_eof => {}
    }
    Ok(())
}
