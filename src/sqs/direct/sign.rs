//! SigV4 for the one request shape the direct client sends: `POST` to the endpoint's path, no
//! query, a fixed set of headers. The general-purpose signer of the SDK cost about 15 µs a
//! request; this one writes the canonical request directly and keeps the signing key for the day.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use ring::{digest, hmac};

pub(super) const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// Credentials with the SigV4 signing key derived from them for one UTC day. The key depends
/// only on the secret, the day, the region and the service: derived once a day, not per request.
#[derive(Clone)]
pub(super) struct SigningKey {
    pub creds: Credentials,
    pub day: String,
    key: hmac::Key,
}

impl SigningKey {
    pub(super) fn new(creds: Credentials, day: &str, region: &str) -> Self {
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

/// `time` as SigV4 writes it: `20261123T063000Z`. `None` before 1970.
pub(super) fn amz_date(time: SystemTime) -> Option<String> {
    let secs = time.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    let rfc3339 = aws_smithy_types::DateTime::from_secs(secs as i64)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .ok()?;
    Some(rfc3339.chars().filter(|c| *c != '-' && *c != ':').collect())
}

/// What one request signs.
pub(super) struct ToSign<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub region: &'a str,
    pub target: &'a str,
    pub amz_date: &'a str,
    pub body: &'a [u8],
}

/// The `Authorization` header for `req`, signed with `key` (whose day must be `req`'s).
pub(super) fn authorization(key: &SigningKey, req: &ToSign<'_>) -> String {
    let token = key.creds.session_token();
    let signed_headers = if token.is_some() {
        "content-length;content-type;host;x-amz-date;x-amz-security-token;x-amz-target;x-amzn-query-mode"
    } else {
        "content-length;content-type;host;x-amz-date;x-amz-target;x-amzn-query-mode"
    };
    let day = req.amz_date.get(..8).unwrap_or_default();
    let mut canonical = String::with_capacity(640);
    canonical.push_str("POST\n");
    canonical.push_str(req.path);
    canonical.push_str("\n\ncontent-length:");
    canonical.push_str(&req.body.len().to_string());
    canonical.push_str("\ncontent-type:");
    canonical.push_str(CONTENT_TYPE);
    canonical.push_str("\nhost:");
    canonical.push_str(req.host);
    canonical.push_str("\nx-amz-date:");
    canonical.push_str(req.amz_date);
    if let Some(t) = token {
        canonical.push_str("\nx-amz-security-token:");
        canonical.push_str(t.trim());
    }
    canonical.push_str("\nx-amz-target:");
    canonical.push_str(req.target);
    canonical.push_str("\nx-amzn-query-mode:true\n\n");
    canonical.push_str(signed_headers);
    canonical.push('\n');
    push_hex(
        &mut canonical,
        digest::digest(&digest::SHA256, req.body).as_ref(),
    );
    let scope = format!("{day}/{}/sqs/aws4_request", req.region);
    let mut to_sign = format!("AWS4-HMAC-SHA256\n{}\n{scope}\n", req.amz_date);
    push_hex(
        &mut to_sign,
        digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref(),
    );
    let mut authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature=",
        key.creds.access_key_id()
    );
    push_hex(
        &mut authorization,
        hmac::sign(&key.key, to_sign.as_bytes()).as_ref(),
    );
    authorization
}
