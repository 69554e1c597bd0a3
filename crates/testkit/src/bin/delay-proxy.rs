//! `delay-proxy`: network distance on loopback, for the benchmark (`bench/bench.py`).
//!
//! ```text
//! delay-proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT --delay 20ms
//! ```
//!
//! Relays every connection to the upstream with `--delay` added each way (see
//! `testkit::delay_proxy`), prints `DELAY_PROXY_PORT=<port>` on stdout once listening, and runs
//! until SIGTERM, SIGINT or EOF on stdin. Then it prints one JSON line of counts
//! (`{"connections":N,"bytes_up":N,"bytes_down":N}`) and exits.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use testkit::delay_proxy::DelayProxy;

#[derive(Parser)]
#[command(
    name = "delay-proxy",
    about = "A TCP relay adding a fixed latency each way (network distance on loopback)"
)]
struct Cli {
    /// Address to listen on (port 0: any free port, printed as DELAY_PROXY_PORT).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to relay connections to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Latency added each way (a round trip costs twice this), e.g. 20ms; 0 relays at once.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let proxy = match DelayProxy::start(cli.listen, cli.upstream, cli.delay).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("delay-proxy: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    println!("DELAY_PROXY_PORT={}", proxy.local_addr().port());
    // A driver reads the port from a pipe: it must not sit in a buffer.
    let _ = std::io::stdout().flush();
    if let Err(e) = testkit::cli::stop_requested().await {
        eprintln!("delay-proxy: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let counts = proxy.counts();
    proxy.shutdown().await;
    match serde_json::to_string(&counts) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("delay-proxy: cannot report the counts: {e}"),
    }
    ExitCode::SUCCESS
}
