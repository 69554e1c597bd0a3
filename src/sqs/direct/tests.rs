//! The direct path against what real SQS checks and what the SDK sends.
//!
//! fauxqs does not verify signatures, so a signing mistake would pass every other local test and
//! only fail against AWS. Here a capture server records the requests exactly as they arrive, and
//! a SigV4 verifier written from the AWS specification (separately from the worker's signer)
//! checks them. The verifier must accept the SDK's own requests (so it is right) and reject a
//! tampered one (so it can fail) before its verdict on the direct path counts.

use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use ring::{digest, hmac};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

/// A direct client for `endpoint` in `region`, signing as `creds`.
async fn client_as(region: &str, endpoint: &str, creds: Credentials) -> DirectClient {
    DirectClient::new(&DirectSettings {
        region: region.into(),
        endpoint_url: Some(endpoint.into()),
        use_fips: false,
        use_dual_stack: false,
        credentials: SharedCredentialsProvider::new(creds),
    })
    .await
    .expect("direct SQS client")
}

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
    assert_eq!(e.code(), Some("AWS.SimpleQueueService.NonExistentQueue"));
    assert!(e.is_permanent());
    assert!(e.detail.contains("does not exist"), "{}", e.detail);
    let e = error_from_answer(
        "ReceiveMessage",
        400,
        None,
        br#"{"__type":"com.amazon.coral.service#AccessDeniedException","Message":"no"}"#,
    );
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert!(e.is_permanent());
    let e = error_from_answer("DeleteMessageBatch", 503, None, b"Service Unavailable");
    assert_eq!(e.kind, SqsErrorKind::Http { status: 503 });
    assert!(!e.is_permanent());
    assert!(e.detail.contains("Service Unavailable"));
}

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn credentials() -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        SECRET,
        Some("session-token/with+odd=chars".into()),
        None,
        "wire-test",
    )
}

/// One request as it arrived: method, path, headers (lower-case names, in order), body.
#[derive(Debug, Clone)]
struct Captured {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Stops the capture server (and, through its JoinSet, every connection) when dropped.
struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Answers every request with `answer` (200, JSON) and hands each request to the test.
async fn capture_server(
    answer: &'static str,
) -> (Server, String, mpsc::UnboundedReceiver<Captured>) {
    capture_server_with(move |_| format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{answer}",
        answer.len()
    ))
    .await
}

/// Answers every request with what `reply` makes of it (a whole HTTP/1.1 response), and hands
/// each request to the test.
async fn capture_server_with(
    reply: impl Fn(&Captured) -> String + Send + Sync + 'static,
) -> (Server, String, mpsc::UnboundedReceiver<Captured>) {
    let reply = std::sync::Arc::new(reply);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            let reply = reply.clone();
            connections.spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_string();
                    let mut parts = request_line.split(' ');
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.to_string()))
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + length {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[end + 4..end + 4 + length].to_vec();
                    buf.drain(..end + 4 + length);
                    let captured = Captured {
                        method,
                        path,
                        headers,
                        body,
                    };
                    let answer = reply(&captured);
                    let _ = tx.send(captured);
                    if sock.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (Server(server), format!("http://{addr}"), rx)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

/// Checks a request's SigV4 header signature as SQS would, from the request alone. Returns the
/// signed header names.
fn verify_sigv4(req: &Captured, region: &str) -> Result<Vec<String>, String> {
    let auth = req
        .header("authorization")
        .ok_or("no authorization")?
        .trim();
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("bad authorization part")?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(format!("unknown authorization part {k}")),
        }
    }
    let (credential, signed, signature) = (
        credential.ok_or("no Credential")?,
        signed.ok_or("no SignedHeaders")?,
        signature.ok_or("no Signature")?,
    );
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, scope_region, service, terminator] = scope[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    if key_id != "AKIDEXAMPLE"
        || scope_region != region
        || service != "sqs"
        || terminator != "aws4_request"
    {
        return Err(format!("wrong credential scope {credential}"));
    }
    let amz_date = req.header("x-amz-date").ok_or("no x-amz-date")?.trim();
    if !amz_date.starts_with(date) {
        return Err("x-amz-date is not the scope's date".into());
    }
    let names: Vec<String> = signed.split(';').map(str::to_string).collect();
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} is not in the request"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let canonical = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        hex(digest::digest(&digest::SHA256, &req.body).as_ref())
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/sqs/aws4_request\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let k_date = hmac_sha256(format!("AWS4{SECRET}").as_bytes(), date);
    let k_region = hmac_sha256(&k_date, region);
    let k_service = hmac_sha256(&k_region, "sqs");
    let k_signing = hmac_sha256(&k_service, "aws4_request");
    let expected = hex(&hmac_sha256(&k_signing, &string_to_sign));
    if expected != signature {
        return Err(format!(
            "signature mismatch: canonical request was\n{canonical}"
        ));
    }
    Ok(names)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_requests_are_signed_as_sqs_verifies_and_match_the_sdks() {
    const QUEUE: &str = "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs";
    let region = "eu-west-1";
    let (_server, endpoint, mut rx) = capture_server(r#"{"Messages":[]}"#).await;

    // What the SDK sends, through the same capture server.
    let sdk = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(credentials())
            .endpoint_url(&endpoint)
            .http_client(crate::aws::http_client())
            .build(),
    );
    sdk.receive_message()
        .queue_url(QUEUE)
        .max_number_of_messages(7)
        .wait_time_seconds(20)
        .visibility_timeout(60)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .message_system_attribute_names(
            MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
        )
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_attribute_names("All")
        .send()
        .await
        .expect("SDK receive");
    let sdk_receive = rx.recv().await.expect("captured");
    let mut del = sdk.delete_message_batch().queue_url(QUEUE);
    for (i, r) in ["r+0/==", "r 1"].iter().enumerate() {
        del = del.entries(
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(*r)
                .build()
                .expect("entry"),
        );
    }
    // The capture server's `{"Messages":[]}` has no Successful/Failed lists: the SDK accepts it.
    del.send().await.expect("SDK delete");
    let sdk_delete = rx.recv().await.expect("captured");

    // The verifier is right (accepts the SDK's requests) and can fail (rejects tampering).
    for req in [&sdk_receive, &sdk_delete] {
        verify_sigv4(req, region).expect("the verifier accepts the SDK's signature");
        let mut tampered = req.clone();
        tampered.body.push(b' ');
        assert!(
            verify_sigv4(&tampered, region).is_err(),
            "a changed body fails"
        );
        let mut undated = req.clone();
        undated.headers.retain(|(n, _)| n != "x-amz-date");
        assert!(
            verify_sigv4(&undated, region).is_err(),
            "a missing signed header fails"
        );
    }

    // The direct path, with the same credentials (a session token included).
    let wire = client_as(region, &endpoint, credentials()).await;
    let got = wire
        .receive(QUEUE, 7, Duration::from_secs(20), Duration::from_secs(60))
        .await
        .expect("direct receive");
    assert!(got.is_empty());
    let wire_receive = rx.recv().await.expect("captured");
    wire.delete_batch(QUEUE, &["r+0/==".into(), "r 1".into()])
        .await
        .expect("direct delete");
    let wire_delete = rx.recv().await.expect("captured");

    for (ours, theirs) in [(&wire_receive, &sdk_receive), (&wire_delete, &sdk_delete)] {
        let signed = verify_sigv4(ours, region).expect("the direct path's signature verifies");
        for must in [
            "host",
            "x-amz-date",
            "x-amz-security-token",
            "x-amz-target",
            "content-type",
        ] {
            assert!(
                signed.iter().any(|s| s == must),
                "{must} is signed: {signed:?}"
            );
        }
        assert_eq!(ours.method, "POST");
        assert_eq!(ours.path, theirs.path);
        for h in [
            "host",
            "content-type",
            "x-amz-target",
            "x-amzn-query-mode",
            "x-amz-security-token",
        ] {
            assert_eq!(ours.header(h), theirs.header(h), "header {h}");
        }
        assert_eq!(
            json(&ours.body),
            json(&theirs.body),
            "the same request body"
        );
    }
}

/// The endpoint comes from the SDK's rules: the region's endpoint without an override.
#[tokio::test]
async fn the_endpoint_follows_the_sdk_rules() {
    let resolve = |region: &str, fips: bool, url: Option<&str>| {
        let settings = DirectSettings {
            region: region.into(),
            endpoint_url: url.map(str::to_string),
            use_fips: fips,
            use_dual_stack: false,
            credentials: SharedCredentialsProvider::new(credentials()),
        };
        async move {
            DirectClient::new(&settings)
                .await
                .map(|w| w.endpoint().to_string())
        }
    };
    assert_eq!(
        resolve("eu-west-1", false, None).await.expect("resolves"),
        "https://sqs.eu-west-1.amazonaws.com/"
    );
    assert_eq!(
        resolve("us-east-1", true, None).await.expect("resolves"),
        "https://sqs-fips.us-east-1.amazonaws.com/"
    );
    assert_eq!(
        resolve("us-east-1", false, Some("http://127.0.0.1:4566"))
            .await
            .expect("resolves"),
        "http://127.0.0.1:4566/"
    );
    assert!(resolve("not a region!", false, None).await.is_err());
}

/// Signatures stay valid across a change of UTC day (the signing key is kept per day) and
/// without a session token.
#[tokio::test]
async fn signatures_verify_across_midnight_and_without_a_session_token() {
    use std::time::UNIX_EPOCH;
    let before_midnight = UNIX_EPOCH + Duration::from_secs(1_795_478_399); // 2026-11-23T23:59:59Z
    for creds in [
        credentials(),
        Credentials::new("AKIDEXAMPLE", SECRET, None, None, "wire-test"),
    ] {
        let wire = client_as("us-east-1", "http://127.0.0.1:9324", creds.clone()).await;
        let mut dates = Vec::new();
        for time in [
            before_midnight,
            before_midnight + Duration::from_secs(1),
            before_midnight,
            SystemTime::now(),
        ] {
            let body = br#"{"QueueUrl":"q","Entries":[]}"#.to_vec();
            let req = wire
                .signed_request("DeleteMessageBatch", body.clone().into(), time)
                .await
                .expect("signed");
            let captured = Captured {
                method: req.method().to_string(),
                path: "/".into(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                    .collect(),
                body,
            };
            assert_eq!(
                captured.header("x-amz-security-token"),
                creds.session_token()
            );
            verify_sigv4(&captured, "us-east-1").expect("verifies");
            dates.push(captured.header("x-amz-date").map(str::to_string));
        }
        assert_eq!(dates[0].as_deref(), Some("20261123T235959Z"));
        assert_eq!(dates[1].as_deref(), Some("20261124T000000Z"));
    }
}

/// A receive whose connection never answers ends with a `timeout` error after the long poll plus
/// a margin, so the poll loop backs off and retries instead of hanging (timers paused: the
/// 35 s pass at once).
#[tokio::test(start_paused = true)]
async fn a_receive_that_never_answers_times_out() {
    // Accepted by the kernel's backlog, never read, never answered.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", black_hole.local_addr().expect("addr"));
    let wire = client_as("us-east-1", &endpoint, credentials()).await;
    let started = tokio::time::Instant::now();
    let e = wire
        .receive("q", 10, Duration::from_secs(20), Duration::from_secs(60))
        .await
        .expect_err("no answer");
    assert_eq!(e.kind, SqsErrorKind::Timeout, "{e}");
    assert!(!e.is_permanent());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(20) && waited <= Duration::from_secs(40),
        "gave up after {waited:?}"
    );
    drop(black_hole);
}

/// A server whose clock is an hour ahead and that refuses a request dated more than 5 minutes
/// off its own time, as SQS does: the direct path learns SQS's time from the `Date` of the
/// refusal, signs the request again with it, and from then on signs with it at once.
#[tokio::test]
async fn a_clock_an_hour_off_is_corrected_from_the_servers_date() {
    use std::time::SystemTime;
    let ahead = Duration::from_secs(3600);
    let (_server, endpoint, mut rx) = capture_server_with(move |req| {
        let server_now = SystemTime::now() + ahead;
        let date = aws_smithy_types::DateTime::from(server_now)
            .fmt(aws_smithy_types::date_time::Format::HttpDate)
            .expect("http date");
        let signed_at = req
            .header("x-amz-date")
            .map(str::trim)
            .and_then(|d| {
                let rfc = format!(
                    "{}-{}-{}T{}:{}:{}Z",
                    &d[0..4], &d[4..6], &d[6..8], &d[9..11], &d[11..13], &d[13..15]
                );
                humantime::parse_rfc3339(&rfc).ok()
            })
            .expect("x-amz-date");
        let off = server_now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        let (status, extra, body) = if off > Duration::from_secs(300) {
            (
                "400 Bad Request",
                "x-amzn-query-error: SignatureDoesNotMatch;Sender\r\n",
                r#"{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"Signature expired"}"#,
            )
        } else {
            ("200 OK", "", r#"{"Messages":[]}"#)
        };
        format!(
            "HTTP/1.1 {status}\r\ndate: {date}\r\n{extra}content-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    })
    .await;
    let client = client_as("us-east-1", &endpoint, credentials()).await;
    let wait = Duration::from_secs(1);
    let got = client
        .receive("q", 10, wait, Duration::from_secs(30))
        .await
        .expect("a receive succeeds despite the clock");
    assert!(got.is_empty());
    let mut seen = Vec::new();
    while let Ok(r) = rx.try_recv() {
        seen.push(r);
    }
    assert_eq!(
        seen.len(),
        2,
        "refused once, then signed with the server's time"
    );
    client
        .receive("q", 10, wait, Duration::from_secs(30))
        .await
        .expect("the next receive too");
    let mut more = 0;
    while rx.try_recv().is_ok() {
        more += 1;
    }
    assert_eq!(more, 1, "at once, without a refusal");
    // The error is not hidden when the clock is not to blame.
    let (_server, endpoint, _rx) = capture_server_with(|_| {
        let body = r#"{"__type":"com.amazon.coral.service#InvalidSignatureException","message":"bad"}"#;
        format!(
            "HTTP/1.1 400 Bad Request\r\nx-amzn-query-error: SignatureDoesNotMatch;Sender\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    })
    .await;
    let client = client_as("us-east-1", &endpoint, credentials()).await;
    let e = client
        .receive("q", 10, wait, Duration::from_secs(30))
        .await
        .expect_err("a real signature error");
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
}
