//! The ECS API of `local-ecs`: AWS JSON 1.1 (`POST /`, `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Operation>`, any signature accepted) for the one cluster,
//! service and its tasks, answering with the shapes of the ECS API reference (camelCase fields,
//! timestamps as epoch seconds) so that `aws-sdk-ecs` decodes them.
//!
//! Operations: `DescribeServices`, `DescribeTasks`, `ListTasks`, `UpdateTaskProtection`,
//! `GetTaskProtection`, `UpdateService`, `ListServices`, `ListClusters`. Errors are HTTP 400
//! `{"__type": "<Code>", "message": "..."}`.
//!
//! Each task gets its own endpoint, `http://127.0.0.1:<port>/task/<n>` (the SDK keeps an
//! endpoint's path), so calls are counted per calling task without touching its credentials;
//! `POST /` is the same API for callers outside the tasks. Every call is logged ([`EcsCall`]);
//! [`EcsFaults`] denies operations (`AccessDeniedException`, like a task role without the
//! permission) or throttles a share of them (`ThrottlingException`), per operation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{lock, task_id, Control, Inner, Sched, StopReason};
use crate::agent_double::{
    request_id, DEFAULT_EXPIRES_IN_MINUTES, MAX_EXPIRES_IN_MINUTES, MIN_EXPIRES_IN_MINUTES,
};

/// The `X-Amz-Target` prefix of every ECS operation.
const TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// `DescribeServices` takes at most 10 services.
const DESCRIBE_SERVICES_MAX: usize = 10;
/// `DescribeTasks` takes at most 100 tasks.
const DESCRIBE_TASKS_MAX: usize = 100;
/// `UpdateTaskProtection` takes at most 10 tasks.
const UPDATE_PROTECTION_MAX: usize = 10;
/// `GetTaskProtection` takes at most 100 tasks.
const GET_PROTECTION_MAX: usize = 100;
/// `ListTasks` / `ListServices` / `ListClusters`: `maxResults` is 1..=100, default 100.
const LIST_MAX: usize = 100;
const AVAILABILITY_ZONE: &str = "us-east-1a";
const PLATFORM_VERSION: &str = "1.4.0";

/// The operations local-ecs answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EcsOperation {
    DescribeServices,
    DescribeTasks,
    ListTasks,
    UpdateTaskProtection,
    GetTaskProtection,
    UpdateService,
    ListServices,
    ListClusters,
}

impl EcsOperation {
    pub const ALL: [EcsOperation; 8] = [
        EcsOperation::DescribeServices,
        EcsOperation::DescribeTasks,
        EcsOperation::ListTasks,
        EcsOperation::UpdateTaskProtection,
        EcsOperation::GetTaskProtection,
        EcsOperation::UpdateService,
        EcsOperation::ListServices,
        EcsOperation::ListClusters,
    ];

    /// The operation's name, as in `X-Amz-Target` and IAM (`ecs:<name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            EcsOperation::DescribeServices => "DescribeServices",
            EcsOperation::DescribeTasks => "DescribeTasks",
            EcsOperation::ListTasks => "ListTasks",
            EcsOperation::UpdateTaskProtection => "UpdateTaskProtection",
            EcsOperation::GetTaskProtection => "GetTaskProtection",
            EcsOperation::UpdateService => "UpdateService",
            EcsOperation::ListServices => "ListServices",
            EcsOperation::ListClusters => "ListClusters",
        }
    }
}

impl std::fmt::Display for EcsOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`EcsOperation::ALL`].
#[derive(Debug, thiserror::Error)]
#[error("unknown ECS operation {0:?} (known: DescribeServices, DescribeTasks, ListTasks, UpdateTaskProtection, GetTaskProtection, UpdateService, ListServices, ListClusters)")]
pub struct UnknownOperation(pub String);

impl std::str::FromStr for EcsOperation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EcsOperation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownOperation(s.to_owned()))
    }
}

/// Operations to deny or throttle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EcsFaults {
    /// Answered `AccessDeniedException`, like a task role without `ecs:<Operation>`.
    pub deny: BTreeSet<EcsOperation>,
    /// This share (0..=1) of calls is answered `ThrottlingException`.
    pub throttle: BTreeMap<EcsOperation, f64>,
    /// Seed of the throttling draws (the same seed throttles the same calls).
    pub seed: u64,
}

/// One call that reached the ECS API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EcsCall {
    /// Since local-ecs started.
    #[serde(rename = "at_s", serialize_with = "as_secs")]
    pub at: Duration,
    /// The operation as named in `X-Amz-Target` (unknown ones too).
    pub operation: String,
    /// The calling task (`None`: a caller outside the tasks, on `POST /`).
    pub task: Option<u32>,
    pub outcome: CallOutcome,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// How a call was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallOutcome {
    Ok,
    /// `AccessDeniedException` from [`EcsFaults::deny`].
    Denied,
    /// `ThrottlingException` from [`EcsFaults::throttle`].
    Throttled,
    /// Any other error, by code.
    Error(String),
}

pub(super) struct ApiState {
    pub(super) faults: EcsFaults,
    rng: fastrand::Rng,
    pub(super) calls: Vec<EcsCall>,
}

impl ApiState {
    pub(super) fn new(faults: EcsFaults) -> Self {
        let rng = fastrand::Rng::with_seed(faults.seed);
        Self {
            faults,
            rng,
            calls: Vec::new(),
        }
    }

    pub(super) fn set_faults(&mut self, faults: EcsFaults) {
        self.rng = fastrand::Rng::with_seed(faults.seed);
        self.faults = faults;
    }

    /// Denied or throttled by the faults in force.
    fn fault(&mut self, op: EcsOperation) -> Option<CallOutcome> {
        if self.faults.deny.contains(&op) {
            return Some(CallOutcome::Denied);
        }
        let share = self.faults.throttle.get(&op).copied().unwrap_or(0.0);
        (share > 0.0 && self.rng.f64() < share).then_some(CallOutcome::Throttled)
    }
}

/// The endpoint task `n` gets as `AWS_ENDPOINT_URL_ECS`.
pub(super) fn task_endpoint(base: &str, n: u32) -> String {
    format!("{base}/task/{n}")
}

/// The routes of the ECS API: `POST /` and each task's `POST /task/<n>`.
pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route(
            "/",
            post(
                |State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes| async move {
                    answer(&inner, None, &headers, &body)
                },
            ),
        )
        .route("/task/{n}", post(task_call))
        .route("/task/{n}/", post(task_call))
        .with_state(inner)
}

async fn task_call(
    State(inner): State<Arc<Inner>>,
    Path(n): Path<u32>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&inner, Some(n), &headers, &body)
}

/// An error answer of the ECS API.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("Cluster not found.")]
    ClusterNotFound,
    #[error("Service not found.")]
    ServiceNotFound,
    #[error("{0}")]
    InvalidParameter(String),
    #[error("User: arn:aws:sts::{account}:assumed-role/{service}-task-role/{session} is not authorized to perform: ecs:{op} on resource: {resource} because no identity-based policy allows the ecs:{op} action", account = super::ACCOUNT)]
    AccessDenied {
        op: EcsOperation,
        service: String,
        session: String,
        resource: String,
    },
    #[error("Rate exceeded")]
    Throttling,
    #[error("{0}")]
    Serialization(String),
    #[error("Operation {0} is not supported by local-ecs")]
    UnknownOperation(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::ClusterNotFound => "ClusterNotFoundException",
            ApiError::ServiceNotFound => "ServiceNotFoundException",
            ApiError::InvalidParameter(_) => "InvalidParameterException",
            ApiError::AccessDenied { .. } => "AccessDeniedException",
            ApiError::Throttling => "ThrottlingException",
            ApiError::Serialization(_) => "SerializationException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
        }
    }
}

fn answer(inner: &Arc<Inner>, task: Option<u32>, headers: &HeaderMap, body: &[u8]) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = target.strip_prefix(TARGET_PREFIX).unwrap_or(target);
    tracing::debug!(operation = name, ?task, "local-ecs: ECS API call");
    let op = name.parse::<EcsOperation>().ok();
    let fault = op.and_then(|op| lock(&inner.api).fault(op));
    let result = match (op, &fault) {
        (None, _) => Err(ApiError::UnknownOperation(name.to_owned())),
        (Some(op), Some(CallOutcome::Denied)) => Err(ApiError::AccessDenied {
            op,
            service: inner.spec.service.clone(),
            session: task.map_or_else(|| "local".to_owned(), |n| format!("task-{n}")),
            resource: inner.spec.cluster_arn(),
        }),
        (Some(_), Some(_)) => Err(ApiError::Throttling),
        (Some(op), None) => parse_body(body).and_then(|v| dispatch(inner, op, v)),
    };
    let outcome = match (&result, fault) {
        (_, Some(f)) => f,
        (Ok(_), None) => CallOutcome::Ok,
        (Err(e), None) => CallOutcome::Error(e.code().to_owned()),
    };
    lock(&inner.api).calls.push(EcsCall {
        at: inner.started.elapsed(),
        operation: name.to_owned(),
        task,
        outcome,
    });
    let (status, body) = match result {
        Ok(v) => (StatusCode::OK, v),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"__type": e.code(), "message": e.to_string()}),
        ),
    };
    (
        status,
        [
            (header::CONTENT_TYPE, CONTENT_TYPE.to_owned()),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                request_id(),
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Serialization(e.to_string()))
}

fn request<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::Serialization(e.to_string()))
}

fn dispatch(inner: &Arc<Inner>, op: EcsOperation, v: Value) -> Result<Value, ApiError> {
    match op {
        EcsOperation::DescribeServices => describe_services(inner, request(v)?),
        EcsOperation::DescribeTasks => describe_tasks(inner, request(v)?),
        EcsOperation::ListTasks => list_tasks(inner, request(v)?),
        EcsOperation::UpdateTaskProtection => update_task_protection(inner, request(v)?),
        EcsOperation::GetTaskProtection => get_task_protection(inner, request(v)?),
        EcsOperation::UpdateService => update_service(inner, request(v)?),
        EcsOperation::ListServices => {
            let r: ListReq = request(v)?;
            check_cluster(inner, r.cluster.as_deref())?;
            check_max_results(r.max_results)?;
            Ok(json!({"serviceArns": [inner.spec.service_arn()]}))
        }
        EcsOperation::ListClusters => {
            let r: ListReq = request(v)?;
            check_max_results(r.max_results)?;
            Ok(json!({"clusterArns": [inner.spec.cluster_arn()]}))
        }
    }
}

// ---- requests (fields as in the ECS API reference; unknown ones are ignored)

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeServicesReq {
    cluster: Option<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DescribeTasksReq {
    cluster: Option<String>,
    #[serde(default)]
    tasks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListTasksReq {
    cluster: Option<String>,
    service_name: Option<String>,
    desired_status: Option<String>,
    started_by: Option<String>,
    family: Option<String>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateTaskProtectionReq {
    cluster: Option<String>,
    #[serde(default)]
    tasks: Vec<String>,
    protection_enabled: Option<bool>,
    expires_in_minutes: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetTaskProtectionReq {
    cluster: Option<String>,
    tasks: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateServiceReq {
    cluster: Option<String>,
    service: Option<String>,
    desired_count: Option<i64>,
    #[serde(default)]
    force_new_deployment: bool,
    task_definition: Option<String>,
    deployment_configuration: Option<DeploymentConfigurationReq>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeploymentConfigurationReq {
    maximum_percent: Option<u32>,
    minimum_healthy_percent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListReq {
    cluster: Option<String>,
    max_results: Option<i64>,
}

// ---- checks

/// The cluster by name or ARN; ECS's default when omitted is `default`.
fn check_cluster(inner: &Inner, cluster: Option<&str>) -> Result<(), ApiError> {
    let c = cluster.unwrap_or("default");
    if c == inner.spec.cluster || c == inner.spec.cluster_arn() {
        Ok(())
    } else {
        Err(ApiError::ClusterNotFound)
    }
}

/// The service by name or ARN.
fn is_our_service(inner: &Inner, service: &str) -> bool {
    service == inner.spec.service || service == inner.spec.service_arn()
}

fn check_count(what: &str, n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 || n > max {
        return Err(ApiError::InvalidParameter(format!(
            "{what} must contain between 1 and {max} entries (got {n})."
        )));
    }
    Ok(())
}

fn check_max_results(max: Option<i64>) -> Result<usize, ApiError> {
    match max {
        None => Ok(LIST_MAX),
        Some(m) if (1..=LIST_MAX as i64).contains(&m) => Ok(m as usize),
        Some(m) => Err(ApiError::InvalidParameter(format!(
            "maxResults must be between 1 and {LIST_MAX} (got {m})."
        ))),
    }
}

// ---- shapes

/// Epoch seconds with milliseconds, as a JSON number (how JSON 1.1 carries timestamps).
fn epoch(t: SystemTime) -> Value {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    json!(ms as f64 / 1000.0)
}

/// A task as DescribeTasks and ListTasks see it: running (perhaps told to stop) or stopped.
struct TaskView {
    n: u32,
    arn: String,
    revision: u32,
    deployment: String,
    created_at: SystemTime,
    /// Told to stop: when, and why.
    stopping: Option<(SystemTime, Option<StopReason>)>,
    /// Exited: when, with which exit code.
    stopped: Option<(SystemTime, Option<i32>)>,
}

impl TaskView {
    fn desired_stopped(&self) -> bool {
        self.stopping.is_some() || self.stopped.is_some()
    }
}

/// Every task local-ecs can describe, in start order.
fn task_views(inner: &Inner, st: &Sched) -> Vec<TaskView> {
    let mut views: Vec<TaskView> = st
        .stopped
        .iter()
        .map(|s| TaskView {
            n: s.n,
            arn: s.arn.clone(),
            revision: s.revision,
            deployment: s.deployment.clone(),
            created_at: s.created_at,
            stopping: Some((s.stopping_at.unwrap_or(s.stopped_at), s.reason)),
            stopped: Some((s.stopped_at, s.exit_code)),
        })
        .chain(st.tasks.iter().map(|t| TaskView {
            n: t.n,
            arn: t.endpoint.task_arn(),
            revision: t.revision,
            deployment: t.deployment.clone(),
            created_at: t.created_at,
            stopping: t.stop.map(|(r, at)| (inner.wall_of(at), Some(r))),
            stopped: None,
        }))
        .collect();
    views.sort_by_key(|v| v.n);
    views
}

fn find_view<'a>(views: &'a [TaskView], reference: &str) -> Option<&'a TaskView> {
    let id = task_id(reference);
    views.iter().find(|v| task_id(&v.arn) == id)
}

fn task_json(inner: &Inner, v: &TaskView) -> Value {
    let spec = &inner.spec;
    let last = if v.stopped.is_some() {
        "STOPPED"
    } else {
        "RUNNING"
    };
    let desired = if v.desired_stopped() {
        "STOPPED"
    } else {
        "RUNNING"
    };
    let mut container = json!({
        "containerArn": format!(
            "arn:aws:ecs:{}:{}:container/{}/{}/{:032x}",
            super::REGION, super::ACCOUNT, spec.cluster, task_id(&v.arn), v.n
        ),
        "taskArn": v.arn,
        "name": "worker",
        "lastStatus": last,
        "healthStatus": "UNKNOWN",
        "cpu": "0",
    });
    let mut task = json!({
        "taskArn": v.arn,
        "clusterArn": spec.cluster_arn(),
        "taskDefinitionArn": spec.task_definition_arn(v.revision),
        "group": format!("service:{}", spec.service),
        "startedBy": v.deployment,
        "lastStatus": last,
        "desiredStatus": desired,
        "createdAt": epoch(v.created_at),
        "pullStartedAt": epoch(v.created_at),
        "pullStoppedAt": epoch(v.created_at),
        "startedAt": epoch(v.created_at),
        "launchType": "FARGATE",
        "platformVersion": PLATFORM_VERSION,
        "platformFamily": "Linux",
        "availabilityZone": AVAILABILITY_ZONE,
        "cpu": "256",
        "memory": "512",
        "connectivity": "CONNECTED",
        "connectivityAt": epoch(v.created_at),
        "healthStatus": "UNKNOWN",
        "version": if v.stopped.is_some() { 3 } else if v.stopping.is_some() { 2 } else { 1 },
        "attachments": [],
        "tags": [],
    });
    if let Some(o) = task.as_object_mut() {
        if let Some((at, reason)) = v.stopping {
            let (code, why) = match reason {
                Some(StopReason::ScaleIn | StopReason::Deployment) => (
                    "ServiceSchedulerInitiated",
                    format!(
                        "Scaling activity initiated by (deployment {})",
                        v.deployment
                    ),
                ),
                Some(StopReason::Shutdown) => (
                    "UserInitiated",
                    "Task stopped by local-ecs shutting down".into(),
                ),
                None => (
                    "EssentialContainerExited",
                    "Essential container in task exited".into(),
                ),
            };
            o.insert("stoppingAt".into(), epoch(at));
            o.insert("stopCode".into(), json!(code));
            o.insert("stoppedReason".into(), json!(why));
        }
        if let Some((at, exit_code)) = v.stopped {
            o.insert("executionStoppedAt".into(), epoch(at));
            o.insert("stoppedAt".into(), epoch(at));
            if let (Some(c), Some(code)) = (container.as_object_mut(), exit_code) {
                c.insert("exitCode".into(), json!(code));
            }
        }
        o.insert("containers".into(), json!([container]));
    }
    task
}

fn service_json(inner: &Inner, st: &Sched, with_tags: bool) -> Value {
    let spec = &inner.spec;
    let deployments: Vec<Value> = st
        .deployments
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let tasks = st.tasks.iter().filter(|t| t.revision == d.revision);
            let running = tasks.clone().count();
            // An ACTIVE deployment wants what it still keeps; the PRIMARY one the service's count.
            let desired = if i == 0 {
                st.desired
            } else {
                tasks.filter(|t| t.stop.is_none()).count()
            };
            let state = d.rollout_state();
            let reason = if d.completed {
                format!("ECS deployment {} completed.", d.id)
            } else {
                format!("ECS deployment {} in progress.", d.id)
            };
            json!({
                "id": d.id,
                "status": if i == 0 { "PRIMARY" } else { "ACTIVE" },
                "taskDefinition": spec.task_definition_arn(d.revision),
                "desiredCount": desired,
                "pendingCount": 0,
                "runningCount": running,
                "failedTasks": d.failed_tasks,
                "createdAt": epoch(d.created_at),
                "updatedAt": epoch(d.updated_at),
                "launchType": "FARGATE",
                "platformVersion": PLATFORM_VERSION,
                "platformFamily": "Linux",
                "rolloutState": state,
                "rolloutStateReason": reason,
            })
        })
        .collect();
    let events: Vec<Value> = st
        .service_events
        .iter()
        .map(|e| json!({"id": e.id, "createdAt": epoch(e.created_at), "message": e.message}))
        .collect();
    let mut service = json!({
        "serviceArn": spec.service_arn(),
        "serviceName": spec.service,
        "clusterArn": spec.cluster_arn(),
        "status": "ACTIVE",
        "desiredCount": st.desired,
        "runningCount": st.tasks.len(),
        "pendingCount": 0,
        "launchType": "FARGATE",
        "platformVersion": "LATEST",
        "platformFamily": "Linux",
        "taskDefinition": spec.task_definition_arn(st.revision),
        "deploymentConfiguration": {
            "maximumPercent": st.maximum_percent,
            "minimumHealthyPercent": st.minimum_healthy_percent,
            "deploymentCircuitBreaker": {"enable": false, "rollback": false},
        },
        "deployments": deployments,
        "events": events,
        "createdAt": epoch(st.created_at),
        "schedulingStrategy": "REPLICA",
        "deploymentController": {"type": "ECS"},
        "enableECSManagedTags": false,
        "propagateTags": "NONE",
        "enableExecuteCommand": false,
    });
    if with_tags {
        let tags: Vec<Value> = spec
            .tags
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        if let Some(o) = service.as_object_mut() {
            o.insert("tags".into(), json!(tags));
        }
    }
    service
}

fn missing(arn: &str) -> Value {
    json!({"arn": arn, "reason": "MISSING"})
}

// ---- operations

fn describe_services(inner: &Inner, r: DescribeServicesReq) -> Result<Value, ApiError> {
    check_cluster(inner, r.cluster.as_deref())?;
    check_count("services", r.services.len(), DESCRIBE_SERVICES_MAX)?;
    let with_tags = r.include.iter().any(|i| i == "TAGS");
    let st = lock(&inner.state);
    let (mut services, mut failures) = (Vec::new(), Vec::new());
    for s in &r.services {
        if is_our_service(inner, s) {
            services.push(service_json(inner, &st, with_tags));
        } else if s.starts_with("arn:") {
            failures.push(missing(s));
        } else {
            let arn = format!(
                "arn:aws:ecs:{}:{}:service/{}/{s}",
                super::REGION,
                super::ACCOUNT,
                inner.spec.cluster
            );
            failures.push(missing(&arn));
        }
    }
    Ok(json!({"services": services, "failures": failures}))
}

fn describe_tasks(inner: &Inner, r: DescribeTasksReq) -> Result<Value, ApiError> {
    check_cluster(inner, r.cluster.as_deref())?;
    check_count("tasks", r.tasks.len(), DESCRIBE_TASKS_MAX)?;
    let st = lock(&inner.state);
    let views = task_views(inner, &st);
    let (mut tasks, mut failures) = (Vec::new(), Vec::new());
    for reference in &r.tasks {
        match find_view(&views, reference) {
            Some(v) => tasks.push(task_json(inner, v)),
            None => failures.push(missing(reference)),
        }
    }
    Ok(json!({"tasks": tasks, "failures": failures}))
}

/// `nextToken` of ListTasks: the task number the next page starts after.
fn list_token(after: u32) -> String {
    format!("local-ecs-after-{after}")
}

fn list_tasks(inner: &Inner, r: ListTasksReq) -> Result<Value, ApiError> {
    check_cluster(inner, r.cluster.as_deref())?;
    let max = check_max_results(r.max_results)?;
    if let Some(s) = &r.service_name {
        if !is_our_service(inner, s) {
            return Err(ApiError::ServiceNotFound);
        }
    }
    let want_stopped = match r.desired_status.as_deref().unwrap_or("RUNNING") {
        "RUNNING" => Some(false),
        "STOPPED" => Some(true),
        // Tasks start RUNNING at once here: none is ever PENDING.
        "PENDING" => None,
        other => {
            return Err(ApiError::InvalidParameter(format!(
                "desiredStatus must be RUNNING, PENDING or STOPPED (got {other})."
            )))
        }
    };
    let after = match &r.next_token {
        None => 0,
        Some(t) => t
            .strip_prefix("local-ecs-after-")
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| ApiError::InvalidParameter("Invalid nextToken.".into()))?,
    };
    if r.family.as_deref().is_some_and(|f| f != inner.spec.family) {
        return Ok(json!({"taskArns": []}));
    }
    let st = lock(&inner.state);
    let matching: Vec<TaskView> = task_views(inner, &st)
        .into_iter()
        .filter(|v| want_stopped == Some(v.desired_stopped()))
        .filter(|v| r.started_by.as_deref().is_none_or(|b| b == v.deployment))
        .filter(|v| v.n > after)
        .collect();
    let page: Vec<&TaskView> = matching.iter().take(max).collect();
    let mut out = json!({"taskArns": page.iter().map(|v| v.arn.clone()).collect::<Vec<_>>()});
    if matching.len() > max {
        if let (Some(o), Some(last)) = (out.as_object_mut(), page.last()) {
            o.insert("nextToken".into(), json!(list_token(last.n)));
        }
    }
    Ok(out)
}

fn protection_json(arn: &str, p: crate::agent_double::Protection) -> Value {
    let mut v = json!({"taskArn": arn, "protectionEnabled": p.enabled});
    if let (Some(o), Some(at), true) = (v.as_object_mut(), p.expires_at, p.enabled) {
        o.insert("expirationDate".into(), epoch(at));
    }
    v
}

fn update_task_protection(inner: &Inner, r: UpdateTaskProtectionReq) -> Result<Value, ApiError> {
    check_cluster(inner, r.cluster.as_deref())?;
    check_count("tasks", r.tasks.len(), UPDATE_PROTECTION_MAX)?;
    let Some(enabled) = r.protection_enabled else {
        return Err(ApiError::InvalidParameter(
            "protectionEnabled is required.".into(),
        ));
    };
    let minutes = match r.expires_in_minutes {
        None => DEFAULT_EXPIRES_IN_MINUTES,
        Some(m) => u32::try_from(m)
            .ok()
            .filter(|m| (MIN_EXPIRES_IN_MINUTES..=MAX_EXPIRES_IN_MINUTES).contains(m))
            .ok_or_else(|| {
                ApiError::InvalidParameter(format!(
                    "expiresInMinutes must be between {MIN_EXPIRES_IN_MINUTES} and {MAX_EXPIRES_IN_MINUTES} (got {m})."
                ))
            })?,
    };
    let mut st = lock(&inner.state);
    let (mut protected, mut failures) = (Vec::new(), Vec::new());
    for reference in &r.tasks {
        let id = task_id(reference);
        let Some(i) = st
            .tasks
            .iter()
            .position(|t| task_id(&t.endpoint.task_arn()) == id)
        else {
            failures.push(missing(reference));
            continue;
        };
        let endpoint = st.tasks[i].endpoint.clone();
        let p = endpoint.set_protection(enabled, minutes);
        inner.note_protection(
            &mut st,
            i,
            enabled,
            inner.double.now(),
            minutes,
            " (ECS API)",
        );
        protected.push(protection_json(&endpoint.task_arn(), p));
    }
    Ok(json!({"protectedTasks": protected, "failures": failures}))
}

fn get_task_protection(inner: &Inner, r: GetTaskProtectionReq) -> Result<Value, ApiError> {
    check_cluster(inner, r.cluster.as_deref())?;
    let st = lock(&inner.state);
    let (mut protected, mut failures) = (Vec::new(), Vec::new());
    match &r.tasks {
        None => {
            for t in &st.tasks {
                protected.push(protection_json(
                    &t.endpoint.task_arn(),
                    t.endpoint.protection(),
                ));
            }
        }
        Some(tasks) => {
            check_count("tasks", tasks.len(), GET_PROTECTION_MAX)?;
            for reference in tasks {
                let id = task_id(reference);
                match st
                    .tasks
                    .iter()
                    .find(|t| task_id(&t.endpoint.task_arn()) == id)
                {
                    Some(t) => protected.push(protection_json(
                        &t.endpoint.task_arn(),
                        t.endpoint.protection(),
                    )),
                    None => failures.push(missing(reference)),
                }
            }
        }
    }
    Ok(json!({"protectedTasks": protected, "failures": failures}))
}

fn update_service(inner: &Arc<Inner>, r: UpdateServiceReq) -> Result<Value, ApiError> {
    check_cluster(inner, r.cluster.as_deref())?;
    let Some(service) = r.service.as_deref() else {
        return Err(ApiError::InvalidParameter("service is required.".into()));
    };
    if !is_our_service(inner, service) {
        return Err(ApiError::ServiceNotFound);
    }
    let desired = match r.desired_count {
        None => None,
        Some(n) => Some(usize::try_from(n).map_err(|_| {
            ApiError::InvalidParameter(format!("desiredCount must be 0 or more (got {n})."))
        })?),
    };
    let control = Control {
        inner: inner.clone(),
    };
    let (revision, max, min, current) = {
        let st = lock(&inner.state);
        (
            st.revision,
            st.maximum_percent,
            st.minimum_healthy_percent,
            st.desired,
        )
    };
    if let Some(td) = r.task_definition.as_deref() {
        let same = [
            inner.spec.task_definition_arn(revision),
            format!("{}:{revision}", inner.spec.family),
            inner.spec.family.clone(),
        ];
        if !same.iter().any(|s| s == td) {
            return Err(ApiError::InvalidParameter(format!(
                "local-ecs registers no task definitions: {td} is not the current {}; use forceNewDeployment to start a deployment.",
                same[0]
            )));
        }
    }
    if let Some(c) = &r.deployment_configuration {
        control
            .set_deployment_percents(
                c.maximum_percent.unwrap_or(max),
                c.minimum_healthy_percent.unwrap_or(min),
            )
            .map_err(ApiError::InvalidParameter)?;
    }
    if let Some(d) = desired.filter(|&d| d != current) {
        control.set_desired(d);
    }
    if r.force_new_deployment {
        control.deploy();
    }
    let st = lock(&inner.state);
    Ok(json!({"service": service_json(inner, &st, false)}))
}
