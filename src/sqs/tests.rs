//! The counted client against a real SQS emulator behind the fault proxy.

use std::time::Duration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use testkit::fault_proxy::{FaultConfig, FaultKind, FaultProxy, Shares};
use testkit::fauxqs::Fauxqs;

use super::*;

fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(
            Credentials::new("test", "test", None, None, "tests"),
        ))
        .endpoint_url(endpoint)
        .http_client(crate::aws::http_client())
        .build()
}

/// `return_now` counts as returned only the messages SQS actually made visible again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_messages_are_counted_only_when_sqs_applied_the_change() {
    let fauxqs = Fauxqs::start().expect("fauxqs");
    let admin = aws_sdk_sqs::Client::new(&sdk_config(&fauxqs.endpoint));
    let created = admin.create_queue().queue_name("returned").send().await;
    let q = created
        .ok()
        .and_then(|o| o.queue_url)
        .expect("queue created");
    for i in 0..10 {
        admin
            .send_message()
            .queue_url(&q)
            .message_body(format!("{i}ms"))
            .send()
            .await
            .expect("send");
    }
    let proxy = FaultProxy::start(
        &fauxqs.endpoint,
        FaultConfig::new(5, Shares::only(FaultKind::PartialBatch)),
    )
    .await
    .expect("proxy");
    let sqs = Sqs::connect(&sdk_config(&proxy.endpoint()), SqsClientKind::Direct)
        .await
        .expect("client");
    let mut got = Vec::new();
    while got.len() < 10 {
        let batch = sqs
            .receive(&q, 10, Duration::from_secs(1), Duration::from_secs(60))
            .await
            .expect("receive (not a batch operation: never faulted here)");
        assert!(!batch.is_empty(), "messages to receive");
        got.extend(batch);
    }
    sqs.return_now(&q, &got).await;
    let attrs = admin
        .get_queue_attributes()
        .queue_url(&q)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .expect("attributes")
        .attributes
        .unwrap_or_default();
    let n = |k| {
        attrs
            .get(&k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let visible = n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages);
    let in_flight =
        n(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible);
    assert!(in_flight > 0, "some returns failed");
    assert_eq!(sqs.stats().snapshot().messages_returned, visible);
    proxy.shutdown().await;
}
