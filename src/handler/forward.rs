//! `--forward-to URL`: POST each body to a local HTTP app, like Elastic Beanstalk's worker daemon
//! (sqsd), with its header names. 2xx deletes; 429/503 with `Retry-After` sets the message's
//! visibility to that delay; anything else retries with backoff.

use std::time::{Duration, UNIX_EPOCH};

use super::{Handler, Job, Outcome};

/// POSTs each body to a local app, sqsd-style.
#[derive(Debug, Clone)]
pub struct ForwardHandler {
    client: reqwest::Client,
    url: String,
}

/// Header values must be visible ASCII; attribute values that are not are left out.
fn header_safe(v: &str) -> bool {
    v.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
}

fn epoch_ms_to_rfc3339(ms: &str) -> Option<String> {
    let ms: u64 = ms.parse().ok()?;
    Some(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string())
}

/// `Retry-After` in seconds (HTTP dates are not used by local apps; they count as absent).
pub(crate) fn retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl ForwardHandler {
    /// One pooled client for every job: connections to the app are reused. `timeout` bounds
    /// each request.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("aws-sqsd/queue-worker-", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            url: url.to_string(),
        })
    }

    /// Waits until `health_url` answers 2xx (the app is up), or `cancel` fires (false).
    pub async fn wait_ready(
        &self,
        health_url: &str,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let mut logged = false;
        loop {
            match self.client.get(health_url).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(health_url, "app is ready; starting to poll");
                    return true;
                }
                other => {
                    if !logged {
                        let why = match other {
                            Ok(r) => format!("HTTP {}", r.status()),
                            Err(e) => e.to_string(),
                        };
                        tracing::info!(health_url, why, "waiting for the app before polling");
                        logged = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = cancel.cancelled() => return false,
            }
        }
    }
}

impl Handler for ForwardHandler {
    async fn handle(&self, job: Job) -> Outcome {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("X-Aws-Sqsd-Msgid", &job.message_id)
            .header("X-Aws-Sqsd-Receive-Count", job.receive_count.to_string())
            .header("X-Aws-Sqsd-Queue", &*job.queue_name);
        if let Some(g) = job.group_id.as_deref().filter(|g| header_safe(g)) {
            req = req.header("X-Aws-Sqsd-Message-Group-Id", g);
        }
        if let Some(t) = job
            .attributes
            .get("ApproximateFirstReceiveTimestamp")
            .and_then(|t| epoch_ms_to_rfc3339(t))
        {
            req = req.header("X-Aws-Sqsd-First-Received-At", t);
        }
        if let Some(t) = job
            .attributes
            .get("SentTimestamp")
            .and_then(|t| epoch_ms_to_rfc3339(t))
        {
            req = req.header("X-Aws-Sqsd-Sent-At", t);
        }
        for (k, v) in &job.message_attributes {
            let name_ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if name_ok && header_safe(v) {
                req = req.header(format!("X-Aws-Sqsd-Attr-{k}"), v);
            }
        }
        let sent = tokio::select! {
            r = req.body(job.body).send() => r,
            _ = job.cancel.cancelled() => return Outcome::retry("cancelled while the app was working"),
        };
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Success,
            Ok(r) if matches!(r.status().as_u16(), 429 | 503) => {
                let delay =
                    retry_after(r.headers().get("retry-after").and_then(|v| v.to_str().ok()));
                Outcome::Retry {
                    reason: format!("app answered {}", r.status()),
                    delay,
                }
            }
            Ok(r) => Outcome::retry(format!("app answered {}", r.status())),
            Err(e) if e.is_timeout() => {
                Outcome::retry("app did not answer within --forward-timeout")
            }
            Err(e) => Outcome::retry(format!("app unreachable: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_only() {
        assert_eq!(retry_after(Some("30")), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(Some(" 5 ")), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn timestamps_become_rfc3339() {
        assert_eq!(
            epoch_ms_to_rfc3339("1700000000123").as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(epoch_ms_to_rfc3339("soon"), None);
    }
}
