//! `ReceiveMessage` and `DeleteMessageBatch`, the two calls that carry all of a busy worker's SQS
//! traffic, sent without the SDK's request pipeline (interceptors, config layers, retry
//! classifiers, the smithy JSON codec), which cost about a third of the worker's CPU per message.
//!
//! What the SDK would do is kept: the same HTTP client and TLS stack, the SDK's own endpoint rules
//! (region, FIPS, dual-stack, `AWS_ENDPOINT_URL[_SQS]`), the same credentials chain, and SQS's
//! JSON protocol with its query-compatible error codes. SigV4 is computed in [`sign`]. The tests
//! check every signature against a verifier that accepts the SDK's own requests. Retries are left
//! to the callers, which already back off: the poll loop and the deleter.

mod sign;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorSettings};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::types::{FailedEntry, Received, SqsError, SqsErrorKind, SYSTEM_ATTRIBUTES};
use sign::{SigningKey, ToSign, CONTENT_TYPE};

/// Error codes a signature made with a wrong clock gets (the SDK's list, and SQS's query codes).
const CLOCK_SKEW_CODES: [&str; 8] = [
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "RequestTimeTooSkewed",
    "AccessDeniedException",
    "RequestExpired",
    "RequestInTheFuture",
    "InvalidSecurity",
];
/// Below this measured skew a signature error is a signature error, not a clock (the SDK's).
const SKEW_THRESHOLD: Duration = Duration::from_secs(4 * 60);
/// A slower round trip says too little about the server's clock to correct ours.
const MAX_TRUSTED_ROUND_TRIP: Duration = Duration::from_secs(15 * 60);
/// The SDK's default connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(3100);
/// Beyond the long poll: a request that has not answered by then is on a dead connection.
const ANSWER_MARGIN: Duration = Duration::from_secs(15);
const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
const USER_AGENT: &str = concat!("queue-worker/", env!("CARGO_PKG_VERSION"));
const BATCH_IDS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Where and as whom the calls go, as the SDK would resolve it.
#[derive(Debug, Clone)]
pub(crate) struct DirectSettings {
    pub region: String,
    /// An endpoint override (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`, or set in code).
    pub endpoint_url: Option<String>,
    pub use_fips: bool,
    pub use_dual_stack: bool,
    pub credentials: SharedCredentialsProvider,
}

impl DirectSettings {
    /// The settings an SQS client built from `sdk` would use.
    pub(crate) fn from_sdk(sdk: &aws_config::SdkConfig) -> Result<Self, SqsError> {
        let region = sdk
            .region()
            .ok_or_else(|| config_error("no AWS region: set AWS_REGION (ECS sets it for tasks)"))?;
        let credentials = sdk.credentials_provider().ok_or_else(|| {
            SqsError::new(
                "ResolveEndpoint",
                SqsErrorKind::Credentials,
                "no AWS credentials provider configured",
            )
        })?;
        Ok(Self {
            region: region.to_string(),
            endpoint_url: sqs_endpoint_url(sdk),
            use_fips: sdk.use_fips().unwrap_or(false),
            use_dual_stack: sdk.use_dual_stack().unwrap_or(false),
            credentials,
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

/// The direct SQS client: one per worker, shared by its pollers and deleters.
pub(crate) struct DirectClient {
    connector: aws_smithy_http_client::Connector,
    /// The resolved endpoint, ending in `/` (the JSON protocol posts every operation there).
    endpoint: String,
    /// Its authority and path, as signed.
    host: String,
    path: String,
    region: String,
    provider: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<SigningKey>>,
    /// SQS's clock minus ours, in milliseconds, from the `Date` of its latest answer: requests
    /// are signed at our time plus this, so a task whose clock is off still signs in time.
    skew_ms: AtomicI64,
    skew_reported: AtomicBool,
}

impl std::fmt::Debug for DirectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectClient")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

fn config_error(detail: impl ToString) -> SqsError {
    SqsError::new("ResolveEndpoint", SqsErrorKind::Config, detail)
}

impl DirectClient {
    pub(crate) async fn new(settings: &DirectSettings) -> Result<Self, SqsError> {
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
            provider: settings.credentials.clone(),
            cached: tokio::sync::Mutex::new(None),
            skew_ms: AtomicI64::new(0),
            skew_reported: AtomicBool::new(false),
        })
    }

    /// The resolved endpoint requests go to.
    #[cfg(test)]
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The credentials and today's signing key, fetched again shortly before they expire.
    async fn signing_key(&self, op: &'static str, day: &str) -> Result<SigningKey, SqsError> {
        let mut cached = self.cached.lock().await;
        if let Some(s) = cached.as_mut() {
            if super::credentials::fresh(s.creds.expiry()) {
                if s.day != day {
                    *s = SigningKey::new(s.creds.clone(), day, &self.region);
                }
                return Ok(s.clone());
            }
        }
        let creds =
            self.provider.provide_credentials().await.map_err(|e| {
                SqsError::new(op, SqsErrorKind::Credentials, DisplayErrorContext(&e))
            })?;
        let key = SigningKey::new(creds, day, &self.region);
        *cached = Some(key.clone());
        Ok(key)
    }

    /// SQS's time now, as far as its answers tell.
    fn sqs_time(&self, now: SystemTime) -> SystemTime {
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let shift = Duration::from_millis(skew.unsigned_abs());
        if skew >= 0 {
            now.checked_add(shift)
        } else {
            now.checked_sub(shift)
        }
        .unwrap_or(now)
    }

    /// Records SQS's clock from an answer's `Date`, against the middle of the round trip (as the
    /// SDK does).
    fn observe_date(&self, date: Option<&str>, sent: SystemTime, received: SystemTime) {
        let Some(server) = date
            .and_then(|d| {
                aws_smithy_types::DateTime::from_str(
                    d,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .ok()
            })
            .and_then(|d| SystemTime::try_from(d).ok())
        else {
            return;
        };
        let round_trip = received.duration_since(sent).unwrap_or_default();
        if round_trip > MAX_TRUSTED_ROUND_TRIP {
            return;
        }
        let midpoint = sent + round_trip / 2;
        let skew = match server.duration_since(midpoint) {
            Ok(ahead) => ahead.as_millis() as i64,
            Err(behind) => -(behind.duration().as_millis() as i64),
        };
        self.skew_ms.store(skew, Ordering::Relaxed);
    }

    /// The measured skew is large enough that `e` is the clock's doing.
    fn skewed(&self, e: &SqsError) -> bool {
        let skew = Duration::from_millis(self.skew_ms.load(Ordering::Relaxed).unsigned_abs());
        skew > SKEW_THRESHOLD && e.code().is_some_and(|c| CLOCK_SKEW_CODES.contains(&c))
    }

    /// Builds the request for `op` with a JSON `body`, signed (SigV4) for `time`.
    pub(crate) async fn signed_request(
        &self,
        op: &'static str,
        body: bytes::Bytes,
        time: SystemTime,
    ) -> Result<HttpRequest, SqsError> {
        let signing = |e: &str| SqsError::new(op, SqsErrorKind::Protocol, e);
        let amz_date = sign::amz_date(time).ok_or_else(|| signing("clock before 1970"))?;
        let day = amz_date.get(..8).unwrap_or_default();
        let key = self.signing_key(op, day).await?;
        let target = format!("AmazonSQS.{op}");
        let authorization = sign::authorization(
            &key,
            &ToSign {
                host: &self.host,
                path: &self.path,
                region: &self.region,
                target: &target,
                amz_date: &amz_date,
                body: &body,
            },
        );
        let length = body.len().to_string();
        let mut req = HttpRequest::new(SdkBody::from(body));
        let request_error = |e: &dyn std::fmt::Display| signing(&e.to_string());
        req.set_method("POST").map_err(|e| request_error(&e))?;
        req.set_uri(self.endpoint.as_str())
            .map_err(|e| request_error(&e))?;
        let h = req.headers_mut();
        // Host is set (not left to hyper) so that what is sent is exactly what was signed.
        h.insert("host", self.host.clone());
        h.insert("content-type", CONTENT_TYPE);
        h.insert("content-length", length);
        h.insert("x-amz-date", amz_date);
        if let Some(t) = key.creds.session_token() {
            h.insert("x-amz-security-token", t.trim().to_string());
        }
        h.insert("x-amz-target", target);
        // SQS then reports the query API's error codes, as it does to the SDK.
        h.insert("x-amzn-query-mode", "true");
        h.insert("authorization", authorization);
        h.insert("user-agent", USER_AGENT);
        Ok(req)
    }

    /// Sends `op` and returns the body of a 2xx answer. A refusal that SQS's clock explains (it
    /// is minutes away from ours) is sent once more, signed with SQS's time, as the SDK does.
    async fn call(
        &self,
        op: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<bytes::Bytes, SqsError> {
        let body = bytes::Bytes::from(body);
        match self.call_once(op, body.clone(), timeout).await {
            Err(e) if self.skewed(&e) => {
                if !self.skew_reported.swap(true, Ordering::Relaxed) {
                    let skew_s = self.skew_ms.load(Ordering::Relaxed) as f64 / 1000.0;
                    tracing::warn!(
                        skew_s,
                        error = %e,
                        "this machine's clock is off from SQS's; signing with SQS's time from now on (fix the clock: NTP)"
                    );
                }
                self.call_once(op, body, timeout).await
            }
            answer => answer,
        }
    }

    async fn call_once(
        &self,
        op: &'static str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<bytes::Bytes, SqsError> {
        let sent = SystemTime::now();
        let req = self.signed_request(op, body, self.sqs_time(sent)).await?;
        let transport = |e: &dyn std::error::Error| {
            SqsError::new(op, SqsErrorKind::Transport, DisplayErrorContext(e))
        };
        let exchange = async {
            let resp = self.connector.call(req).await.map_err(|e| transport(&e))?;
            let status = resp.status().as_u16();
            self.observe_date(resp.headers().get("date"), sent, SystemTime::now());
            let query_error = resp.headers().get("x-amzn-query-error").map(str::to_string);
            let bytes = ByteStream::new(resp.into_body())
                .collect()
                .await
                .map_err(|e| transport(&e))?
                .into_bytes();
            Ok::<_, SqsError>((status, query_error, bytes))
        };
        let (status, query_error, bytes) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| {
                    SqsError::new(
                        op,
                        SqsErrorKind::Timeout,
                        format!("no answer within {timeout:?}"),
                    )
                })??;
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

    pub(crate) async fn receive(
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
            .map_err(|e| SqsError::new("ReceiveMessage", SqsErrorKind::Protocol, e))?;
        let answer = self
            .call("ReceiveMessage", body, wait + ANSWER_MARGIN)
            .await?;
        parse_receive(&answer, Instant::now())
    }

    /// Deletes up to 10 messages; returns the entries that failed.
    pub(crate) async fn delete_batch(
        &self,
        queue_url: &str,
        receipts: &[String],
    ) -> Result<Vec<FailedEntry>, SqsError> {
        const OP: &str = "DeleteMessageBatch";
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
        let body =
            serde_json::to_vec(&input).map_err(|e| SqsError::new(OP, SqsErrorKind::Protocol, e))?;
        let answer = self.call(OP, body, DELETE_TIMEOUT).await?;
        let out: DeleteOutput = serde_json::from_slice(&answer)
            .map_err(|e| SqsError::new(OP, SqsErrorKind::Protocol, e))?;
        Ok(out
            .failed
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| FailedEntry::new(&f.id, f.code, f.sender_fault))
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
        });
    let message = parsed
        .and_then(|p| p.message.or(p.message_upper))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    let kind = match code {
        Some(code) => SqsErrorKind::Service { code },
        None => SqsErrorKind::Http { status },
    };
    SqsError::new(op, kind, format!("HTTP {status}: {message}"))
}

fn parse_receive(answer: &[u8], now: Instant) -> Result<Vec<Received>, SqsError> {
    let out: ReceiveOutput = serde_json::from_slice(answer)
        .map_err(|e| SqsError::new("ReceiveMessage", SqsErrorKind::Protocol, e))?;
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
