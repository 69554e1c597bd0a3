//! `ReceiveMessage` and `DeleteMessageBatch`, the two calls that carry all of a busy worker's SQS
//! traffic, sent without the SDK's request pipeline (interceptors, config layers, retry
//! classifiers, the smithy JSON codec), which cost about a third of the worker's CPU per message.
//!
//! What the SDK would do is kept: the same HTTP client and TLS stack, the SDK's own endpoint rules
//! (region, FIPS, dual-stack, `AWS_ENDPOINT_URL[_SQS]`), the same credentials chain, and SQS's
//! JSON protocol with its query-compatible error codes. SigV4 is computed here for the one
//! request shape sent (POST, fixed headers, no query), with the signing key kept for the day:
//! the SDK's general-purpose signer cost 15 µs a request. `tests/it/wire.rs` checks every
//! signature against a verifier that accepts the SDK's own requests. Retries
//! are left to the callers, which already back off: the poll loop and the deleter.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorSettings};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use ring::{digest, hmac};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::sqs::{Received, SqsError, SYSTEM_ATTRIBUTES};

const CONTENT_TYPE: &str = "application/x-amz-json-1.0";
/// Credentials are fetched again this long before they expire (the SDK's cache does the same).
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The SDK's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);
/// Beyond the long poll: a request that has not answered by then is on a dead connection.
const ANSWER_MARGIN: Duration = Duration::from_secs(15);
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("queue-worker/", env!("CARGO_PKG_VERSION"));
const BATCH_IDS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Where and as whom the calls go, as the SDK would resolve it.
#[derive(Debug, Clone)]
pub struct WireSettings {
    pub region: String,
    /// An endpoint override (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, or set in code).
    pub endpoint_url: Option<String>,
    pub use_fips: bool,
    pub use_dual_stack: bool,
}

impl WireSettings {
    /// The settings an SQS client built from `sdk` would use; `None` without a region.
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Option<Self> {
        Some(Self {
            region: sdk.region()?.to_string(),
            endpoint_url: sqs_endpoint_url(sdk),
            use_fips: sdk.use_fips().unwrap_or(false),
            use_dual_stack: sdk.use_dual_stack().unwrap_or(false),
        })
    }
}

/// The SQS client's rule for its endpoint override: one set in code wins, then a service-specific
/// one (`AWS_ENDPOINT_URL_SQS`, or `endpoint_url` under `services` in the profile), then the
/// global one.
fn sqs_endpoint_url(sdk: &aws_config::SdkConfig) -> Option<String> {
    if sdk.get_origin("endpoint_url").is_client_config() {
        return sdk.endpoint_url().map(str::to_string);
    }
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("SQS")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()?;
    sdk.service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| sdk.endpoint_url().map(str::to_string))
}

/// Credentials with the SigV4 signing key derived from them for one UTC day. The key depends
/// only on the secret, the day, the region and the service: derived once a day, not per request.
#[derive(Clone)]
struct Signer {
    creds: Credentials,
    day: String,
    key: hmac::Key,
}

impl Signer {
    fn new(creds: Credentials, day: &str, region: &str) -> Self {
        let step = |key: &[u8], data: &str| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        };
        let k_date = step(format!("AWS4{}", creds.secret_access_key()).as_bytes(), day);
        let k_region = step(k_date.as_ref(), region);
        let k_service = step(k_region.as_ref(), "sqs");
        let k_signing = step(k_service.as_ref(), "aws4_request");
        Self {
            creds,
            day: day.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref()),
        }
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// The direct SQS client: one per worker, shared by its pollers and deleters.
pub struct SqsWire {
    connector: aws_smithy_http_client::Connector,
    /// The resolved endpoint, ending in `/` (the JSON protocol posts every operation there).
    endpoint: String,
    /// Its authority and path, as signed.
    host: String,
    path: String,
    region: String,
    provider: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<Signer>>,
}

impl std::fmt::Debug for SqsWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsWire")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn config_error(detail: impl ToString) -> SqsError {
    SqsError::new("ResolveEndpoint", "config", detail)
}

impl SqsWire {
    pub async fn new(
        settings: &WireSettings,
        provider: SharedCredentialsProvider,
    ) -> Result<Self, SqsError> {
        use aws_sdk_sqs::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
        let params = Params::builder()
            .region(settings.region.clone())
            .use_fips(settings.use_fips)
            .use_dual_stack(settings.use_dual_stack)
            .set_endpoint(settings.endpoint_url.clone())
            .build()
            .map_err(config_error)?;
        let resolved = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(config_error)?;
        let mut endpoint = resolved.url().to_string();
        if !endpoint.ends_with('/') {
            endpoint.push('/');
        }
        let uri = endpoint
            .parse::<http::Uri>()
            .map_err(|e| config_error(format!("endpoint {endpoint:?}: {e}")))?;
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or_else(|| config_error(format!("endpoint {endpoint:?} has no host")))?;
        let path = uri.path().to_string();
        let connector = aws_smithy_http_client::Connector::builder()
            .connector_settings(
                HttpConnectorSettings::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            )
            .sleep_impl(aws_smithy_async::rt::sleep::TokioSleep::new())
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build();
        Ok(Self {
            connector,
            endpoint,
            host,
            path,
            region: settings.region.clone(),
            provider,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The resolved endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The credentials and today's signing key, fetched again shortly before they expire.
    async fn signer(&self, op: &'static str, day: &str) -> Result<Signer, SqsError> {
        let mut cached = self.cached.lock().await;
        if let Some(s) = cached.as_mut() {
            let fresh = s
                .creds
                .expiry()
                .is_none_or(|e| SystemTime::now() + REFRESH_BEFORE < e);
            if fresh {
                if s.day != day {
                    *s = Signer::new(s.creds.clone(), day, &self.region);
                }
                return Ok(s.clone());
            }
        }
        let creds = self
            .provider
            .provide_credentials()
            .await
            .map_err(|e| SqsError::new(op, "CredentialsError", DisplayErrorContext(&e)))?;
        let signer = Signer::new(creds, day, &self.region);
        *cached = Some(signer.clone());
        Ok(signer)
    }

    /// Builds the request for `op` with a JSON `body`, signed (SigV4) for `time`.
    pub async fn signed_request(
        &self,
        op: &'static str,
        body: Vec<u8>,
        time: SystemTime,
    ) -> Result<HttpRequest, SqsError> {
        let secs = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| SqsError::new(op, "signing", e))?
            .as_secs();
        // RFC 3339 without separators: 2026-11-23T06:30:00Z -> 20261123T063000Z.
        let amz_date: String = aws_smithy_types::DateTime::from_secs(secs as i64)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .map_err(|e| SqsError::new(op, "signing", e))?
            .chars()
            .filter(|c| *c != '-' && *c != ':')
            .collect();
        let day = amz_date.get(..8).unwrap_or_default();
        let signer = self.signer(op, day).await?;
        let token = signer.creds.session_token();
        let signed_headers = if token.is_some() {
            "content-length;content-type;host;x-amz-date;x-amz-security-token;x-amz-target;x-amzn-query-mode"
        } else {
            "content-length;content-type;host;x-amz-date;x-amz-target;x-amzn-query-mode"
        };
        let length = body.len().to_string();
        let target = format!("AmazonSQS.{op}");
        // The canonical request of SigV4, for the one shape this client sends: POST to the
        // endpoint's path, no query, the headers above in sorted order.
        let mut canonical = String::with_capacity(640);
        canonical.push_str("POST\n");
        canonical.push_str(&self.path);
        canonical.push_str("\n\ncontent-length:");
        canonical.push_str(&length);
        canonical.push_str("\ncontent-type:");
        canonical.push_str(CONTENT_TYPE);
        canonical.push_str("\nhost:");
        canonical.push_str(&self.host);
        canonical.push_str("\nx-amz-date:");
        canonical.push_str(&amz_date);
        if let Some(t) = token {
            canonical.push_str("\nx-amz-security-token:");
            canonical.push_str(t.trim());
        }
        canonical.push_str("\nx-amz-target:");
        canonical.push_str(&target);
        canonical.push_str("\nx-amzn-query-mode:true\n\n");
        canonical.push_str(signed_headers);
        canonical.push('\n');
        push_hex(
            &mut canonical,
            digest::digest(&digest::SHA256, &body).as_ref(),
        );
        let scope = format!("{day}/{}/sqs/aws4_request", self.region);
        let mut to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n");
        push_hex(
            &mut to_sign,
            digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref(),
        );
        let mut authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature=",
            signer.creds.access_key_id()
        );
        push_hex(
            &mut authorization,
            hmac::sign(&signer.key, to_sign.as_bytes()).as_ref(),
        );

        let mut req = HttpRequest::new(SdkBody::from(body));
        req.set_method("POST")
            .map_err(|e| SqsError::new(op, "request", e))?;
        req.set_uri(self.endpoint.as_str())
            .map_err(|e| SqsError::new(op, "request", e))?;
        let h = req.headers_mut();
        // Host is set (not left to hyper) so that what is sent is exactly what was signed.
        h.insert("host", self.host.clone());
        h.insert("content-type", CONTENT_TYPE);
        h.insert("content-length", length);
        h.insert("x-amz-date", amz_date);
        if let Some(t) = token {
            h.insert("x-amz-security-token", t.trim().to_string());
        }
        h.insert("x-amz-target", target);
        // SQS then reports the query API's error codes, as it does to the SDK.
        h.insert("x-amzn-query-mode", "true");
        h.insert("authorization", authorization);
        h.insert("user-agent", USER_AGENT);
        Ok(req)
    }

    /// Sends `op` and returns the body of a 2xx answer.
    async fn call(
        &self,
        op: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, SqsError> {
        let req = self.signed_request(op, body, SystemTime::now()).await?;
        let exchange = async {
            let resp = self
                .connector
                .call(req)
                .await
                .map_err(|e| SqsError::new(op, "transport", DisplayErrorContext(&e)))?;
            let status = resp.status().as_u16();
            let query_error = resp.headers().get("x-amzn-query-error").map(str::to_string);
            let bytes = ByteStream::new(resp.into_body())
                .collect()
                .await
                .map_err(|e| SqsError::new(op, "transport", DisplayErrorContext(&e)))?
                .into_bytes();
            Ok::<_, SqsError>((status, query_error, bytes))
        };
        let (status, query_error, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SqsError::new(op, "timeout", format!("no answer within {timeout:?}")))??;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        Err(error_from_answer(
            op,
            status,
            query_error.as_deref(),
            &bytes,
        ))
    }

    pub async fn receive(
        &self,
        queue_url: &str,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Received>, SqsError> {
        let input = ReceiveInput {
            queue_url,
            max_number_of_messages: max,
            wait_time_seconds: wait.as_secs(),
            visibility_timeout: visibility.as_secs(),
            message_system_attribute_names: &SYSTEM_ATTRIBUTES,
            message_attribute_names: &["All"],
        };
        let body = serde_json::to_vec(&input)
            .map_err(|e| SqsError::new("ReceiveMessage", "serialize", e))?;
        let answer = self
            .call("ReceiveMessage", body, wait + ANSWER_MARGIN)
            .await?;
        parse_receive(&answer, Instant::now())
    }

    /// Deletes up to 10 messages; returns the failed entries (index, code, sender_fault).
    pub async fn delete_batch(
        &self,
        queue_url: &str,
        receipts: &[String],
    ) -> Result<Vec<(usize, String, bool)>, SqsError> {
        let input = DeleteInput {
            queue_url,
            entries: receipts
                .iter()
                .zip(BATCH_IDS)
                .map(|(r, id)| DeleteEntry {
                    id,
                    receipt_handle: r,
                })
                .collect(),
        };
        let body = serde_json::to_vec(&input)
            .map_err(|e| SqsError::new("DeleteMessageBatch", "serialize", e))?;
        let answer = self
            .call("DeleteMessageBatch", body, DELETE_TIMEOUT)
            .await?;
        let out: DeleteOutput = serde_json::from_slice(&answer)
            .map_err(|e| SqsError::new("DeleteMessageBatch", "deserialize", e))?;
        Ok(out
            .failed
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| Some((f.id.parse().ok()?, f.code, f.sender_fault)))
            .collect())
    }
}

/// An error answer: the query-compatible code from `x-amzn-query-error` (what the SDK reports),
/// else the JSON `__type` without its namespace.
fn error_from_answer(
    op: &'static str,
    status: u16,
    query_error: Option<&str>,
    body: &[u8],
) -> SqsError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let code = query_error
        .and_then(|q| q.split(';').next())
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .or_else(|| {
            let t = parsed.as_ref()?.kind.as_deref()?;
            Some(t.rsplit('#').next().unwrap_or(t).to_string())
        })
        .unwrap_or_else(|| format!("HTTP{status}"));
    let message = parsed
        .and_then(|p| p.message.or(p.message_upper))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    SqsError {
        op,
        detail: format!("HTTP {status}: {message}"),
        code,
    }
}

fn parse_receive(answer: &[u8], now: Instant) -> Result<Vec<Received>, SqsError> {
    let out: ReceiveOutput = serde_json::from_slice(answer)
        .map_err(|e| SqsError::new("ReceiveMessage", "deserialize", e))?;
    Ok(out
        .messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let raw = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| Some((k, v.into_sdk()?)))
                .collect();
            Received::new(
                m.message_id,
                m.receipt_handle,
                m.body,
                m.attributes.unwrap_or_default(),
                raw,
                now,
            )
        })
        .collect())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveInput<'a> {
    queue_url: &'a str,
    max_number_of_messages: usize,
    wait_time_seconds: u64,
    visibility_timeout: u64,
    message_system_attribute_names: &'a [&'a str],
    message_attribute_names: &'a [&'a str],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteInput<'a> {
    queue_url: &'a str,
    entries: Vec<DeleteEntry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteEntry<'a> {
    id: &'a str,
    receipt_handle: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveOutput {
    messages: Option<Vec<WireMessage>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireMessage {
    message_id: Option<String>,
    receipt_handle: Option<String>,
    body: Option<String>,
    attributes: Option<HashMap<String, String>>,
    message_attributes: Option<HashMap<String, WireAttribute>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAttribute {
    data_type: Option<String>,
    string_value: Option<String>,
    binary_value: Option<String>,
    string_list_values: Option<Vec<String>>,
    binary_list_values: Option<Vec<String>>,
}

impl WireAttribute {
    /// The SDK's type (kept for copying to a dead-letter queue). Binary values are base64 in JSON.
    fn into_sdk(self) -> Option<MessageAttributeValue> {
        let blob = |s: String| aws_smithy_types::base64::decode(s).ok().map(Blob::new);
        MessageAttributeValue::builder()
            .set_data_type(self.data_type)
            .set_string_value(self.string_value)
            .set_binary_value(self.binary_value.and_then(blob))
            .set_string_list_values(self.string_list_values)
            .set_binary_list_values(
                self.binary_list_values
                    .map(|l| l.into_iter().filter_map(blob).collect()),
            )
            .build()
            .ok()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteOutput {
    failed: Option<Vec<WireFailed>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireFailed {
    id: String,
    code: String,
    #[serde(default)]
    sender_fault: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "__type")]
    kind: Option<String>,
    message: Option<String>,
    #[serde(rename = "Message")]
    message_upper: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_answer_becomes_messages_with_their_attributes() {
        let answer = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","MD5OfBody":"x",
            "Body":"{\"duration_ms\":5}","Attributes":{"ApproximateReceiveCount":"3","SentTimestamp":"1"},
            "MessageAttributes":{"kind":{"DataType":"String","StringValue":"a"},
            "bin":{"DataType":"Binary","BinaryValue":"aGk="}}},
            {"MessageId":"m2","Body":"no receipt handle"}]}"#;
        let got = parse_receive(answer, Instant::now()).expect("parses");
        assert_eq!(
            got.len(),
            1,
            "a message without a receipt handle is skipped"
        );
        let m = &got[0];
        assert_eq!(
            (m.message_id.as_str(), m.receipt_handle.as_str()),
            ("m1", "r1")
        );
        assert_eq!(m.body, r#"{"duration_ms":5}"#);
        assert_eq!(m.receive_count, 3);
        assert_eq!(
            m.message_attributes.get("kind").map(String::as_str),
            Some("a")
        );
        assert_eq!(
            m.raw_message_attributes
                .get("bin")
                .and_then(|a| a.binary_value())
                .map(|b| b.as_ref().to_vec()),
            Some(b"hi".to_vec())
        );
    }

    #[test]
    fn an_empty_receive_answer_is_no_messages() {
        for answer in [&b"{}"[..], br#"{"Messages":null}"#, br#"{"Messages":[]}"#] {
            assert!(parse_receive(answer, Instant::now())
                .expect("parses")
                .is_empty());
        }
        assert!(parse_receive(b"<html>", Instant::now()).is_err());
    }

    #[test]
    fn error_codes_are_the_ones_the_sdk_reports() {
        let e = error_from_answer(
            "ReceiveMessage",
            400,
            Some("AWS.SimpleQueueService.NonExistentQueue;Sender"),
            br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#,
        );
        assert_eq!(e.code, "AWS.SimpleQueueService.NonExistentQueue");
        assert!(e.is_permanent());
        assert!(e.detail.contains("does not exist"), "{}", e.detail);
        let e = error_from_answer(
            "ReceiveMessage",
            400,
            None,
            br#"{"__type":"com.amazon.coral.service#AccessDeniedException","Message":"no"}"#,
        );
        assert_eq!(e.code, "AccessDeniedException");
        assert!(e.is_permanent());
        let e = error_from_answer("DeleteMessageBatch", 503, None, b"Service Unavailable");
        assert_eq!(e.code, "HTTP503");
        assert!(!e.is_permanent());
        assert!(e.detail.contains("Service Unavailable"));
    }
}
