//! Finding the service: named directly (`--cluster/--service`) or by Copilot's tags.

use aws_sdk_ecs::error::ProvideErrorMetadata;
use aws_sdk_ecs::types::{Service, ServiceField};

use super::{aws, short, EcsError, Target, COPILOT_ENVS, COPILOT_FLAGS, DIRECT_ENVS, DIRECT_FLAGS};
use crate::config::ConfigError;
use crate::limits::ECS_DESCRIBE_SERVICES_MAX;

const TAG_APP: &str = "copilot-application";
const TAG_ENV: &str = "copilot-environment";
const TAG_SVC: &str = "copilot-service";

/// The service we found: where it is, and how it looked.
#[derive(Debug, Clone)]
pub(super) struct Located {
    pub(super) cluster: String,
    pub(super) service: String,
    pub(super) found: Service,
}

fn tag<'a>(s: &'a Service, key: &str) -> Option<&'a str> {
    s.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Finds the service the target names.
pub(super) async fn locate(
    ecs: &aws_sdk_ecs::Client,
    target: &Target,
) -> Result<Located, EcsError> {
    match target {
        Target::Direct { cluster, service } => {
            let out = ecs
                .describe_services()
                .cluster(cluster)
                .services(service)
                .send()
                .await
                .map_err(|e| match e.code() {
                    Some("ClusterNotFoundException") => EcsError::Config(ConfigError {
                        flag: DIRECT_FLAGS.into(),
                        env: DIRECT_ENVS.into(),
                        problem: format!("no ECS cluster {cluster} in this account and region"),
                    }),
                    _ => aws("DescribeServices")(e),
                })?;
            let found = out
                .services()
                .iter()
                .find(|s| s.status() == Some("ACTIVE") || s.status() == Some("DRAINING"))
                .cloned();
            let Some(found) = found else {
                return Err(EcsError::Config(ConfigError {
                    flag: DIRECT_FLAGS.into(),
                    env: DIRECT_ENVS.into(),
                    problem: format!("no active service {service} in cluster {cluster}"),
                }));
            };
            Ok(Located {
                cluster: found
                    .cluster_arn()
                    .map(str::to_string)
                    .unwrap_or_else(|| cluster.clone()),
                service: found
                    .service_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| service.clone()),
                found,
            })
        }
        Target::Copilot {
            app,
            env,
            name,
            cluster,
        } => {
            let clusters = match cluster {
                Some(c) => vec![c.clone()],
                None => ecs
                    .list_clusters()
                    .into_paginator()
                    .items()
                    .send()
                    .try_collect()
                    .await
                    .map_err(aws("ListClusters"))?,
            };
            let mut matches = Vec::new();
            for c in &clusters {
                let arns = ecs
                    .list_services()
                    .cluster(c)
                    .into_paginator()
                    .items()
                    .send()
                    .try_collect()
                    .await
                    .map_err(aws("ListServices"))?;
                for chunk in arns.chunks(ECS_DESCRIBE_SERVICES_MAX) {
                    let out = ecs
                        .describe_services()
                        .cluster(c)
                        .set_services(Some(chunk.to_vec()))
                        .include(ServiceField::Tags)
                        .send()
                        .await
                        .map_err(aws("DescribeServices"))?;
                    for s in out.services() {
                        if s.status() == Some("ACTIVE")
                            && tag(s, TAG_APP) == Some(app.as_str())
                            && tag(s, TAG_ENV) == Some(env.as_str())
                            && tag(s, TAG_SVC) == Some(name.as_str())
                        {
                            matches.push(Located {
                                cluster: s
                                    .cluster_arn()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| c.clone()),
                                service: s.service_name().unwrap_or_default().to_string(),
                                found: s.clone(),
                            });
                        }
                    }
                }
            }
            let tags = format!("{TAG_APP}={app}, {TAG_ENV}={env}, {TAG_SVC}={name}");
            match matches.len() {
                1 => Ok(matches.remove(0)),
                0 => Err(EcsError::Config(ConfigError {
                    flag: COPILOT_FLAGS.into(),
                    env: COPILOT_ENVS.into(),
                    problem: format!(
                        "no active ECS service is tagged {tags} (searched {} cluster{}); check the names with `copilot svc ls` and the region",
                        clusters.len(),
                        if clusters.len() == 1 { "" } else { "s" }
                    ),
                })),
                _ => Err(EcsError::Config(ConfigError {
                    flag: COPILOT_FLAGS.into(),
                    env: COPILOT_ENVS.into(),
                    problem: format!(
                        "{} services are tagged {tags}: {}; pick one with --cluster/--service",
                        matches.len(),
                        matches
                            .iter()
                            .map(|m| format!("{} in {}", m.service, short(&m.cluster)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })),
            }
        }
    }
}
