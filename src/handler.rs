//! The handler boundary: what a job receives ([`Job`]), what it answers ([`Outcome`]), and the
//! default [`SimulatedJob`] whose body says how long to "work".

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// One received message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    pub message_id: String,
    /// The body, with an SNS notification envelope removed (see [`unwrap_sns`]).
    pub body: String,
    /// `ApproximateReceiveCount`: 1 on the first delivery.
    pub receive_count: u32,
    /// SQS system attributes (`SentTimestamp`, `MessageGroupId`, ...).
    pub attributes: HashMap<String, String>,
    /// String and number message attributes (binary ones are left out), SNS ones included.
    pub message_attributes: HashMap<String, String>,
    /// Fires at the shutdown deadline: finish or give up now, the message is going back.
    pub cancel: CancellationToken,
}

/// What a job ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: delete the message.
    Success,
    /// Failed, may succeed later: make the message visible again after `delay`, or after the
    /// worker's backoff for its receive count when `None`.
    Retry {
        reason: String,
        delay: Option<Duration>,
    },
    /// Will never succeed (bad body...): dead-letter it now when the worker has a dead-letter
    /// queue, otherwise retry with backoff until the queue's redrive policy moves it.
    Permanent { reason: String },
}

impl Outcome {
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            reason: reason.into(),
            delay: None,
        }
    }
    pub fn permanent(reason: impl Into<String>) -> Self {
        Outcome::Permanent {
            reason: reason.into(),
        }
    }
}

/// A job handler. Implement it for your own work, or wrap an async fn with [`handler_fn`].
pub trait Handler: Send + Sync + 'static {
    /// Runs one job. The future may borrow the handler: it is awaited inside the job's task.
    fn handle(&self, job: Job) -> impl Future<Output = Outcome> + Send;
}

/// A handler made from an async closure.
pub struct FnHandler<F>(F);

/// Turns `|job| async move { ... Outcome::Success }` into a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn handle(&self, job: Job) -> impl Future<Output = Outcome> + Send {
        (self.0)(job)
    }
}

/// Why an SNS-looking body could not be unwrapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("SNS notification envelope without a string \"Message\" field")]
pub struct BrokenEnvelope;

/// Removes the SNS envelope (platform-facts §4) from `body`, returning the published message and
/// the envelope's message attributes. Bodies that are not SNS notifications come back unchanged.
pub fn unwrap_sns(body: &str) -> Result<(String, HashMap<String, String>), BrokenEnvelope> {
    // Cheap pre-check so plain bodies are never parsed as JSON.
    if !body.trim_start().starts_with('{') || !body.contains("\"Notification\"") {
        return Ok((body.to_string(), HashMap::new()));
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body) else {
        return Ok((body.to_string(), HashMap::new()));
    };
    let is_sns = map.get("Type").and_then(|t| t.as_str()) == Some("Notification")
        && map.contains_key("TopicArn");
    if !is_sns {
        return Ok((body.to_string(), HashMap::new()));
    }
    let message = map
        .get("Message")
        .and_then(|m| m.as_str())
        .ok_or(BrokenEnvelope)?;
    let mut attrs = HashMap::new();
    if let Some(serde_json::Value::Object(a)) = map.get("MessageAttributes") {
        for (k, v) in a {
            if let Some(value) = v.get("Value").and_then(|x| x.as_str()) {
                attrs.insert(k.clone(), value.to_string());
            }
        }
    }
    Ok((message.to_string(), attrs))
}

/// What the simulated job was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSpec {
    pub duration: Duration,
    /// Fail on every receive.
    pub fail: bool,
    /// Fail while the receive count is at most this, then succeed.
    pub fail_times: u32,
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
pub struct BadBody {
    bytes: usize,
    /// The start of the body, for a debug line: bodies never reach info-level logs.
    pub shown: String,
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
pub fn parse_sim_body(body: &str) -> Result<SimSpec, BadBody> {
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

    #[test]
    fn sns_envelopes_are_unwrapped() {
        let env = r#"{"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":"{\"duration\":\"2s\"}","Timestamp":"t","MessageAttributes":{"k":{"Type":"String","Value":"v"}}}"#;
        let (body, attrs) = unwrap_sns(env).expect("valid envelope");
        assert_eq!(body, r#"{"duration":"2s"}"#);
        assert_eq!(attrs.get("k").map(String::as_str), Some("v"));
        assert_eq!(parse_sim_body(&body).expect("inner").duration, ms(2000));
    }

    #[test]
    fn non_sns_bodies_pass_through_and_broken_envelopes_fail() {
        for b in [
            "5s",
            r#"{"duration":"1s"}"#,
            r#"{"Type":"Notification"}"#,
            "{not json \"Notification\"",
        ] {
            assert_eq!(unwrap_sns(b).expect("passes").0, b);
        }
        let broken = r#"{"Type":"Notification","TopicArn":"arn:aws:sns:x","Message":{"a":1}}"#;
        assert_eq!(unwrap_sns(broken), Err(BrokenEnvelope));
    }

    #[tokio::test(start_paused = true)]
    async fn simulated_job_sleeps_fails_and_recovers() {
        let job = |body: &str, rc: u32| Job {
            message_id: "m".into(),
            body: body.into(),
            receive_count: rc,
            attributes: HashMap::new(),
            message_attributes: HashMap::new(),
            cancel: CancellationToken::new(),
        };
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
