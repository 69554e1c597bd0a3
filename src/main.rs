//! `queue-worker`: the thin binary. Everything lives in the library; see `queue_worker::cli`.

use std::process::ExitCode;

// mimalloc instead of glibc's malloc: the SDK and the job path allocate many small, short-lived
// objects, and glibc's allocator was about 15 % of the worker's CPU in the benchmark's profile.
// Built with `no_thp` (Cargo.toml): with transparent huge pages its arenas grew peak RSS from
// 16 to 23 MB for no CPU gain.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread: the worker only waits on sockets, timers and child processes. Measured against
// the multi-thread runtime in the benchmark: about a third less CPU per message (no cross-thread
// wake-ups) and higher throughput. Blocking work still goes to tokio's blocking pool.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    queue_worker::cli::main().await
}
