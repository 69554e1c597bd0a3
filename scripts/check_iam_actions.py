#!/usr/bin/env python3
"""The AWS actions the running worker calls, derived from src/, against what each template grants.

Usage: scripts/check_iam_actions.py [--cdk-template FILE] [--print-calls]

The worker's call sites are read from src/**/*.rs, leaving out the operator-side commands
(everything under src/cli/) and test code (#[cfg(test)] modules):
  - AWS SDK fluent calls, `.receive_message()`, `.update_task_protection()`, ... (any operation of
    an aws-sdk-* crate the package depends on; the operation list is read from the crate's
    source, so a call to an operation missing from ACTIONS below fails the check);
  - the direct client's operations, `.call("ReceiveMessage", ...)` in a file that builds an
    `x-amz-target` of `Amazon<Service>.{op}` (src/sqs/direct/mod.rs);
  - the ECS agent's task-protection endpoint (`task-protection/v1/state`): a PUT is
    UpdateTaskProtection, a GET GetTaskProtection, made by the agent with the task role.
Each call maps to the IAM action that authorizes it (a Batch call authorizes as its single
action). A call reached only with a setting (CONDITIONAL) is needed only where the deployment
sets it.

Then, for each template, the task role's grants must be exactly that set:
  - deploy/cloudformation/queue-worker.yml (the TaskRole of the task definition);
  - the CDK app's synthesized template (--cdk-template; lint-infra passes it);
  - the Copilot addon copilot/queue-worker/addons/*.yml plus what Copilot's own templates grant
    the task role (COPILOT_GRANTS), with the environment the manifest's variables and the
    addon's outputs give the task.
No wildcard actions; a `Resource: "*"` needs a Condition. Exits 1 on any difference, 2 on a
call site it cannot map (extend ACTIONS). Also imported by tests/deploy/stack_on_moto.py.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Operator-side command code: it runs on a laptop with the operator's credentials, not in a task.
EXCLUDED = ("src/cli/",)

# (service, operation) -> the IAM actions that authorize it. Extend it when the worker calls
# something new (check the service authorization reference for the action and its resources).
ACTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("sqs", "ReceiveMessage"): ("sqs:ReceiveMessage",),
    ("sqs", "DeleteMessage"): ("sqs:DeleteMessage",),
    ("sqs", "DeleteMessageBatch"): ("sqs:DeleteMessage",),
    ("sqs", "ChangeMessageVisibility"): ("sqs:ChangeMessageVisibility",),
    ("sqs", "ChangeMessageVisibilityBatch"): ("sqs:ChangeMessageVisibility",),
    ("sqs", "GetQueueAttributes"): ("sqs:GetQueueAttributes",),
    ("sqs", "GetQueueUrl"): ("sqs:GetQueueUrl",),
    ("sqs", "SendMessage"): ("sqs:SendMessage",),
    ("sqs", "SendMessageBatch"): ("sqs:SendMessage",),
    ("ecs", "UpdateTaskProtection"): ("ecs:UpdateTaskProtection",),
    ("ecs", "GetTaskProtection"): ("ecs:GetTaskProtection",),
    ("ecs", "DescribeServices"): ("ecs:DescribeServices",),
    ("ecs", "DescribeTasks"): ("ecs:DescribeTasks",),
    ("ecs", "ListTasks"): ("ecs:ListTasks",),
}

# Call sites reached only with a setting, by (file, enclosing fn) -> the environment variable.
# send_dead_letter: the worker copies a message to DEAD_LETTER_QUEUE_URL only when that is set
# (and its queue has no redrive policy, src/worker.rs settle_failure).
CONDITIONAL: dict[tuple[str, str], str] = {
    ("src/sqs/sdk.rs", "send_dead_letter"): "DEAD_LETTER_QUEUE_URL",
}

# x-amz-target prefixes of direct (non-SDK) clients -> service.
TARGET_PREFIXES = {"AmazonSQS": "sqs", "AmazonEC2ContainerServiceV20141113": "ecs"}

# The agent endpoint: HTTP method -> the action the agent performs with the task role.
AGENT_PATH = "task-protection/v1/state"
AGENT_METHODS = {"put": "ecs:UpdateTaskProtection", "get": "ecs:GetTaskProtection"}

# What Copilot's worker-service template grants the task role on its own (the events queue's
# resource policy, partials/cf/subscribe.yml of copilot-cli v1.33.2); the KMS grants of its key
# policy are not worker calls.
COPILOT_GRANTS = ("sqs:ReceiveMessage", "sqs:DeleteMessage")


# --- reading CloudFormation YAML ------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation's short-form tags into their long form."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path: Path) -> dict:
    """A CloudFormation template (YAML with short-form tags, or JSON) as plain data."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 (SafeLoader subclass)


# --- reading Rust ------------------------------------------------------------------------------------


@dataclass
class RustFile:
    rel: str
    text: str
    masked: str  # comments and literal contents blanked out, same offsets
    strings: list[tuple[int, str]] = field(default_factory=list)  # (offset, value)


def scan_rust(rel: str, text: str) -> RustFile:
    """Blanks comments and string/char literal contents (offsets kept) and collects strings."""
    out = list(text)
    strings: list[tuple[int, str]] = []
    i, n = 0, len(text)

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = m.group(1)
            start = i + m.end()
            end = text.find('"' + hashes, start)
            end = n if end < 0 else end
            strings.append((i, text[start:end]))
            blank(start, end)
            i = end + 1 + len(hashes)
        elif c == '"' or (c == "b" and text.startswith('b"', i)):
            start = i + (2 if c == "b" else 1)
            j, buf = start, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    buf.append(text[j : j + 2])
                    j += 2
                else:
                    buf.append(text[j])
                    j += 1
            strings.append((i, "".join(buf)))
            blank(start, j)
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", text[i:])):
            blank(i + 1, i + m.end() - 1)  # a char literal (a lifetime has no closing quote)
            i += m.end()
        else:
            i += 1
    return RustFile(rel, text, "".join(out), strings)


def _matching_brace(masked: str, open_at: int) -> int:
    depth = 0
    for k in range(open_at, len(masked)):
        if masked[k] == "{":
            depth += 1
        elif masked[k] == "}":
            depth -= 1
            if depth == 0:
                return k
    return len(masked)


def _test_spans(f: RustFile) -> list[tuple[int, int]]:
    """Offsets of inline #[cfg(test)] items (modules and functions)."""
    spans = []
    for m in re.finditer(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]", f.masked):
        brace = f.masked.find("{", m.end())
        semi = f.masked.find(";", m.end())
        if brace >= 0 and (semi < 0 or brace < semi):
            spans.append((m.start(), _matching_brace(f.masked, brace)))
    return spans


def _fn_spans(f: RustFile) -> list[tuple[int, int, str]]:
    spans = []
    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", f.masked):
        brace = f.masked.find("{", m.end())
        semi = f.masked.find(";", m.end())
        if brace >= 0 and (semi < 0 or brace < semi):
            spans.append((brace, _matching_brace(f.masked, brace), m.group(1)))
    return spans


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _pascal(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def sdk_operations(root: Path = ROOT) -> dict[str, tuple[str, str]]:
    """snake_case method -> (service, Operation) for every aws-sdk-* crate the package uses."""
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    by_id = {p["id"]: p for p in meta["packages"]}
    (me,) = [by_id[i] for i in meta["workspace_members"] if by_id[i]["name"] == "queue-worker"]
    wanted = {d["name"] for d in me["dependencies"] if d["name"].startswith("aws-sdk-") and d.get("kind") is None}
    node = next(n for n in meta["resolve"]["nodes"] if n["id"] == me["id"])
    ops: dict[str, tuple[str, str]] = {}
    for dep in node["deps"]:
        pkg = by_id[dep["pkg"]]
        if pkg["name"] not in wanted:
            continue
        service = pkg["name"].removeprefix("aws-sdk-")
        op_dir = Path(pkg["manifest_path"]).parent / "src" / "operation"
        for entry in sorted(op_dir.iterdir()):
            if entry.is_dir():
                ops[entry.name] = (service, _pascal(entry.name))
    if not ops:
        raise SystemExit("check_iam_actions: found no aws-sdk-* operations; is cargo metadata working?")
    return ops


@dataclass
class Call:
    where: str  # file:line
    what: str  # how it was found
    service: str
    operation: str
    actions: tuple[str, ...]
    condition: str | None  # env var that must be set for this call to happen


def worker_calls(root: Path = ROOT, ops: dict[str, tuple[str, str]] | None = None) -> tuple[list[Call], list[str]]:
    """The worker's AWS call sites, and the problems (unmappable ones)."""
    ops = sdk_operations(root) if ops is None else ops
    calls: list[Call] = []
    problems: list[str] = []
    files = sorted(p for p in (root / "src").rglob("*.rs"))
    rust = {p.relative_to(root).as_posix(): scan_rust(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in files}
    # Out-of-line test modules: `#[cfg(test)] mod tests;` in a/mod.rs or a.rs -> a/tests.rs.
    test_files = set()
    for rel, f in rust.items():
        for m in re.finditer(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", f.masked):
            base = Path(rel).parent if Path(rel).name in ("mod.rs", "lib.rs", "main.rs") else Path(rel).with_suffix("")
            test_files |= {(base / f"{m.group(1)}.rs").as_posix(), (base / m.group(1) / "mod.rs").as_posix()}

    for rel, f in rust.items():
        if rel in test_files or any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in EXCLUDED):
            continue
        tests = _test_spans(f)
        fns = _fn_spans(f)

        def in_tests(pos: int) -> bool:
            return any(a <= pos <= b for a, b in tests)

        def condition(pos: int) -> str | None:
            inner = [s for s in fns if s[0] <= pos <= s[1]]
            name = min(inner, key=lambda s: s[1] - s[0])[2] if inner else ""
            return CONDITIONAL.get((rel, name))

        def add(pos: int, what: str, service: str, operation: str) -> None:
            where = f"{rel}:{_line(f.text, pos)}"
            actions = ACTIONS.get((service, operation))
            if actions is None:
                problems.append(f"{where}: {what} calls {service} {operation}, which ACTIONS in scripts/check_iam_actions.py does not map; extend the mapping")
                return
            calls.append(Call(where, what, service, operation, actions, condition(pos)))

        # 1. SDK fluent calls: `.operation_name()`.
        for m in re.finditer(r"\.\s*([a-z][a-z0-9_]*)\s*\(\s*\)", f.masked):
            if m.group(1) in ops and not in_tests(m.start()):
                service, operation = ops[m.group(1)]
                add(m.start(), f".{m.group(1)}()", service, operation)

        # 2. The direct client: `.call("Operation", ...)` where the file builds `Amazon<Svc>.{op}`.
        prefixes = {m.group(1) for _, s in f.strings if (m := re.match(r"^(Amazon[A-Za-z0-9]+)\.\{", s))}
        for m in re.finditer(r"\.\s*call\s*\(\s*\"", f.masked):
            if in_tests(m.start()):
                continue
            lit = next((s for off, s in f.strings if off == m.end() - 1), "")
            known = [TARGET_PREFIXES[p] for p in prefixes if p in TARGET_PREFIXES]
            if len(known) != 1 or len(prefixes) != 1:
                problems.append(f"{rel}:{_line(f.text, m.start())}: direct call \"{lit}\" in a file whose x-amz-target prefix is {sorted(prefixes) or 'unknown'}; extend TARGET_PREFIXES")
                continue
            add(m.start(), f'direct .call("{lit}")', known[0], lit)

        # 3. The agent's task-protection endpoint.
        agent = [off for off, s in f.strings if AGENT_PATH in s and not in_tests(off)]
        if agent:
            methods = [(m.start(), m.group(1)) for m in re.finditer(r"\.\s*(get|put|post|patch|delete|request)\s*\(", f.masked) if not in_tests(m.start())]
            if not methods:
                problems.append(f"{rel}:{_line(f.text, agent[0])}: uses {AGENT_PATH} but no HTTP method call was found; extend AGENT_METHODS")
            for pos, method in methods:
                action = AGENT_METHODS.get(method)
                if action is None:
                    problems.append(f"{rel}:{_line(f.text, pos)}: .{method}() on the agent endpoint: extend AGENT_METHODS")
                    continue
                calls.append(Call(f"{rel}:{_line(f.text, pos)}", f"agent {method.upper()} {AGENT_PATH}", "ecs", action.split(":")[1], (action,), condition(pos)))
    return calls, problems


def needed_actions(calls: list[Call], env: set[str]) -> set[str]:
    """The actions a task with these environment variables set can call."""
    return {a for c in calls if c.condition is None or c.condition in env for a in c.actions}


# --- reading grants --------------------------------------------------------------------------------


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def statement_actions(statements: list, where: str, problems: list[str]) -> set[str]:
    actions: set[str] = set()
    for st in statements:
        sid = st.get("Sid", "?")
        if st.get("Effect") != "Allow":
            problems.append(f"{where}: statement {sid} is not a plain Allow")
            continue
        if "NotAction" in st or "NotResource" in st:
            problems.append(f"{where}: statement {sid} uses NotAction/NotResource")
        for a in _as_list(st.get("Action", [])):
            if not isinstance(a, str) or "*" in a or "?" in a:
                problems.append(f"{where}: statement {sid} grants {a!r}: wildcards cannot be checked against the code")
                continue
            actions.add(a)
        if "*" in _as_list(st.get("Resource", [])) and not st.get("Condition"):
            problems.append(f"{where}: statement {sid} allows Resource \"*\" without a Condition")
    return actions


def _ref_target(value) -> str | None:
    """The logical id behind {"Ref": id} or {"Fn::GetAtt": [id, "Arn"]}."""
    if isinstance(value, dict):
        if "Ref" in value:
            return value["Ref"]
        if "Fn::GetAtt" in value:
            return _as_list(value["Fn::GetAtt"])[0]
    return None


def task_roles(template: dict) -> list[tuple[str, dict, set[str]]]:
    """(role logical id, its task definition, the task's env var names) per task definition."""
    res = template.get("Resources", {})
    out = []
    for tid, td in res.items():
        if td.get("Type") != "AWS::ECS::TaskDefinition":
            continue
        props = td.get("Properties", {})
        env = {e["Name"] for c in props.get("ContainerDefinitions", []) for e in c.get("Environment", [])}
        out.append((_ref_target(props.get("TaskRoleArn")), td, env))
    return out


def role_grants(template: dict, role_id: str, where: str, problems: list[str]) -> set[str]:
    """What the role gets: its inline policies and the AWS::IAM::Policy/ManagedPolicy attached to it."""
    res = template["Resources"]
    role = res.get(role_id)
    if not role or role.get("Type") != "AWS::IAM::Role":
        problems.append(f"{where}: task role {role_id!r} is not an AWS::IAM::Role of this template")
        return set()
    props = role.get("Properties", {})
    if props.get("ManagedPolicyArns"):
        problems.append(f"{where}: {role_id} has ManagedPolicyArns, whose actions cannot be checked")
    actions: set[str] = set()
    for pol in props.get("Policies", []):
        actions |= statement_actions(_as_list(pol["PolicyDocument"]["Statement"]), f"{where} {role_id}", problems)
    for pid, r in res.items():
        if r.get("Type") in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            roles = [_ref_target(x) for x in r.get("Properties", {}).get("Roles", [])]
            if role_id in roles:
                actions |= statement_actions(_as_list(r["Properties"]["PolicyDocument"]["Statement"]), f"{where} {pid}", problems)
    return actions


def _screaming(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def copilot_grants(root: Path, problems: list[str]) -> tuple[set[str], set[str], list[str]]:
    """(granted actions, the task's env var names, addon files) for the Copilot service."""
    manifest = yaml.safe_load((root / "copilot/queue-worker/manifest.yml").read_text(encoding="utf-8"))
    env = set((manifest.get("variables") or {}).keys()) | {"COPILOT_QUEUE_URI"}
    actions = set(COPILOT_GRANTS)
    files = []
    for path in sorted((root / "copilot/queue-worker/addons").glob("*.y*ml")):
        if path.name.startswith("addons.parameters."):
            continue
        files.append(path.relative_to(root).as_posix())
        t = load_template(path)
        res = t.get("Resources", {})
        for oid, out in (t.get("Outputs") or {}).items():
            target = _ref_target(out.get("Value"))
            if target in res and res[target].get("Type") == "AWS::IAM::ManagedPolicy":
                stmts = _as_list(res[target]["Properties"]["PolicyDocument"]["Statement"])
                actions |= statement_actions(stmts, f"{path.name} {target}", problems)
            else:
                env.add(_screaming(oid))  # Copilot injects other outputs as env vars
    return actions, env, files


# --- the check -----------------------------------------------------------------------------------------


def compare(label: str, granted: set[str], needed: set[str], problems: list[str]) -> None:
    extra, missing = sorted(granted - needed), sorted(needed - granted)
    if extra:
        problems.append(f"{label}: grants what the worker never calls: {', '.join(extra)}")
    if missing:
        problems.append(f"{label}: lacks what the worker calls: {', '.join(missing)}")
    mark = "ok" if not extra and not missing else "MISMATCH"
    print(f"  {label}: {mark}: {', '.join(sorted(granted)) or '(nothing)'}")


def fail(title: str, problems: list[str], code: int) -> int:
    print(f"check_iam_actions: {title}:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return code


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cdk-template", type=Path, help="the CDK app's synthesized template (JSON)")
    ap.add_argument("--print-calls", action="store_true", help="list every call site")
    args = ap.parse_args()

    calls, unmapped = worker_calls()
    if unmapped:
        return fail("call sites without a mapping", unmapped, 2)
    print("AWS actions the worker calls (from src/, without src/cli/):")
    by_action: dict[str, list[Call]] = {}
    for c in calls:
        for a in c.actions:
            by_action.setdefault(a, []).append(c)
    for action in sorted(by_action):
        sites = by_action[action]
        conds = {c.condition for c in sites}
        note = "" if None in conds else f"  (only with {', '.join(sorted(conds))} set)"
        where = sites if args.print_calls else sites[:3]
        more = "" if len(where) == len(sites) else f", +{len(sites) - len(where)} more"
        print(f"  {action}{note}: {', '.join(f'{c.where} {c.what}' for c in where)}{more}")

    problems: list[str] = []
    print("task role grants:")
    templates = [("deploy/cloudformation/queue-worker.yml", load_template(ROOT / "deploy/cloudformation/queue-worker.yml"))]
    if args.cdk_template:
        templates.append((f"CDK synth ({args.cdk_template.name})", json.loads(args.cdk_template.read_text(encoding="utf-8"))))
    for label, t in templates:
        roles = task_roles(t)
        if not roles:
            problems.append(f"{label}: no AWS::ECS::TaskDefinition")
        for role_id, _, env in roles:
            granted = role_grants(t, role_id, label, problems)
            compare(f"{label} ({role_id})", granted, needed_actions(calls, env), problems)
    granted, env, files = copilot_grants(ROOT, problems)
    compare(f"Copilot ({' + '.join(files)} + Copilot's queue policy)", granted, needed_actions(calls, env), problems)

    if problems:
        return fail("FAILED", problems, 1)
    print("check_iam_actions: every task role grants exactly what the worker calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
