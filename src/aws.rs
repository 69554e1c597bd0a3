//! The AWS set-up every part shares: the SDK settings, their HTTP client, and one line saying why
//! an SDK call failed.

use aws_sdk_ecs::config::http::HttpResponse;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Loads AWS settings the standard way (env, profile, container credentials, `AWS_ENDPOINT_URL`
/// and the service-specific `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL_ECS`), with the HTTP
/// client of [`http_client`].
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await
}

/// The HTTP(S) client of every AWS SDK call: hyper with rustls on ring (one TLS stack instead of
/// the SDK default's two). Clients built by hand (`Config::builder()`) need it too.
pub fn http_client() -> aws_sdk_sqs::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// One short line saying why an SDK call failed: the service's error code and message when it
/// sent them; the HTTP status when its answer could not be read (moto answers unknown actions with
/// an HTML 500 page); otherwise the error chain (no credentials, connection refused, ...).
pub(crate) fn error_reason<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => return format!("{code}: {msg}"),
        (Some(code), None) => return code.to_string(),
        _ => {}
    }
    match e {
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            format!("HTTP {status} with no readable error")
        }
        _ => DisplayErrorContext(e).to_string().replace('\n', " "),
    }
}
