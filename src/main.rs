//! `queue-worker`: the thin binary. Everything lives in the library; see `queue_worker::cli`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    queue_worker::cli::main().await
}
