#!/usr/bin/env python3
"""The benchmark driver behind scripts/bench.sh (stdlib only; loopback only).

On one fauxqs instance it measures queue-worker against sqs-consumer (handleMessage and
handleMessageBatch modes) on zero-length jobs, then queue-worker alone on 200 ms jobs; meanwhile,
on queues of their own, two idle queue-workers (one per protection mode) give the idle cost.
Prints a table and writes JSON.

Measurements, per consumer run (a fresh queue each time, preloaded before the consumer starts):
- drain window: from the first poll that sees fewer than N visible messages to the first poll that
  sees none visible, in flight or delayed (polled every 20 ms through fauxqs's /_fauxqs/queues,
  which its request counters do not count);
- CPU: utime+stime of the consumer from /proc/<pid>/stat, over the drain window (and from spawn);
- peak RSS: VmHWM from /proc/<pid>/status, read until the consumer has exited (ru_maxrss is
  polluted by the driver's own RSS at spawn);
- SQS requests: fauxqs's own counters for the run's queue (/_fauxqs/stats, read before the
  consumer starts and after it exits), cross-checked with the worker's `sqs_requests` from its "worker stopped" line;
- protection calls: the agent double's call log;
- duplicates: queue-worker's JSON log ("done" events, keyed by the job span's
  message_id); sqs-consumer's own count of message ids (printed at exit);
- emulator CPU share: fauxqs's utime+stime delta over the drain window / the window's length.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.02


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc


def cpu_seconds(pid):
    """utime + stime of pid, in seconds (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def stop_and_reap(proc, timeout=40.0, hwm=None):
    """SIGTERM, then wait4 for the rusage. Returns (returncode, rusage, peak VmHWM in kB).

    VmHWM is read until the process is gone: ru_maxrss is no use for peak RSS, because a child
    spawned with vfork/fork keeps the parent's (the driver's) RSS at exec as its high-water mark."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        h = vm_hwm_kb(proc.pid)
        if h and (hwm is None or h > hwm):
            hwm = h
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # already reaped by Popen: no rusage
            return proc.returncode, None, hwm
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru, hwm
        if time.monotonic() > deadline:
            log(f"pid {proc.pid} did not exit within {timeout:.0f} s of SIGTERM; killing it")
            proc.kill()
            deadline = time.monotonic() + 5
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# fauxqs


class Fauxqs:
    def __init__(self, node, server):
        self.proc = subprocess.Popen(
            [node, server, "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("FAUXQS_PORT="):
            raise SystemExit(f"bench: fauxqs did not start (got {line!r})")
        self.endpoint = f"http://127.0.0.1:{line.split('=', 1)[1]}"

    def close(self):
        self.proc.stdin.close()  # EOF stops it
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)

    def sqs(self, op, body):
        req = urllib.request.Request(
            self.endpoint + "/",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": f"AmazonSQS.{op}",
                "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
            },
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def get(self, path):
        with urllib.request.urlopen(self.endpoint + path, timeout=10) as r:
            return json.loads(r.read())

    def create_queue(self, name):
        return self.sqs("CreateQueue", {"QueueName": name})["QueueUrl"]

    def delete_queue(self, url):
        self.sqs("DeleteQueue", {"QueueUrl": url})

    def depth(self, name):
        """(visible, in flight, delayed) of a queue, without touching the request counters."""
        for q in self.get("/_fauxqs/queues"):
            if q["name"] == name:
                return (
                    q["approximateMessageCount"],
                    q["approximateInflightCount"],
                    q["approximateDelayedCount"],
                )
        raise SystemExit(f"bench: queue {name} vanished")

    def queue_ops(self, name):
        """fauxqs's own count of SQS requests naming this queue, by operation (never reset, so
        runs on other queues, such as the idle workers running alongside, do not disturb it)."""
        return dict(self.get("/_fauxqs/stats").get("queues", {}).get(name, {}))


# ---------------------------------------------------------------------------------------------
# helpers started per run


class AgentDouble:
    def __init__(self, binary):
        self.proc = subprocess.Popen(
            [binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.env = {}
        for _ in range(2):
            k, v = self.proc.stdout.readline().strip().split("=", 1)
            self.env[k] = v

    def finish(self):
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(10)
        return json.loads(out.strip().splitlines()[-1])


def preload(args, env, queue_url, count, body=None, duration=None):
    cmd = [args.worker_bin, "send", "--queue-url", queue_url, "--count", str(count), "--parallel", "16"]
    cmd += ["--body", body] if body is not None else ["--duration", duration]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench: preload failed: {r.stderr.strip()[-500:]}")


def parse_worker_log(path):
    """Duplicates and the final counters from queue-worker's JSON log."""
    received = {}
    stopped = None
    warnings = 0
    with open(path, errors="replace") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            msg = ev.get("message", "")
            if msg == "done":
                mid = (ev.get("span") or {}).get("message_id")
                received[mid] = received.get(mid, 0) + 1
            elif msg == "worker stopped":
                stopped = ev
            if ev.get("level") in ("WARN", "ERROR"):
                warnings += 1
    dups = sum(n - 1 for n in received.values())
    return {"received": sum(received.values()), "unique": len(received), "duplicates": dups,
            "stopped_line": stopped, "warnings": warnings}


SQS_OPS = ("ReceiveMessage", "DeleteMessage", "DeleteMessageBatch", "ChangeMessageVisibility",
           "ChangeMessageVisibilityBatch", "GetQueueAttributes")


def ops_since(before, after):
    """Requests by operation between two snapshots of one queue's counters."""
    return {op: n - before.get(op, 0) for op, n in after.items() if n - before.get(op, 0)}


# ---------------------------------------------------------------------------------------------
# one drain


def drain(args, fq, env, kind, n, run_no, body="0", duration=None, concurrency=None, timeout=300):
    """Preloads n messages, starts one consumer, waits for the queue to drain, stops it."""
    name = f"bench-{kind}-{run_no}-{int(time.time() * 1000) % 10**9}"
    url = fq.create_queue(name)
    preload(args, env, url, n, body=None if duration else body, duration=duration)
    t_wait = time.monotonic() + 30
    while fq.depth(name)[0] < n:
        if time.monotonic() > t_wait:
            raise SystemExit(f"bench: preload of {name} incomplete: {fq.depth(name)}")
        time.sleep(0.05)
    before = fq.queue_ops(name)

    agent = None
    penv = dict(env, QUEUE_URL=url)
    if kind == "queue-worker":
        agent = AgentDouble(args.agent_bin)
        penv.update(agent.env)
        penv.update(
            WORKER_LOG_FORMAT="json",
            WORKER_PROTECTION="agent",
            WORKER_CONCURRENCY=str(concurrency or args.concurrency),
        )
        if args.delete_linger:
            penv["WORKER_DELETE_LINGER"] = args.delete_linger
        penv.update(kv.split("=", 1) for kv in args.worker_env)
        logpath = os.path.join(args.out_dir, f"worker-{name}.log")
        errf = open(logpath, "w")
        cmd = [args.worker_bin, "run"]
        stdout = subprocess.DEVNULL
    else:
        mode = kind.split(":", 1)[1]
        logpath = os.path.join(args.out_dir, f"{name}.log")
        errf = open(logpath, "w")
        cmd = [args.node, args.consumer_js, mode]
        stdout = subprocess.PIPE

    fq_pid = fq.proc.pid
    t_spawn = time.monotonic()
    proc = subprocess.Popen(cmd, env=penv, stdout=stdout, stderr=errf, text=True)
    t_first = t_drained = None
    cpu_first = fq_first = None
    cpu_last = hwm = None
    while True:
        now = time.monotonic()
        vis, inflight, delayed = fq.depth(name)
        c = cpu_seconds(proc.pid)
        f = cpu_seconds(fq_pid)
        if c is not None:
            cpu_last = c
            hwm = vm_hwm_kb(proc.pid) or hwm
        if t_first is None and vis < n:
            t_first, cpu_first, fq_first = now, c, f
        if vis == 0 and inflight == 0 and delayed == 0:
            t_drained, cpu_drained, fq_drained = now, c, f
            break
        if proc.poll() is not None:
            raise SystemExit(f"bench: {kind} exited early ({proc.returncode}); see {logpath}")
        if now - t_spawn > timeout:
            stop_and_reap(proc)
            raise SystemExit(f"bench: {kind} did not drain {n} messages in {timeout} s; see {logpath}")
        time.sleep(POLL_S)
    ops_at_drain = ops_since(before, fq.queue_ops(name))
    t_term = time.monotonic()
    rc, ru, peak = stop_and_reap(proc, hwm=hwm)
    t_exit = time.monotonic()
    ops = ops_since(before, fq.queue_ops(name))
    total = sum(ops.values())
    errf.close()
    consumer_out = proc.stdout.read() if proc.stdout else None
    agent_calls = agent.finish() if agent else None
    fq.delete_queue(url)

    window = max(t_drained - t_first, 1e-9)
    res = {
        "kind": kind,
        "messages": n,
        "exit_code": rc,
        "wall_s": round(t_drained - t_spawn, 4),
        "drain_s": round(window, 4),
        "stop_s": round(t_exit - t_term, 3),
        "msgs_per_s": round(n / window, 1),
        "wall_msgs_per_s": round(n / (t_drained - t_spawn), 1),
        "cpu_s_total": round(ru.ru_utime + ru.ru_stime, 4) if ru else None,
        "cpu_s_to_drain": round(cpu_drained, 4),
        "cpu_s_drain_window": round(cpu_drained - cpu_first, 4),
        "cpu_us_per_msg": round((cpu_drained - cpu_first) * 1e6 / n, 2),
        "peak_rss_kb": peak,
        "vm_hwm_kb_at_drain": hwm,
        "ru_maxrss_kb_not_used": ru.ru_maxrss if ru else None,
        "sqs_requests": total,
        "sqs_requests_at_drain": sum(ops_at_drain.values()),
        "sqs_requests_per_1000": round(total * 1000 / n, 1),
        "sqs_by_op": ops,
        "fauxqs_cpu_share": round((fq_drained - fq_first) / window, 3),
        "log": os.path.relpath(logpath),
    }
    if kind == "queue-worker":
        wl = parse_worker_log(logpath)
        line = wl.pop("stopped_line") or {}
        res["worker_reported"] = {k: line.get(k) for k in ("succeeded", "failed", "cancelled", "sqs_requests")}
        # the worker does not count its start-up GetQueueAttributes; fauxqs does
        res["sqs_count_mismatch"] = (
            None if line.get("sqs_requests") is None
            else total - ops.get("GetQueueAttributes", 0) - line["sqs_requests"]
        )
        # no per-job lines (e.g. RUST_LOG=warn): duplicates unknown
        res["handled"] = wl["received"] or None
        res["duplicates"] = wl["duplicates"] if wl["received"] else None
        res["warnings"] = wl["warnings"]
        res["protection_calls"] = agent_calls["calls"]
        res["protection"] = {k: agent_calls[k] for k in ("puts_enable", "puts_disable", "gets")}
    else:
        try:
            out = json.loads(consumer_out.strip().splitlines()[-1])
        except (ValueError, IndexError, AttributeError):
            out = {}
        res["handled"] = out.get("handled")
        res["duplicates"] = out.get("duplicates")
        res["errors"] = out.get("errors")
        res["protection_calls"] = None
    log(
        f"{kind:28} run {run_no}: {res['msgs_per_s']:>8.0f} msg/s, {res['cpu_us_per_msg']:>7.1f} µs CPU/msg, "
        f"RSS {res['peak_rss_kb'] / 1024:5.1f} MB, {res['sqs_requests_per_1000']:6.1f} req/1k, "
        f"dup {res['duplicates']}, fauxqs {res['fauxqs_cpu_share'] * 100:3.0f} % of a core"
    )
    return res


# ---------------------------------------------------------------------------------------------
# idle


IDLE_SETTLE_S = 10  # start-up (GetQueueAttributes, first poll) is not idle cost


class Idle:
    """One queue-worker on an empty queue of its own, with its own agent double. The idle workers
    run alongside the drains (a long poll every 20 s costs nothing measurable, and their requests
    are counted on their own queues), so the idle minute adds no time to the benchmark.

    Rates are taken over whole minutes from IDLE_SETTLE_S after start: counting from the start
    would add the start-up requests and a fencepost poll (7 polls of 20 s begin within 123 s)."""

    def __init__(self, args, fq, env, mode):
        self.args, self.fq, self.mode = args, fq, mode
        self.name = f"bench-idle-{mode}-{int(time.time() * 1000) % 10**9}"
        self.url = fq.create_queue(self.name)
        self.agent = AgentDouble(args.agent_bin)
        penv = dict(env, QUEUE_URL=self.url, WORKER_LOG_FORMAT="json", WORKER_PROTECTION="agent",
                    WORKER_PROTECT=mode, WORKER_CONCURRENCY=str(args.concurrency), **self.agent.env)
        self.logpath = os.path.join(args.out_dir, f"worker-{self.name}.log")
        self.errf = open(self.logpath, "w")
        self.t0_wall = time.time()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([args.worker_bin, "run"], env=penv, stdout=subprocess.DEVNULL,
                                     stderr=self.errf)
        # (wall time, this queue's counters) at IDLE_SETTLE_S and every minute after it
        self.marks = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._mark_minutes, daemon=True)
        self.thread.start()

    def _mark_minutes(self):
        due = self.t0 + IDLE_SETTLE_S
        while not self.done.wait(max(0.0, due - time.monotonic())):
            self.marks.append((time.time(), self.fq.queue_ops(self.name)))
            due += 60

    def ready_at(self):
        """Monotonic time by which at least `idle_seconds` (whole minutes) have been marked."""
        minutes = max(1, -(-int(self.args.idle_seconds) // 60))
        return self.t0 + IDLE_SETTLE_S + minutes * 60 + 0.5

    def finish(self):
        if self.proc.poll() is not None:
            raise SystemExit(f"bench: idle worker exited early; see {self.logpath}")
        self.done.set()
        self.thread.join()
        stop_and_reap(self.proc)
        self.errf.close()
        calls = self.agent.finish()
        self.fq.delete_queue(self.url)
        if len(self.marks) < 2:
            raise SystemExit("bench: idle worker ran less than a whole minute after settling")
        (t_a, ops_a), (t_b, ops_b) = self.marks[0], self.marks[-1]
        ops = ops_since(ops_a, ops_b)
        minutes = round((t_b - t_a) / 60)
        # The call log is in time order: the calls up to the last mark are a prefix of it.
        upto = [c for c in calls["log"] if c["at_ms"] <= t_b * 1000]
        window = [c for c in upto if t_a * 1000 < c["at_ms"]]
        first_release = next((i for i, c in enumerate(calls["log"])
                              if c["method"] == "PUT" and c["enabled"] is False), None)
        after_release = len(upto[first_release + 1:]) if first_release is not None else None
        res = {
            "mode": self.mode,
            "minutes": minutes,
            "receives": ops.get("ReceiveMessage", 0),
            "receives_per_min": round(ops.get("ReceiveMessage", 0) / minutes, 2),
            "sqs_requests_per_min": round(sum(ops.values()) / minutes, 2),
            "sqs_by_op": ops,
            "protection_calls": len(window),
            "protection_calls_per_min": round(len(window) / minutes, 2),
            "protection_calls_total": len(upto),
            "protection_calls_after_first_release": after_release,
            "protection_log_ms": [
                {"t_ms": c["at_ms"] - int(self.t0_wall * 1000), "method": c["method"], "enabled": c["enabled"]}
                for c in calls["log"]
            ],
            "log": os.path.relpath(self.logpath),
        }
        log(
            f"idle {self.mode:15}: {res['receives_per_min']} receives/min, {res['protection_calls_per_min']} protection "
            f"calls/min over {minutes} min; {res['protection_calls_total']} calls in all, {after_release} after the "
            "first release"
        )
        return res


# ---------------------------------------------------------------------------------------------
# report


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarize(rows):
    keys = ("msgs_per_s", "wall_msgs_per_s", "cpu_us_per_msg", "peak_rss_kb", "sqs_requests_per_1000",
            "protection_calls", "duplicates", "fauxqs_cpu_share", "wall_s", "drain_s")
    return {k: median(rows, k) for k in keys}


def fmt_ratio(a, b):
    if a is None or b in (None, 0):
        return "—"
    return f"{a / b:.2f}×"


def table(summary, n, runs):
    w, m, b = (summary.get(k, {}) for k in ("queue-worker", "sqs-consumer:message", "sqs-consumer:batch"))
    lines = [
        f"Zero-length jobs: N={n}, medians of {runs} run(s), one fauxqs instance",
        "",
        "| | queue-worker | sqs-consumer handleMessage | sqs-consumer handleMessageBatch | vs handleMessage | vs handleMessageBatch |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(label, key, fmt):
        def f(s):
            v = s.get(key)
            return "—" if v is None else fmt(v)
        lines.append(f"| {label} | {f(w)} | {f(m)} | {f(b)} | {fmt_ratio(w.get(key), m.get(key))} | {fmt_ratio(w.get(key), b.get(key))} |")

    row("throughput (msg/s)", "msgs_per_s", lambda v: f"{v:,.0f}")
    row("CPU per message (µs)", "cpu_us_per_msg", lambda v: f"{v:,.1f}")
    row("peak RSS (MB)", "peak_rss_kb", lambda v: f"{v / 1024:.1f}")
    row("SQS requests per 1,000 msg", "sqs_requests_per_1000", lambda v: f"{v:.1f}")
    row("protection calls", "protection_calls", lambda v: f"{v:.0f}")
    row("messages handled twice", "duplicates", lambda v: f"{v:.0f}")
    row("emulator CPU (share of a core)", "fauxqs_cpu_share", lambda v: f"{v * 100:.0f} %")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--delete-linger", default="", help="WORKER_DELETE_LINGER for the worker (default: its own)")
    ap.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env for the drain runs of queue-worker (e.g. RUST_LOG=warn, WORKER_WAIT_TIME=5s)")
    ap.add_argument("--slow-messages", type=int, default=2000)
    ap.add_argument("--slow-ms", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--kinds", default="queue-worker,sqs-consumer:message,sqs-consumer:batch",
                    help="consumers compared (comma list)")
    ap.add_argument("--skip", default="", help="comma list of: compare,slow,idle")
    ap.add_argument("--worker-bin", required=True)
    ap.add_argument("--agent-bin", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--fauxqs-server", required=True)
    ap.add_argument("--consumer-js", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.out_dir, exist_ok=True)

    started = time.monotonic()
    fq = Fauxqs(args.node, args.fauxqs_server)
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=fq.endpoint,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_EC2_METADATA_DISABLED="true",
    )
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "RUST_LOG", "WORKER_PROTECT", "ECS_AGENT_URI"):
        env.pop(k, None)
    log(f"fauxqs on {fq.endpoint} (pid {fq.proc.pid})")
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release()},
        "settings": {k: getattr(args, k) for k in ("runs", "messages", "concurrency", "delete_linger", "worker_env",
                                                    "slow_messages", "slow_ms", "idle_seconds")},
    }
    idlers = []
    try:
        if "idle" not in skip:
            idlers = [Idle(args, fq, env, m) for m in ("before-receive", "on-receipt")]
        if "compare" not in skip:
            kinds = args.kinds.split(",")
            rows = {k: [] for k in kinds}
            for r in range(1, args.runs + 1):
                for k in kinds:  # interleaved, so drift on a shared machine hits all alike
                    rows[k].append(drain(args, fq, env, k, args.messages, r))
            result["compare"] = {"runs": rows, "median": {k: summarize(v) for k, v in rows.items()}}
        if "slow" not in skip:
            rows = [drain(args, fq, env, "queue-worker", args.slow_messages, r, duration=f"{args.slow_ms}ms")
                    for r in range(1, args.runs + 1)]
            ideal = args.slow_messages * args.slow_ms / 1000 / args.concurrency
            med = summarize(rows)
            result["slow"] = {"runs": rows, "median": med, "ideal_s": ideal,
                              "wall_over_ideal": round(med["wall_s"] / ideal, 3),
                              "drain_over_ideal": round(med["drain_s"] / ideal, 3)}
        if idlers:
            left = max(i.ready_at() for i in idlers) - time.monotonic()
            if left > 0:
                log(f"idle workers: {left:.0f} s more to a whole minute of idle measurement")
                time.sleep(left)
            result["idle"] = [i.finish() for i in idlers]
            idlers = []
    finally:
        for i in idlers:  # a drain failed: do not leave them running
            stop_and_reap(i.proc, timeout=5)
        fq.close()
    result["bench_seconds"] = round(time.monotonic() - started, 1)

    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(report(result))
    log(f"wrote {os.path.relpath(args.json)} ({result['bench_seconds']} s)")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def report(result):
    out = [f"{result['date']} · {result['machine']['nproc']} CPUs · {result['machine']['cpu']}", ""]
    s = result["settings"]
    if "compare" in result:
        out.append(table(result["compare"]["median"], s["messages"], s["runs"]))
        out.append(f"(queue-worker: concurrency {s['concurrency']}, protection on against the agent double; "
                   "sqs-consumer: batchSize 10, handlers return the messages)")
        out.append("")
    if "slow" in result:
        sl = result["slow"]
        out.append(
            f"{s['slow_messages']} jobs of {s['slow_ms']} ms at concurrency {s['concurrency']}: "
            f"wall {sl['median']['wall_s']:.2f} s (drain {sl['median']['drain_s']:.2f} s), ideal {sl['ideal_s']:.2f} s "
            f"→ {100 * (sl['wall_over_ideal'] - 1):+.1f} % over ideal; "
            f"{sl['median']['sqs_requests_per_1000']:.0f} SQS requests per 1,000 msg, "
            f"{sl['median']['duplicates']:.0f} duplicates"
        )
        out.append("")
    if "idle" in result:
        mins = min(i["minutes"] for i in result["idle"])
        out.append(f"Idle (empty queue, alongside the runs above; per minute over {mins} whole minute(s) "
                   f"from {IDLE_SETTLE_S} s after start):")
        out.append("| WORKER_PROTECT | receives/min | SQS requests/min | protection calls/min | "
                   "protection calls in all | after first release |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for i in result["idle"]:
            out.append(f"| {i['mode']} | {i['receives_per_min']:.1f} | {i['sqs_requests_per_min']:.1f} | "
                       f"{i['protection_calls_per_min']:.1f} | {i['protection_calls_total']} | "
                       f"{i['protection_calls_after_first_release']} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
