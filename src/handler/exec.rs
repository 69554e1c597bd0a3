//! `--exec CMD [ARGS...]`: one process per message. The body goes to stdin, metadata to env vars,
//! and no shell is involved, so a body can never become a command.
//!
//! Exit 0 deletes the message; [`EXIT_PERMANENT`] dead-letters it now; any other code retries
//! it with backoff. stdout and stderr lines go to the worker's log with the message id.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::{Handler, Job, Outcome};

/// Exit code meaning "this message will never succeed: dead-letter it now" (sysexits' EX_DATAERR).
pub const EXIT_PERMANENT: i32 = 65;
/// Longest log line kept from a child (bytes); a flood of output cannot exhaust memory.
const MAX_LINE: usize = 8 * 1024;
/// Most lines logged per output stream and job: a child printing millions of lines must not
/// turn the worker's log (and its CPU) into a copy of its output.
const MAX_LINES: usize = 1000;

/// Runs a program per message.
#[derive(Debug, Clone)]
pub struct ExecHandler {
    /// The program (found on `PATH` when it has no slash).
    pub program: String,
    /// Its arguments, passed as they are (no shell).
    pub args: Vec<String>,
    /// After SIGTERM (job cancelled), how long before SIGKILL.
    pub kill_grace: Duration,
}

/// `MESSAGE_ATTR_<NAME>`: attribute names upper-cased, anything but A-Z0-9_ made `_`.
pub(crate) fn attr_env_name(name: &str) -> String {
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

/// Reads `reader` to the end, calling `each` with every line (without its `\n` / `\r\n`).
/// Memory stays bounded whatever the child writes: a line longer than [`MAX_LINE`] bytes is cut
/// (`each` gets `true`) and the rest of it is read and dropped; bytes that are not UTF-8 become
/// U+FFFD instead of ending the read (which would close the pipe and kill the child with SIGPIPE).
async fn for_each_line<R: tokio::io::AsyncRead + Unpin>(
    reader: R,
    mut each: impl FnMut(&str, bool),
) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut emit = |line: &mut Vec<u8>, cut: &mut bool| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        each(&String::from_utf8_lossy(line), *cut);
        line.clear();
        *cut = false;
    };
    // A read error ends the stream like EOF does.
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            if !line.is_empty() || cut {
                emit(&mut line, &mut cut);
            }
            break;
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let part = &buf[..newline.unwrap_or(buf.len())];
        let room = MAX_LINE.saturating_sub(line.len());
        if part.len() > room {
            line.extend_from_slice(&part[..room]);
            cut = true;
        } else {
            line.extend_from_slice(part);
        }
        let used = newline.map_or(buf.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            emit(&mut line, &mut cut);
        }
    }
}

/// Logs a child's output stream line by line, at most [`MAX_LINES`] lines; the rest is still read
/// (so the child never blocks on a full pipe) and only counted.
async fn log_lines<R: tokio::io::AsyncRead + Unpin>(reader: R, stream: &'static str) {
    let mut logged = 0usize;
    let mut dropped = 0u64;
    for_each_line(reader, |line, cut| {
        if logged < MAX_LINES {
            logged += 1;
            let more = if cut { "…" } else { "" };
            tracing::info!(stream, "{line}{more}");
        } else {
            dropped += 1;
        }
    })
    .await;
    if dropped > 0 {
        tracing::warn!(
            stream,
            lines = dropped,
            "{dropped} more output lines not logged (at most {MAX_LINES} per stream and job)"
        );
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
            .env("QUEUE_NAME", &*job.queue_name)
            // A job abandoned by the worker must not leave its process behind.
            .kill_on_drop(true);
        if let Some(g) = &job.group_id {
            cmd.env("MESSAGE_GROUP_ID", g);
        }
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

    async fn lines_of(input: Vec<u8>) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for_each_line(&input[..], |l, cut| out.push((l.to_string(), cut))).await;
        out
    }

    #[tokio::test]
    async fn output_lines_are_bounded_lossy_and_complete() {
        let mut input = b"one\r\ntwo\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        input.extend(b"\nbad \xff\xfe bytes\nlast");
        let lines = lines_of(input).await;
        assert_eq!(
            lines.len(),
            5,
            "{:?}",
            lines.iter().map(|l| l.0.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], ("one".into(), false));
        assert_eq!(lines[1], ("two".into(), false));
        assert_eq!(lines[2].0.len(), MAX_LINE, "a 10 MB line is cut");
        assert!(lines[2].1);
        assert_eq!(lines[3], ("bad \u{fffd}\u{fffd} bytes".into(), false));
        assert_eq!(
            lines[4],
            ("last".into(), false),
            "a last line without newline"
        );
    }
}
