//! Protection through the ECS agent endpoint: `PUT $ECS_AGENT_URI/task-protection/v1/state`.
//!
//! [`classify`] reads every reply shape the agent sends, deciding on status and `Code`, never on
//! message text. A refusal can arrive inside an HTTP 200 (`failure`).

use serde::Deserialize;

use super::{BoxFuture, Granted, ProtectionBackend, ProtectionError};
use crate::limits::ECS_AGENT_CLIENT_TIMEOUT;

const FIX_PERMISSIONS: &str = "grant ecs:UpdateTaskProtection and ecs:GetTaskProtection to the task role (the addon in copilot/queue-worker/addons does)";
const FIX_NOT_SERVICE: &str =
    "task protection only works for tasks started by an ECS service: run the worker as a service, or pass --protection off";

#[derive(Deserialize)]
struct Reply {
    protection: Option<ProtectionBody>,
    failure: Option<FailureBody>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProtectionBody {
    protection_enabled: bool,
    expiration_date: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailureBody {
    reason: Option<String>,
    detail: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

/// A refusal reason of ECS (`failure.Reason` or an error `Code`) mapped to retry-or-not.
pub(crate) fn classify_reason(reason: &str, detail: &str) -> ProtectionError {
    match reason {
        "TASK_NOT_VALID" => ProtectionError::Permanent {
            problem: format!("ECS refused protection: TASK_NOT_VALID {detail}")
                .trim_end()
                .to_string(),
            fix: FIX_NOT_SERVICE.into(),
        },
        "DEPLOYMENT_BLOCKED" => ProtectionError::Blocked(
            format!("DEPLOYMENT_BLOCKED {detail}")
                .trim_end()
                .to_string(),
        ),
        "AccessDeniedException" => ProtectionError::Permanent {
            problem: format!("ECS denied UpdateTaskProtection ({detail})"),
            fix: FIX_PERMISSIONS.into(),
        },
        other => ProtectionError::Transient(
            format!("ECS refused protection: {other} {detail}")
                .trim_end()
                .to_string(),
        ),
    }
}

/// Maps an agent reply (status, body) to a result.
pub(crate) fn classify(status: u16, body: &str) -> Result<Granted, ProtectionError> {
    if status == 429 {
        return Err(ProtectionError::Transient(
            "agent rate limit (HTTP 429)".into(),
        ));
    }
    let parsed: Option<Reply> = serde_json::from_str(body).ok();
    if let Some(Reply {
        protection: Some(p),
        failure: None,
        ..
    }) = &parsed
    {
        if status == 200 {
            return Ok(Granted {
                enabled: p.protection_enabled,
                expiration: p.expiration_date.clone(),
            });
        }
    }
    if let Some(Reply {
        failure: Some(f), ..
    }) = &parsed
    {
        // HTTP 200 with a failure: the task is NOT protected.
        return Err(classify_reason(
            f.reason.as_deref().unwrap_or("unknown"),
            f.detail.as_deref().unwrap_or(""),
        ));
    }
    let (code, message) = match parsed.as_ref().and_then(|r| r.error.as_ref()) {
        Some(e) => (
            e.code.clone().unwrap_or_default(),
            e.message.clone().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    match (status, code.as_str()) {
        (_, "ThrottlingException") => Err(ProtectionError::Transient(format!(
            "ECS throttled the agent: {message}"
        ))),
        (_, "AccessDeniedException") => Err(classify_reason("AccessDeniedException", &message)),
        (403, _) => Err(ProtectionError::Permanent {
            problem: format!("agent answered 403 ({code}): the task has no task role"),
            fix: format!("give the task a role; then {FIX_PERMISSIONS}"),
        }),
        (404, _) => Err(ProtectionError::Permanent {
            problem: format!(
                "agent answered 404 ({code}): ECS_AGENT_URI does not name this task's endpoint"
            ),
            fix: "run the worker inside the ECS task whose ECS_AGENT_URI it was given".into(),
        }),
        (s, _) if s >= 500 => Err(ProtectionError::Transient(
            format!("agent answered HTTP {s} {code}")
                .trim_end()
                .to_string(),
        )),
        (200, _) => Err(ProtectionError::Transient(
            "agent answered 200 with an unreadable body".into(),
        )),
        (s, "") => Err(ProtectionError::Transient(format!(
            "agent answered HTTP {s} with no error code"
        ))),
        (s, _) => Err(ProtectionError::Permanent {
            problem: format!("agent answered HTTP {s} {code}: {message}"),
            fix: "report this: the worker sent a request the agent does not accept".into(),
        }),
    }
}

/// The agent endpoint client.
pub(crate) struct AgentBackend {
    http: reqwest::Client,
    url: String,
}

impl AgentBackend {
    pub(crate) fn new(agent_uri: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(ECS_AGENT_CLIENT_TIMEOUT)
            .connect_timeout(std::time::Duration::from_secs(2))
            .build()?;
        Ok(Self {
            http,
            url: format!(
                "{}/task-protection/v1/state",
                agent_uri.trim_end_matches('/')
            ),
        })
    }
}

impl ProtectionBackend for AgentBackend {
    fn set(&self, enabled: bool, minutes: u32) -> BoxFuture<'_, Result<Granted, ProtectionError>> {
        let body = if enabled {
            format!(r#"{{"ProtectionEnabled":true,"ExpiresInMinutes":{minutes}}}"#)
        } else {
            r#"{"ProtectionEnabled":false}"#.to_string()
        };
        Box::pin(async move {
            let resp = self
                .http
                .put(&self.url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    let what = if e.is_timeout() {
                        "timed out"
                    } else {
                        "unreachable"
                    };
                    ProtectionError::Transient(format!("agent endpoint {what}: {e}"))
                })?;
            let status = resp.status().as_u16();
            let text = resp
                .text()
                .await
                .map_err(|e| ProtectionError::Transient(format!("agent reply cut short: {e}")))?;
            classify(status, &text)
        })
    }

    fn name(&self) -> &'static str {
        "agent"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(r: Result<Granted, ProtectionError>) -> bool {
        matches!(r, Err(ProtectionError::Transient(_)))
    }
    fn permanent(r: Result<Granted, ProtectionError>) -> bool {
        matches!(r, Err(ProtectionError::Permanent { .. }))
    }

    #[test]
    fn success_shapes() {
        let on = r#"{"protection":{"ExpirationDate":"2026-01-01T00:05:00.123Z","ProtectionEnabled":true,"TaskArn":"arn:t"}}"#;
        assert_eq!(
            classify(200, on),
            Ok(Granted {
                enabled: true,
                expiration: Some("2026-01-01T00:05:00.123Z".into())
            })
        );
        let off =
            r#"{"protection":{"ExpirationDate":null,"ProtectionEnabled":false,"TaskArn":"arn:t"}}"#;
        assert_eq!(
            classify(200, off),
            Ok(Granted {
                enabled: false,
                expiration: None
            })
        );
    }

    #[test]
    fn failure_inside_200_is_not_protection() {
        let f = r#"{"failure":{"Arn":"arn:t","Detail":null,"Reason":"TASK_NOT_VALID"}}"#;
        let e = classify(200, f).expect_err("refused");
        assert!(
            matches!(&e, ProtectionError::Permanent { fix, .. } if fix.contains("service")),
            "{e}"
        );
        assert!(matches!(
            classify(
                200,
                r#"{"failure":{"Arn":"a","Detail":"d","Reason":"DEPLOYMENT_BLOCKED"}}"#
            ),
            Err(ProtectionError::Blocked(_))
        ));
        assert!(transient(classify(
            200,
            r#"{"failure":{"Arn":"a","Detail":"d","Reason":"SOMETHING_NEW"}}"#
        )));
    }

    #[test]
    fn errors_are_decided_by_code() {
        let body = |code: &str, msg: &str| {
            format!(
                r#"{{"requestID":"r","error":{{"Arn":"a","Code":"{code}","Message":"{msg}"}}}}"#
            )
        };
        assert!(transient(classify(
            400,
            &body("ThrottlingException", "Rate exceeded")
        )));
        let denied = classify(400, &body("AccessDeniedException", "not authorized"));
        assert!(
            matches!(&denied, Err(ProtectionError::Permanent { fix, .. }) if fix.contains("ecs:UpdateTaskProtection"))
        );
        assert!(permanent(classify(
            400,
            &body("InvalidParameterException", "bad")
        )));
        // Message text that looks like throttling does not make a retry.
        assert!(permanent(classify(
            400,
            &body("InvalidParameterException", "Rate exceeded")
        )));
        assert!(permanent(classify(
            403,
            &body("AccessDeniedException", "no role")
        )));
        assert!(permanent(classify(403, &body("Forbidden", "no task role"))));
        assert!(permanent(classify(
            404,
            &body("NotFound", "unknown endpoint")
        )));
        assert!(transient(classify(500, &body("ServerException", "boom"))));
        assert!(transient(classify(
            504,
            &body("RequestCanceled", "timed out")
        )));
    }

    #[test]
    fn plain_text_and_garbage() {
        assert!(transient(classify(429, "Too Many Requests\n")));
        assert!(transient(classify(502, "<html>bad gateway</html>")));
        assert!(transient(classify(200, "")));
        assert!(transient(classify(200, "{\"protection\":")));
        assert!(transient(classify(400, "not json")));
    }
}
