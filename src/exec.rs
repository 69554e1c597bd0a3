//! `--exec CMD [ARGS...]`: one process per message. The body goes to stdin, metadata to env vars,
//! and no shell is involved, so a body can never become a command.
//!
//! Exit 0 deletes the message; [`EXIT_PERMANENT`] dead-letters it now; any other code retries
//! it with backoff. stdout and stderr lines go to the worker's log with the message id.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::handler::{Handler, Job, Outcome};

/// Exit code meaning "this message will never succeed: dead-letter it now" (sysexits' EX_DATAERR).
pub const EXIT_PERMANENT: i32 = 65;
/// Longest log line kept from a child; a flood of output cannot exhaust memory.
const MAX_LINE: usize = 8 * 1024;

/// Runs a program per message.
#[derive(Debug, Clone)]
pub struct ExecHandler {
    pub program: String,
    pub args: Vec<String>,
    /// After SIGTERM (job cancelled), how long before SIGKILL.
    pub kill_grace: Duration,
}

/// `MESSAGE_ATTR_<NAME>`: attribute names upper-cased, anything but A-Z0-9_ made `_`.
pub fn attr_env_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("MESSAGE_ATTR_{clean}")
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        // The child may have exited already: nothing to do then.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

async fn log_lines<R: tokio::io::AsyncRead + Unpin>(reader: R, stream: &'static str) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(mut line)) = lines.next_line().await {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        tracing::info!(stream, "{line}");
    }
}

impl Handler for ExecHandler {
    async fn handle(&self, job: Job) -> Outcome {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("MESSAGE_ID", &job.message_id)
            .env("RECEIVE_COUNT", job.receive_count.to_string())
            // A job abandoned by the worker must not leave its process behind.
            .kill_on_drop(true);
        for (k, v) in &job.message_attributes {
            cmd.env(attr_env_name(k), v);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return Outcome::retry(format!("cannot start {}: {e}", self.program)),
        };
        let stdin = child.stdin.take();
        let body = job.body.clone();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A child that does not read its stdin is fine: ignore the broken pipe.
                let _ = stdin.write_all(body.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let out = child.stdout.take();
        let err = child.stderr.take();
        let logs = async move {
            tokio::join!(
                async {
                    if let Some(o) = out {
                        log_lines(o, "stdout").await
                    }
                },
                async {
                    if let Some(e) = err {
                        log_lines(e, "stderr").await
                    }
                },
            )
        };
        let io = async { tokio::join!(feed, logs) };
        tokio::pin!(io);
        let status = tokio::select! {
            (_, status) = async { tokio::join!(&mut io, child.wait()) } => status,
            _ = job.cancel.cancelled() => {
                terminate(&child);
                match tokio::time::timeout(self.kill_grace, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = child.kill().await;
                        child.wait().await
                    }
                }
            }
        };
        match status {
            Ok(s) if s.success() => Outcome::Success,
            Ok(s) if s.code() == Some(EXIT_PERMANENT) => Outcome::permanent(format!(
                "{} exited with {EXIT_PERMANENT} (permanent failure)",
                self.program
            )),
            Ok(s) => Outcome::retry(format!("{} exited with {s}", self.program)),
            Err(e) => Outcome::retry(format!("waiting for {} failed: {e}", self.program)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names_become_safe_env_names() {
        assert_eq!(attr_env_name("colour"), "MESSAGE_ATTR_COLOUR");
        assert_eq!(attr_env_name("trace-id.v2"), "MESSAGE_ATTR_TRACE_ID_V2");
        assert_eq!(attr_env_name("$(rm -rf /)"), "MESSAGE_ATTR___RM__RF___");
    }
}
