#!/usr/bin/env python3
"""Stands deploy/cloudformation/queue-worker.yml up on moto, reads it back, and runs the worker
against the stack's own queue.

Usage: .tools/moto/bin/python tests/deploy/stack_on_moto.py [--worker PATH]
  PATH defaults to $QUEUE_WORKER, else ${CARGO_TARGET_DIR:-target}/debug/queue-worker.
Run by scripts/test.sh after cargo test. Standard library + boto3 and PyYAML from moto's venv.

1. Starts moto_server on a free loopback port, creates a VPC, subnet and security group in it,
   and creates the stack with create_stack; waits for CREATE_COMPLETE.
2. Reads back what moto created (queues, task definition, roles, log group, service, cluster)
   and checks each property through moto's API. Where moto drops a property (its task
   definitions lose the roles and network mode, its services the Fargate settings) or skips a
   resource altogether (autoscaling, alarms, queue policies), the property is checked in the
   template instead, and the report says so. Nothing is left out of the stack for moto's sake.
3. Checks the task role's actions against the worker's calls (scripts/check_iam_actions.py).
4. Runs the worker with the task definition's own environment (protection off, dummy
   credentials, AWS_ENDPOINT_URL=moto): 20 short jobs must be processed and deleted, a failing
   one must land in the stack's dead-letter queue through the redrive policy, the task
   definition's health check command must pass, and SIGTERM must end the worker with exit 0.
Exits 1 if any check fails; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import check_iam_actions as iam_check  # noqa: E402

TEMPLATE = ROOT / "deploy/cloudformation/queue-worker.yml"
MOTO_SERVER = ROOT / ".tools/moto/bin/moto_server"
REGION = "us-east-1"
STACK = "qw-moto"
IMAGE = "example.invalid/queue-worker:moto"
MAX_RECEIVE_COUNT = 2
CONCURRENCY = 2
SHORT_JOBS = 20
FAILING_BODY = '{"duration_ms":1,"fail":true}'


class Report:
    """PASS/FAIL lines, each saying where the value was read."""

    def __init__(self) -> None:
        self.failures = 0

    def section(self, title: str) -> None:
        print(f"\n-- {title}")

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.failures += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {name}{f': {detail}' if detail else ''}")
        return ok

    def prop(self, name: str, expected, from_api, from_template) -> None:
        """Checks a property through moto's API, or in the template where moto dropped it."""
        if from_api == expected:
            self.check(name, True, f"{expected!r} (moto API)")
        elif from_template == expected:
            self.check(name, True, f"{expected!r} (template; moto returned {from_api!r})")
        else:
            self.check(name, False, f"expected {expected!r}, moto {from_api!r}, template {from_template!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def policy_document(doc):
    """moto returns CloudFormation-created inline policies as a Python repr, not JSON."""
    if isinstance(doc, dict):
        return doc
    try:
        return json.loads(doc)
    except ValueError:
        return ast.literal_eval(doc)


def eval_expression(expr: str, values: dict[str, float | None]) -> float | None:
    """Evaluates the metric math used here (+ - * /, IF, AND, FILL, comparisons); None = no data."""
    def fill(v, default):
        return default if v is None else v

    def if_(cond, a, b):
        return None if cond is None else (a if cond else b)

    py = expr.replace("IF(", "if_(").replace("FILL(", "fill(").replace(" AND ", " and ")
    if set(py) - set("abcdefghijklmnopqrstuvwxyz_0123456789+-*/(), .=<>"):
        raise ValueError(f"unexpected characters in {expr!r}")
    try:
        return eval(py, {"__builtins__": {}}, {"if_": if_, "fill": fill, **values})  # noqa: S307 (checked above)
    except TypeError:  # arithmetic on a missing value
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help="the queue-worker binary")
    args = ap.parse_args()
    worker = Path(
        args.worker
        or os.environ.get("QUEUE_WORKER")
        or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug/queue-worker"
    )
    if not worker.is_absolute():
        worker = ROOT / worker
    if not os.access(worker, os.X_OK):
        print(f"stack_on_moto: no worker binary at {worker} (build it: cargo build --bin queue-worker)", file=sys.stderr)
        return 2

    r = Report()
    started = time.monotonic()
    template = iam_check.load_template(TEMPLATE)
    tres = template["Resources"]
    with tempfile.TemporaryDirectory(prefix="stack-on-moto-") as tmp:
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        moto_log = open(Path(tmp) / "moto.log", "wb")
        moto = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=moto_log, stderr=subprocess.STDOUT)
        try:
            wait_for("moto_server", lambda: _answers(endpoint), 30)
            print(f"moto_server on {endpoint} (pid {moto.pid})")
            run(r, endpoint, worker, template, tres, Path(tmp))
        except Exception as err:  # report and fail, never hang
            r.check("the test ran to its end", False, f"{type(err).__name__}: {err}")
            moto_log.flush()
            tail = (Path(tmp) / "moto.log").read_text(errors="replace").splitlines()[-15:]
            print("  moto.log (last lines):\n    " + "\n    ".join(tail))
        finally:
            moto.send_signal(signal.SIGTERM)
            try:
                moto.wait(10)
            except subprocess.TimeoutExpired:
                moto.kill()
            moto_log.close()
    print(f"\nstack_on_moto: {'FAILED' if r.failures else 'ok'}: {r.failures} failed checks ({time.monotonic() - started:.0f} s)")
    return 1 if r.failures else 0


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def run(r: Report, endpoint: str, worker: Path, template: dict, tres: dict, tmp: Path) -> None:
    kw = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
    ec2, cfn, sqs, ecs, iam, logs = (boto3.client(s, **kw) for s in ("ec2", "cloudformation", "sqs", "ecs", "iam", "logs"))

    # ---- 1. the stack ------------------------------------------------------------------------
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="queue-worker", Description="queue-worker tasks", VpcId=vpc)["GroupId"]
    params = {"Image": IMAGE, "Subnets": subnet, "SecurityGroup": sg, "MaxReceiveCount": str(MAX_RECEIVE_COUNT),
              "Concurrency": str(CONCURRENCY), "MinTasks": "0", "MaxTasks": "3"}
    cfn.create_stack(StackName=STACK, TemplateBody=TEMPLATE.read_text(encoding="utf-8"), Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
    stack = wait_for("the stack", lambda: _settled(cfn), 120)
    r.section(f"stack {STACK}")
    if not r.check("create_stack", stack["StackStatus"] == "CREATE_COMPLETE", f"{stack['StackStatus']} {stack.get('StackStatusReason') or ''}".strip()):
        for e in cfn.describe_stack_events(StackName=STACK)["StackEvents"][:15]:
            print(f"    {e.get('LogicalResourceId')} {e.get('ResourceStatus')} {e.get('ResourceStatusReason') or ''}")
        return
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    r.check("outputs", {"QueueUrl", "DeadLetterQueueUrl", "ServiceName", "ClusterName"} <= set(outputs), ", ".join(sorted(outputs)))
    summaries = cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    created = {s["LogicalResourceId"]: s for s in summaries if s.get("LogicalResourceId")}
    skipped = sorted(set(tres) - set(created))
    print("  moto created:     " + ", ".join(f"{k} ({tres[k]['Type']})" for k in created))
    print("  moto did not:     " + (", ".join(f"{k} ({tres[k]['Type']})" for k in skipped) or "(none)"))
    print(f"                    ({len(summaries) - len(created)} blank entries in its resource list); checked in the template below")
    phys = {k: v["PhysicalResourceId"] for k, v in created.items()}
    cluster_name = outputs["ClusterName"]

    # ---- 2a. queues ----------------------------------------------------------------------------
    r.section("queues (moto API)")
    qa = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"], AttributeNames=["All"])["Attributes"]
    da = sqs.get_queue_attributes(QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(qa.get("RedrivePolicy", "{}"))
    r.check("RedrivePolicy points at the stack's dead-letter queue", redrive.get("deadLetterTargetArn") == da["QueueArn"], redrive.get("deadLetterTargetArn", "none"))
    r.check("RedrivePolicy maxReceiveCount = MaxReceiveCount", int(redrive.get("maxReceiveCount", -1)) == MAX_RECEIVE_COUNT, str(redrive.get("maxReceiveCount")))
    r.check("queue VisibilityTimeout 60", qa.get("VisibilityTimeout") == "60", qa.get("VisibilityTimeout", ""))
    r.check("queue and DLQ SqsManagedSseEnabled", qa.get("SqsManagedSseEnabled") == "true" and da.get("SqsManagedSseEnabled") == "true")
    r.check("DLQ keeps messages 14 days", da.get("MessageRetentionPeriod") == "1209600", da.get("MessageRetentionPeriod", ""))

    # ---- 2b. task definition ------------------------------------------------------------------
    r.section("task definition")
    td = ecs.describe_task_definition(taskDefinition=phys["TaskDefinition"])["taskDefinition"]
    tprops = tres["TaskDefinition"]["Properties"]
    (c,) = td["containerDefinitions"]
    env = {e["name"]: e["value"] for e in c.get("environment", [])}
    r.check("image", c.get("image") == IMAGE, c.get("image", ""))
    expected_env = {
        "QUEUE_URL": outputs["QueueUrl"], "WORKER_LOG_FORMAT": "json", "WORKER_METRICS_ADDR": "127.0.0.1:9090",
        "WORKER_CONCURRENCY": str(CONCURRENCY), "WORKER_WAIT_TIME": "20s", "WORKER_VISIBILITY_TIMEOUT": "60s",
        "WORKER_SHUTDOWN_TIMEOUT": "25s", "WORKER_PROTECTION": "auto", "WORKER_PROTECT": "before-receive",
        "WORKER_PROTECTION_DURATION": "5m", "WORKER_IDLE_WINDOW": "5s",
    }
    r.check("environment (moto API)", env == expected_env, "as expected" if env == expected_env else f"{env}")
    r.check("no DEAD_LETTER_QUEUE_URL / COPILOT_QUEUE_URI (SQS redrive dead-letters)", not {"DEAD_LETTER_QUEUE_URL", "COPILOT_QUEUE_URI"} & set(env))
    stop = c.get("stopTimeout")
    r.check("stopTimeout 60 s: above the 25 s shutdown timeout, within Fargate's 120 s (moto API)", stop == 60, str(stop))
    hc = c.get("healthCheck", {})
    r.check("health check in CMD form (moto API)", hc.get("command") == ["CMD", "/usr/local/bin/queue-worker", "health"], str(hc.get("command")))
    r.check("readonlyRootFilesystem (moto API)", c.get("readonlyRootFilesystem") is True)
    lc = c.get("logConfiguration", {})
    r.check("awslogs to the stack's log group (moto API)", lc.get("logDriver") == "awslogs" and lc.get("options", {}).get("awslogs-group") == phys["LogGroup"], str(lc.get("options", {}).get("awslogs-group")))
    r.prop("networkMode", "awsvpc", td.get("networkMode"), tprops.get("NetworkMode"))
    r.prop("requiresCompatibilities", ["FARGATE"], td.get("requiresCompatibilities"), tprops.get("RequiresCompatibilities"))
    r.prop("cpu", "256", td.get("cpu"), template["Parameters"]["Cpu"]["Default"] if tprops.get("Cpu") == {"Ref": "Cpu"} else None)
    r.prop("taskRoleArn is the stack's TaskRole", True, td.get("taskRoleArn", "").endswith("/" + phys["TaskRole"]) or None,
           tprops.get("TaskRoleArn") == {"Fn::GetAtt": ["TaskRole", "Arn"]})
    r.prop("executionRoleArn is the stack's ExecutionRole", True, td.get("executionRoleArn", "").endswith("/" + phys["ExecutionRole"]) or None,
           tprops.get("ExecutionRoleArn") == {"Fn::GetAtt": ["ExecutionRole", "Arn"]})

    # ---- 3. roles -----------------------------------------------------------------------------------
    r.section("task role against the worker's calls (moto IAM; inline policies parsed from its Python repr)")
    calls, unmapped = iam_check.worker_calls()
    r.check("every call site in src/ maps to an IAM action", not unmapped, "; ".join(unmapped))
    needed = iam_check.needed_actions(calls, set(env))
    role = phys["TaskRole"]
    statements = [st for n in iam.list_role_policies(RoleName=role)["PolicyNames"]
                  for st in policy_document(iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"])["Statement"]]
    granted = {a for st in statements for a in iam_check._as_list(st["Action"])}
    r.check("task role actions == what the worker calls with this environment", granted == needed,
            ", ".join(sorted(granted)) + ("" if granted == needed else f" (needed: {', '.join(sorted(needed))})"))
    r.check("no managed policies on the task role", not iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"])
    queue_arn = qa["QueueArn"]
    for st in statements:
        resources = iam_check._as_list(st["Resource"])
        if any(a.startswith("sqs:") for a in iam_check._as_list(st["Action"])):
            r.check(f"{st.get('Sid')}: only on the stack's queue", resources == [queue_arn], str(resources))
        elif iam_check._as_list(st["Action"]) == ["ecs:DescribeServices"]:
            want = f"arn:aws:ecs:{REGION}:123456789012:service/{cluster_name}/{STACK}"
            r.check(f"{st.get('Sid')}: only the stack's own service", resources == [want], str(resources))
        elif iam_check._as_list(st["Action"]) == ["ecs:ListTasks"]:
            # ListTasks has no resource type: "*", kept to this cluster by its ecs:cluster condition.
            cluster_arn = f"arn:aws:ecs:{REGION}:123456789012:cluster/{cluster_name}"
            condition = (st.get("Condition") or {}).get("ArnEquals", {}).get("ecs:cluster")
            r.check(f"{st.get('Sid')}: any resource, only in this cluster (ecs:cluster)",
                    resources == ["*"] and condition == cluster_arn, f"{resources} {condition}")
        else:
            want = f"arn:aws:ecs:{REGION}:123456789012:task/{cluster_name}/*"
            r.check(f"{st.get('Sid')}: only on this cluster's tasks", resources == [want], str(resources))
    exec_role = phys["ExecutionRole"]
    exec_actions = {a for n in iam.list_role_policies(RoleName=exec_role)["PolicyNames"]
                    for st in policy_document(iam.get_role_policy(RoleName=exec_role, PolicyName=n)["PolicyDocument"])["Statement"]
                    for a in iam_check._as_list(st["Action"])}
    r.check("execution role: image pull and log writes only", exec_actions == {"ecr:GetAuthorizationToken", "ecr:BatchCheckLayerAvailability",
            "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage", "logs:CreateLogStream", "logs:PutLogEvents"}, ", ".join(sorted(exec_actions)))

    # ---- 2c. logs, cluster, service --------------------------------------------------------------
    r.section("log group, cluster, service")
    groups = logs.describe_log_groups(logGroupNamePrefix=phys["LogGroup"])["logGroups"]
    r.check("log group retention = LogRetentionDays (30) (moto API)", bool(groups) and groups[0].get("retentionInDays") == 30, str(groups[0].get("retentionInDays") if groups else None))
    cl = ecs.describe_clusters(clusters=[cluster_name], include=["SETTINGS"])["clusters"][0]
    ci = {s["name"]: s["value"] for s in cl.get("settings", [])}.get("containerInsights")
    tci = {s["Name"]: s["Value"] for s in tres["Cluster"]["Properties"].get("ClusterSettings", [])}.get("containerInsights")
    r.prop("cluster containerInsights (the autoscaling metrics need it)", "enabled", ci, tci)
    (svc,) = ecs.describe_services(cluster=cluster_name, services=[outputs["ServiceName"]])["services"]
    sprops = tres["Service"]["Properties"]
    r.check("service exists in the cluster and runs this task definition (moto API)", svc.get("taskDefinition") == td["taskDefinitionArn"], svc.get("serviceName", ""))
    r.prop("launchType", "FARGATE", svc.get("launchType"), sprops.get("LaunchType"))
    dc = svc.get("deploymentConfiguration") or {}
    r.prop("deployment circuit breaker with rollback", {"enable": True, "rollback": True}, dc.get("deploymentCircuitBreaker"),
           {k.lower(): v for k, v in sprops["DeploymentConfiguration"]["DeploymentCircuitBreaker"].items()})
    r.prop("rolling: 100 % healthy, 200 % max", (100, 200), (dc.get("minimumHealthyPercent"), dc.get("maximumPercent")) if dc else None,
           (sprops["DeploymentConfiguration"]["MinimumHealthyPercent"], sprops["DeploymentConfiguration"]["MaximumPercent"]))
    r.prop("enableExecuteCommand false", False, svc.get("enableExecuteCommand"), sprops.get("EnableExecuteCommand"))
    awsvpc = (svc.get("networkConfiguration") or {}).get("awsvpcConfiguration")
    r.prop("awsvpc: the Subnets / SecurityGroup / AssignPublicIp parameters",
           {"Subnets": {"Ref": "Subnets"}, "SecurityGroups": [{"Ref": "SecurityGroup"}], "AssignPublicIp": {"Ref": "AssignPublicIp"}},
           awsvpc, sprops["NetworkConfiguration"]["AwsvpcConfiguration"])
    r.check("AssignPublicIp defaults to DISABLED (template)", template["Parameters"]["AssignPublicIp"]["Default"] == "DISABLED")
    r.check("no DesiredCount: autoscaling owns the count (template)", "DesiredCount" not in sprops)

    # ---- 2d. what moto does not create: checked in the template -----------------------------------
    check_template_only(r, template, tres, skipped)

    # ---- 4. the worker against the stack's queue ------------------------------------------------------
    run_worker(r, endpoint, worker, env, outputs, sqs, tmp)


def _settled(cfn):
    s = cfn.describe_stacks(StackName=STACK)["Stacks"][0]
    return None if s["StackStatus"].endswith("_IN_PROGRESS") else s


def check_template_only(r: Report, template: dict, tres: dict, skipped: list[str]) -> None:
    r.section("not created by moto, checked in the template: " + ", ".join(skipped))
    params = {k: v.get("Default") for k, v in template["Parameters"].items()}
    by_type = {}
    for k, v in tres.items():
        by_type.setdefault(v["Type"], []).append(k)

    if "QueuesTlsOnly" in skipped:
        qp = tres["QueuesTlsOnly"]["Properties"]
        (st,) = qp["PolicyDocument"]["Statement"]
        r.check("queue policy denies requests without TLS on both queues", st["Effect"] == "Deny" and st["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                and qp["Queues"] == [{"Ref": "Queue"}, {"Ref": "DeadLetterQueue"}])

    st = tres["ScalableTarget"]["Properties"]
    r.check("ScalableTarget: ecs:service:DesiredCount between MinTasks and MaxTasks",
            st["ScalableDimension"] == "ecs:service:DesiredCount" and st["MinCapacity"] == {"Ref": "MinTasks"} and st["MaxCapacity"] == {"Ref": "MaxTasks"}
            and template["Parameters"]["MinTasks"]["MinValue"] == 0)
    r.check("ScalableTarget: the stack's service", st["ResourceId"]["Fn::Sub"][0] == "service/${ClusterName}/${Service.Name}")

    tt = tres["BacklogTargetTracking"]["Properties"]
    cfg = tt["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in cfg["CustomizedMetricSpecification"]["Metrics"]}
    names = {i: (m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"]) for i, m in metrics.items() if "MetricStat" in m}
    r.check("target tracking on the stack's ScalableTarget", tt["PolicyType"] == "TargetTrackingScaling" and tt["ScalingTargetId"] == {"Ref": "ScalableTarget"})
    r.check("metrics: visible + not visible messages, Container Insights running tasks", names == {
        "visible": ("AWS/SQS", "ApproximateNumberOfMessagesVisible"), "inflight": ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible"),
        "tasks": ("ECS/ContainerInsights", "RunningTaskCount")}, str(names))
    (ret,) = [m for m in metrics.values() if m.get("ReturnData")]
    expr = ret["Expression"]["Fn::Sub"] if isinstance(ret["Expression"], dict) else ret["Expression"]
    subst = expr
    for p in ("Concurrency", "JobSeconds", "AcceptableLatencySeconds"):
        subst = subst.replace("${" + p + "}", str(params[p]))
    # At the target, backlog per task = Concurrency x AcceptableLatencySeconds / JobSeconds.
    per_task = params["Concurrency"] * params["AcceptableLatencySeconds"] / params["JobSeconds"]
    at_target = eval_expression(subst, {"visible": per_task * 3 - 5, "inflight": 5, "tasks": 3})
    double = eval_expression(subst, {"visible": per_task * 6 - 5, "inflight": 5, "tasks": 3})
    r.check(f"expression {expr!r} = TargetValue {cfg['TargetValue']} exactly at {per_task:g} messages per task "
            f"(Concurrency {params['Concurrency']} x latency {params['AcceptableLatencySeconds']} s / job {params['JobSeconds']} s)",
            abs((at_target or 0) - cfg["TargetValue"]) < 1e-9 and abs((double or 0) - 2 * cfg["TargetValue"]) < 1e-9, f"{at_target}, twice the backlog {double}")
    r.check("no data at 0 running tasks (why the step policy exists)", eval_expression(subst, {"visible": 7, "inflight": 0, "tasks": None}) is None)

    sp = tres["ScaleFromZeroPolicy"]["Properties"]
    spc = sp["StepScalingPolicyConfiguration"]
    r.check("step policy sets the capacity to exactly 1", sp["PolicyType"] == "StepScaling" and spc["AdjustmentType"] == "ExactCapacity"
            and spc["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}] and sp["ScalingTargetId"] == {"Ref": "ScalableTarget"})
    al = tres["ScaleFromZeroAlarm"]["Properties"]
    am = {m["Id"]: m for m in al["Metrics"]}
    (aret,) = [m for m in am.values() if m.get("ReturnData")]
    r.check("alarm starts the step policy at >= 1", al["AlarmActions"] == [{"Ref": "ScaleFromZeroPolicy"}] and al["Threshold"] == 1
            and al["ComparisonOperator"] == "GreaterThanOrEqualToThreshold")
    r.check("alarm metrics: visible messages and the desired count",
            am["visible"]["MetricStat"]["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible" and am["desired"]["MetricStat"]["Metric"]["MetricName"] == "DesiredTaskCount")
    cases = {(3, None): 1, (3, 0): 1, (3, 2): 0, (0, 0): 0, (0, None): 0}
    got = {k: eval_expression(aret["Expression"], {"visible": k[0], "desired": k[1]}) for k in cases}
    r.check(f"alarm {aret['Expression']!r}: fires only with messages waiting at desired 0 (or no count)", got == cases,
            ", ".join(f"visible {k[0]} desired {k[1]} -> {v}" for k, v in got.items()))
    outputs_text = json.dumps(template.get("Outputs", {}))
    r.check("no Output references an autoscaling resource or the alarm", not any(f'"{k}"' in outputs_text for k in skipped))
    leftover = [k for k in skipped if k not in ("QueuesTlsOnly", "ScalableTarget", "BacklogTargetTracking", "ScaleFromZeroPolicy", "ScaleFromZeroAlarm")]
    r.check("every resource moto skipped is checked here", not leftover, ", ".join(leftover))


def run_worker(r: Report, endpoint: str, worker: Path, env: dict, outputs: dict, sqs, tmp: Path) -> None:
    r.section(f"the worker ({worker.name}) on the stack's queue, with the task definition's environment")
    queue, dlq = outputs["QueueUrl"], outputs["DeadLetterQueueUrl"]
    metrics_addr = f"127.0.0.1:{free_port()}"
    run_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WORKER_", "QUEUE_", "COPILOT_", "ECS_"))},
        **env,
        # What differs from ECS: no agent (protection off), moto instead of SQS, and a free loopback
        # port for /health (9090 may be taken on a shared machine).
        "WORKER_PROTECTION": "off", "WORKER_METRICS_ADDR": metrics_addr,
        "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for start in range(0, SHORT_JOBS, 10):
        sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "100ms"} for i in range(start, min(start + 10, SHORT_JOBS))])
    sqs.send_message(QueueUrl=queue, MessageBody=FAILING_BODY)
    log_path = tmp / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(worker), "run", "--wait-time", "1s", "--retry-base", "1s", "--concurrency", str(CONCURRENCY)],
                                env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def drained():
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker exited early with {proc.returncode}")
                q = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
                d = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
                return q["ApproximateNumberOfMessages"] == "0" and q["ApproximateNumberOfMessagesNotVisible"] == "0" and d["ApproximateNumberOfMessages"] == "1"
            t0 = time.monotonic()
            # The task definition's health check, with the image's path swapped for the binary.
            health_cmd = [str(worker), "health"]
            health = wait_for("a healthy /health", lambda: subprocess.run(health_cmd, env=run_env, capture_output=True, timeout=10).returncode == 0, 30)
            r.check("the task definition's health check command exits 0 while the worker runs", bool(health), " ".join(["CMD", "queue-worker", "health"]))
            try:
                wait_for("the queue to drain and the failing message to reach the DLQ", drained, 120)
                r.check(f"queue drained and the failing message dead-lettered by the redrive policy", True, f"{time.monotonic() - t0:.1f} s")
            except TimeoutError as err:
                r.check("queue drained and the failing message dead-lettered", False, str(err))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = "killed after 30 s"
        r.check("SIGTERM: the worker exits 0", code == 0, f"exit {code}")

    msgs = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageSystemAttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
    r.check("the DLQ holds exactly the failing message", [m["Body"] for m in msgs] == [FAILING_BODY], str([m["Body"] for m in msgs]))
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    r.check("logs are JSON lines (WORKER_LOG_FORMAT=json)", bool(events) and len(events) == len(log_path.read_text(errors="replace").splitlines()))
    stopped = next((e for e in reversed(events) if e.get("message") == "worker stopped"), {})
    done = sum(1 for e in events if e.get("message") == "done")
    failed = sum(1 for e in events if str(e.get("message", "")).startswith("job failed"))
    print(f"    worker stopped: {json.dumps({k: v for k, v in stopped.items() if k not in ('timestamp', 'level', 'target', 'message')})}")
    # moto can deliver a message twice; every short job must have been processed and deleted.
    r.check(f"{SHORT_JOBS} short jobs processed and deleted", stopped.get("deleted", 0) >= SHORT_JOBS and done >= SHORT_JOBS,
            f"deleted {stopped.get('deleted')}, done {done}")
    r.check(f"the failing job was tried maxReceiveCount ({MAX_RECEIVE_COUNT}) times, never deleted or dead-lettered by the worker",
            failed >= MAX_RECEIVE_COUNT and stopped.get("dead_lettered", 0) == 0 and stopped.get("deleted", 0) == done, f"failed {failed}, dead_lettered {stopped.get('dead_lettered')}")
    r.check("the worker saw the redrive policy", any(e.get("message") == "consuming queue" and e.get("redrive") is True for e in events))


if __name__ == "__main__":
    sys.exit(main())
