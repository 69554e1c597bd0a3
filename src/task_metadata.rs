//! Task metadata v4 (`$ECS_CONTAINER_METADATA_URI_V4/task`): who this task is.

use serde::Deserialize;

use crate::limits::ECS_AGENT_CLIENT_TIMEOUT;

/// The fields of `/task` the worker reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TaskMetadata {
    /// The cluster's ARN (or name).
    pub cluster: String,
    #[serde(rename = "TaskARN")]
    pub task_arn: String,
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub revision: String,
    /// Given by the agent on EC2, ECS Anywhere and Managed Instances; not on Fargate.
    #[serde(default)]
    pub service_name: Option<String>,
}

impl TaskMetadata {
    /// `family:revision`, how a deployment's task definition ends.
    pub(crate) fn task_definition(&self) -> String {
        format!("{}:{}", self.family, self.revision)
    }
}

/// Why the metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetadataError {
    /// The endpoint did not answer well: may pass.
    #[error("task metadata endpoint: {0}")]
    Unreachable(reqwest::Error),
    /// It answered something else: will not pass.
    #[error("task metadata has no Cluster/TaskARN: {0}")]
    Unreadable(reqwest::Error),
}

/// Reads `/task` under the metadata URI.
pub(crate) struct MetadataClient {
    http: reqwest::Client,
    url: String,
}

impl MetadataClient {
    pub(crate) fn new(metadata_uri: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(ECS_AGENT_CLIENT_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            url: format!("{}/task", metadata_uri.trim_end_matches('/')),
        })
    }

    pub(crate) async fn task(&self) -> Result<TaskMetadata, MetadataError> {
        let resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(MetadataError::Unreachable)?;
        resp.json::<TaskMetadata>()
            .await
            .map_err(MetadataError::Unreadable)
    }
}
