//! The SNS envelope: a topic subscription without raw delivery wraps each published message in a
//! JSON notification whose `Message` field is the published string.

use std::collections::HashMap;

/// Why an SNS-looking body could not be unwrapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("SNS notification envelope without a string \"Message\" field")]
pub(crate) struct BrokenEnvelope;

/// Removes the SNS envelope from `body`, returning the published message and
/// the envelope's message attributes. Bodies that are not SNS notifications come back unchanged.
pub(crate) fn unwrap_sns(body: &str) -> Result<(String, HashMap<String, String>), BrokenEnvelope> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sns_envelopes_are_unwrapped() {
        let env = r#"{"Type":"Notification","MessageId":"m","TopicArn":"arn:aws:sns:us-east-1:1:t","Message":"{\"duration\":\"2s\"}","Timestamp":"t","MessageAttributes":{"k":{"Type":"String","Value":"v"}}}"#;
        let (body, attrs) = unwrap_sns(env).expect("valid envelope");
        assert_eq!(body, r#"{"duration":"2s"}"#);
        assert_eq!(attrs.get("k").map(String::as_str), Some("v"));
        let inner = crate::handler::simulated::parse_sim_body(&body).expect("inner");
        assert_eq!(inner.duration, std::time::Duration::from_millis(2000));
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
}
