//! Protection through the ECS API (`UpdateTaskProtection`), for setups without the agent
//! endpoint. Cluster and task ARN come from the task metadata v4 endpoint, read once.

use aws_sdk_ecs::error::ProvideErrorMetadata;
use tokio::sync::OnceCell;

use super::agent::classify_reason;
use super::{BoxFuture, Granted, ProtectionBackend, ProtectionError};
use crate::task_metadata::{MetadataClient, MetadataError, TaskMetadata};

pub(crate) struct EcsApiBackend {
    ecs: aws_sdk_ecs::Client,
    metadata: MetadataClient,
    task: OnceCell<TaskMetadata>,
}

impl EcsApiBackend {
    pub(crate) fn new(
        ecs: aws_sdk_ecs::Client,
        metadata_uri: &str,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            ecs,
            metadata: MetadataClient::new(metadata_uri)?,
            task: OnceCell::new(),
        })
    }

    async fn task(&self) -> Result<&TaskMetadata, ProtectionError> {
        self.task
            .get_or_try_init(|| async {
                self.metadata.task().await.map_err(|e| match e {
                    MetadataError::Unreachable(_) => ProtectionError::Transient(e.to_string()),
                    MetadataError::Unreadable(_) => ProtectionError::Permanent {
                        problem: e.to_string(),
                        fix: "use --protection agent, or run on an ECS platform version with task metadata v4".into(),
                    },
                })
            })
            .await
    }
}

impl ProtectionBackend for EcsApiBackend {
    fn set(&self, enabled: bool, minutes: u32) -> BoxFuture<'_, Result<Granted, ProtectionError>> {
        Box::pin(async move {
            let task = self.task().await?;
            let mut req = self
                .ecs
                .update_task_protection()
                .cluster(&task.cluster)
                .tasks(&task.task_arn)
                .protection_enabled(enabled);
            if enabled {
                req = req.expires_in_minutes(minutes as i32);
            }
            let out = req.send().await.map_err(|e| {
                let code = e.code().unwrap_or("").to_string();
                let msg = e.message().unwrap_or("").to_string();
                match code.as_str() {
                    "AccessDeniedException" => classify_reason(&code, &msg),
                    "ClientException"
                    | "InvalidParameterException"
                    | "ClusterNotFoundException"
                    | "UnsupportedFeatureException"
                    | "ResourceNotFoundException" => ProtectionError::Permanent {
                        problem: format!("UpdateTaskProtection: {code} {msg}"),
                        fix: "check that the task belongs to a service of this cluster".into(),
                    },
                    _ => ProtectionError::Transient(format!(
                        "UpdateTaskProtection: {code} {}",
                        aws_sdk_ecs::error::DisplayErrorContext(&e)
                    )),
                }
            })?;
            if let Some(f) = out.failures().first() {
                return Err(classify_reason(
                    f.reason().unwrap_or("unknown"),
                    f.detail().unwrap_or(""),
                ));
            }
            let p = out.protected_tasks().first();
            Ok(Granted {
                enabled: p.map(|p| p.protection_enabled()).unwrap_or(false),
                expiration: p.and_then(|p| p.expiration_date()).map(|d| d.to_string()),
            })
        })
    }

    fn name(&self) -> &'static str {
        "ecs-api"
    }
}
