//! The default handler: the body says how long to "work" (`10000` ms, `10s`, or JSON with
//! `duration`, `fail`, `fail_times`), so the worker can be tried without writing a handler.

use std::time::Duration;

use serde::Deserialize;

use super::{Handler, Job, Outcome};

/// What the simulated job was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SimSpec {
    pub(crate) duration: Duration,
    /// Fail on every receive.
    pub(crate) fail: bool,
    /// Fail while the receive count is at most this, then succeed.
    pub(crate) fail_times: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SimJson {
    duration: Option<serde_json::Value>,
    duration_ms: Option<u64>,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    fail_times: u32,
}

/// Why a body is not a simulated job.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("body ({bytes} bytes) is not a job: expected milliseconds (10000), a duration (10s, 5m) or JSON like {{\"duration\":\"10s\",\"fail\":true}} ({detail})")]
pub(crate) struct BadBody {
    bytes: usize,
    /// The start of the body, for a debug line: bodies never reach info-level logs.
    pub(crate) shown: String,
    detail: String,
}

fn bad(body: &str, detail: impl Into<String>) -> BadBody {
    // Never echo a whole (possibly 1 MiB, possibly sensitive) body into a log line.
    let mut shown: String = body.chars().take(40).collect();
    if shown.len() < body.len() {
        shown.push('…');
    }
    BadBody {
        bytes: body.len(),
        shown: format!("{shown:?}"),
        detail: detail.into(),
    }
}

/// Parses a simulated job's body: `10000` (ms, as in the AWS sample), `10s`, or JSON.
pub(crate) fn parse_sim_body(body: &str) -> Result<SimSpec, BadBody> {
    let t = body.trim();
    let plain = |duration| SimSpec {
        duration,
        fail: false,
        fail_times: 0,
    };
    if t.is_empty() {
        return Err(bad(body, "empty"));
    }
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(plain(Duration::from_millis(ms)));
    }
    if t.starts_with('{') {
        let j: SimJson = serde_json::from_str(t).map_err(|e| bad(body, e.to_string()))?;
        let duration = match (&j.duration, j.duration_ms) {
            (Some(_), Some(_)) => return Err(bad(body, "give duration or duration_ms, not both")),
            (Some(serde_json::Value::String(s)), None) => {
                humantime::parse_duration(s).map_err(|e| bad(body, format!("duration: {e}")))?
            }
            (Some(serde_json::Value::Number(n)), None) => Duration::from_millis(
                n.as_u64()
                    .ok_or_else(|| bad(body, "duration must be whole milliseconds"))?,
            ),
            (Some(_), None) => {
                return Err(bad(
                    body,
                    "duration must be a string like \"10s\" or milliseconds",
                ))
            }
            (None, Some(ms)) => Duration::from_millis(ms),
            (None, None) => Duration::ZERO,
        };
        return Ok(SimSpec {
            duration,
            fail: j.fail,
            fail_times: j.fail_times,
        });
    }
    humantime::parse_duration(t)
        .map(plain)
        .map_err(|e| bad(body, e.to_string()))
}

/// The default handler: sleeps for the duration the body asks for, and fails when told to.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimulatedJob;

/// Simulated jobs at least this long get an info line when they start.
const LONG_JOB: Duration = Duration::from_secs(1);

impl Handler for SimulatedJob {
    async fn handle(&self, job: Job) -> Outcome {
        let spec = match parse_sim_body(&job.body) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(message_id = %job.message_id, body = %e.shown, "body not understood");
                return Outcome::permanent(e.to_string());
            }
        };
        // Announce long jobs (what is in flight matters to an operator); for short ones the
        // "done" line is enough, and a second line per job is a large share of the CPU.
        if spec.duration >= LONG_JOB {
            tracing::info!(
                message_id = %job.message_id,
                receive_count = job.receive_count,
                "working for {} ms",
                spec.duration.as_millis()
            );
        } else {
            tracing::debug!(message_id = %job.message_id, "working for {} ms", spec.duration.as_millis());
        }
        // A zero-length job needs no timer (and no extra turn of the runtime to fire it).
        if !spec.duration.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(spec.duration) => {}
                _ = job.cancel.cancelled() => return Outcome::retry("cancelled at the shutdown deadline"),
            }
        }
        if spec.fail {
            Outcome::retry("simulated failure (\"fail\": true)")
        } else if job.receive_count <= spec.fail_times {
            Outcome::retry(format!(
                "simulated failure {} of {}",
                job.receive_count, spec.fail_times
            ))
        } else {
            Outcome::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn body_forms() {
        assert_eq!(parse_sim_body("10000").expect("ms").duration, ms(10_000));
        assert_eq!(parse_sim_body(" 0 ").expect("zero").duration, ms(0));
        assert_eq!(parse_sim_body("10s").expect("10s").duration, ms(10_000));
        assert_eq!(parse_sim_body("5m").expect("5m").duration, ms(300_000));
        assert_eq!(parse_sim_body("250ms").expect("250ms").duration, ms(250));
        let j = parse_sim_body(r#"{"duration": "10s", "fail": true}"#).expect("json");
        assert_eq!(
            j,
            SimSpec {
                duration: ms(10_000),
                fail: true,
                fail_times: 0
            }
        );
        let j = parse_sim_body(r#"{"duration_ms": 2000, "fail_times": 2}"#).expect("json ms");
        assert_eq!(
            j,
            SimSpec {
                duration: ms(2000),
                fail: false,
                fail_times: 2
            }
        );
        assert_eq!(
            parse_sim_body(r#"{"duration": 1500}"#)
                .expect("number")
                .duration,
            ms(1500)
        );
    }

    #[test]
    fn bad_bodies_are_errors_not_instant_successes() {
        for b in [
            "",
            "   ",
            "hello",
            "-5",
            "10 parsecs",
            "{",
            r#"{"duration":"soon"}"#,
            r#"{"durration":"1s"}"#,
            r#"{"duration":"1s","duration_ms":5}"#,
            r#"{"duration":-1}"#,
            r#"[1,2]"#,
            "\u{0}\u{1}binary",
        ] {
            let e = parse_sim_body(b).expect_err(b);
            assert!(e.to_string().contains("is not a job"), "{b}: {e}");
        }
    }

    #[test]
    fn error_message_never_carries_a_whole_big_body() {
        let big = "x".repeat(1024 * 1024);
        let e = parse_sim_body(&big).expect_err("not a job").to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
    }

    #[tokio::test(start_paused = true)]
    async fn simulated_job_sleeps_fails_and_recovers() {
        let job = Job::for_test;
        let start = tokio::time::Instant::now();
        assert_eq!(SimulatedJob.handle(job("3s", 1)).await, Outcome::Success);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert!(matches!(
            SimulatedJob.handle(job(r#"{"fail":true}"#, 9)).await,
            Outcome::Retry { .. }
        ));
        let flaky = r#"{"duration_ms":1,"fail_times":2}"#;
        assert!(matches!(
            SimulatedJob.handle(job(flaky, 2)).await,
            Outcome::Retry { .. }
        ));
        assert_eq!(SimulatedJob.handle(job(flaky, 3)).await, Outcome::Success);
        assert!(matches!(
            SimulatedJob.handle(job("nope", 1)).await,
            Outcome::Permanent { .. }
        ));
    }
}
