#!/usr/bin/env python3
"""The benchmark driver behind scripts/bench.sh (stdlib only; loopback only).

On one fauxqs instance it measures queue-worker against sqs-consumer (handleMessage and
handleMessageBatch modes) on zero-length jobs, then queue-worker alone on 200 ms jobs; meanwhile,
on queues of their own, two idle queue-workers (one per protection mode) give the idle cost.
Then, for network distance, each round trip of --rtt-ms gets a delay-proxy (the test kit's TCP
relay, half the round trip each way) in front of the same fauxqs, and every consumer drains
200 ms jobs and zero-length jobs through it (the preload, the depth polls and the counters still
go straight to fauxqs; the agent double stays local, as the ECS agent is). Prints tables, writes
JSON and an SVG of msg/s against round-trip time.

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
- emulator CPU share: fauxqs's utime+stime delta over the drain window / the window's length
  (likewise the delay-proxy's, through one);
- measured round trip: the median time of a small HTTP exchange with fauxqs through the relay,
  less the same exchange made directly (what the relay really adds, timer rounding included).
"""

import argparse
import datetime
import http.client
import json
import math
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
# fauxqs runs JavaScript on one thread: at this share of a core it sets the pace, not the consumer
SATURATED = 0.9
KIND_LABELS = {"queue-worker": "queue-worker", "sqs-consumer:message": "sqs-consumer handleMessage",
               "sqs-consumer:batch": "sqs-consumer handleMessageBatch"}


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


def start_listener(cmd, what, key):
    """Starts a helper that prints `KEY=<port>` once listening (and stops at EOF on stdin).
    Returns (process, port)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith(f"{key}="):
        raise SystemExit(f"bench: {what} did not start (got {line!r})")
    return proc, int(line.split("=", 1)[1])


class Fauxqs:
    def __init__(self, node, server):
        self.proc, self.port = start_listener([node, server, "--port", "0"], "fauxqs", "FAUXQS_PORT")
        self.endpoint = f"http://127.0.0.1:{self.port}"

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


class DelayProxy:
    """The test kit's delay-proxy in front of fauxqs: `rtt_ms` / 2 added each way."""

    def __init__(self, binary, upstream_port, rtt_ms):
        self.rtt_ms = rtt_ms
        self.delay_us = int(round(rtt_ms * 1000 / 2))
        self.proc, self.port = start_listener(
            [binary, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream_port}",
             "--delay", f"{self.delay_us}us"],
            "delay-proxy", "DELAY_PROXY_PORT",
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def finish(self):
        """Stops it; returns its counts (connections, bytes each way)."""
        self.proc.stdin.close()  # EOF stops it
        out = self.proc.stdout.read()
        self.proc.wait(10)
        return json.loads(out.strip().splitlines()[-1])


def exchange_ms(port, n=15):
    """Median time of a small HTTP exchange with fauxqs on `port`, on one kept-alive connection
    (the first exchange, which opens it, is not counted)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    try:
        for i in range(n + 1):
            t = time.perf_counter()
            conn.request("GET", "/_fauxqs/queues")
            conn.getresponse().read()
            if i:
                times.append(time.perf_counter() - t)
    finally:
        conn.close()
    return statistics.median(times) * 1000


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


def drain(args, fq, env, kind, n, run_no, body="0", duration=None, concurrency=None, timeout=600,
          relay=None):
    """Preloads n messages, starts one consumer, waits for the queue to drain, stops it. With a
    relay (DelayProxy), the consumer reaches fauxqs through it: endpoint and queue URL."""
    tag = f"rtt{relay.rtt_ms:g}-" if relay else ""
    name = f"bench-{tag}{kind.replace(':', '-')}-{run_no}-{int(time.time() * 1000) % 10**9}"
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
    if relay:
        penv["AWS_ENDPOINT_URL"] = relay.endpoint
        # Clients that take the queue URL for an endpoint must go through the relay too
        # (fauxqs finds a queue by the name in its URL, whatever the host).
        penv["QUEUE_URL"] = url.replace(fq.endpoint, relay.endpoint, 1)
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
        cmd = [args.worker_bin, "run", *args.worker_arg]
        stdout = subprocess.DEVNULL
    else:
        mode = kind.split(":", 1)[1]
        logpath = os.path.join(args.out_dir, f"{name}.log")
        errf = open(logpath, "w")
        cmd = [args.node, args.consumer_js, mode]
        stdout = subprocess.PIPE

    fq_pid = fq.proc.pid
    relay_pid = relay.proc.pid if relay else None
    relay_first = relay_drained = None
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
        rl = cpu_seconds(relay_pid) if relay_pid else None
        if c is not None:
            cpu_last = c
            hwm = vm_hwm_kb(proc.pid) or hwm
        if t_first is None and vis < n:
            t_first, cpu_first, fq_first, relay_first = now, c, f, rl
        if vis == 0 and inflight == 0 and delayed == 0:
            t_drained, cpu_drained, fq_drained, relay_drained = now, c, f, rl
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
        "relay_cpu_share": round((relay_drained - relay_first) / window, 3) if relay_pid else None,
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
        f"{tag + kind:34} run {run_no}: {res['msgs_per_s']:>8.0f} msg/s, {res['cpu_us_per_msg']:>7.1f} µs CPU/msg, "
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
# network distance


def latency(args, fq, env, kinds):
    """Every consumer through one delay-proxy per round trip: 200 ms jobs, then zero-length."""
    direct_ms = exchange_ms(fq.port)
    ideal = args.concurrency * 1000 / args.slow_ms
    out = []
    for rtt in args.rtt_ms:
        relay = DelayProxy(args.delay_proxy_bin, fq.port, rtt)
        try:
            measured = round(exchange_ms(relay.port) - direct_ms, 2)
            log(f"round trip {rtt:g} ms: delay-proxy on {relay.endpoint}, {relay.delay_us} µs each way, "
                f"adds {measured} ms per exchange")
            slow = {k: [] for k in kinds}
            zero = {k: [] for k in kinds}
            for r in range(1, args.latency_runs + 1):
                for k in kinds:  # interleaved, as in the loopback comparison
                    slow[k].append(drain(args, fq, env, k, args.latency_messages, r,
                                         duration=f"{args.slow_ms}ms", relay=relay))
                for k in kinds:
                    zero[k].append(drain(args, fq, env, k, args.latency_messages, r, relay=relay))
        finally:
            counts = relay.finish()
        slow_med = {k: summarize(v) for k, v in slow.items()}
        for m in slow_med.values():
            m["share_of_ideal"] = None if m["msgs_per_s"] is None else round(m["msgs_per_s"] / ideal, 3)
        zero_med = {k: summarize(v) for k, v in zero.items()}
        for k, m in zero_med.items():
            m["relay_cpu_share"] = median(zero[k], "relay_cpu_share")
            m["emulator_saturated"] = (None if m["fauxqs_cpu_share"] is None
                                       else m["fauxqs_cpu_share"] >= SATURATED)
        out.append({"rtt_ms": rtt, "delay_each_way_us": relay.delay_us, "measured_added_rtt_ms": measured,
                    "relay": counts, "ideal_msgs_per_s": ideal,
                    "slow": {"runs": slow, "median": slow_med}, "zero": {"runs": zero, "median": zero_med}})
    return {"direct_exchange_ms": round(direct_ms, 3), "messages": args.latency_messages,
            "slow_ms": args.slow_ms, "concurrency": args.concurrency, "runs": args.latency_runs,
            "kinds": kinds, "by_rtt": out}


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
    ap.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                    help="extra argument after `queue-worker run` in the drain runs (repeatable)")
    ap.add_argument("--slow-messages", type=int, default=2000)
    ap.add_argument("--slow-ms", type=int, default=200)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--kinds", default="queue-worker,sqs-consumer:message,sqs-consumer:batch",
                    help="consumers compared (comma list)")
    ap.add_argument("--rtt-ms", type=lambda v: [float(x) for x in v.split(",") if x], default=[0.0, 20.0, 40.0],
                    help="round trips for the network-distance runs, comma list (0: through the relay, no delay)")
    ap.add_argument("--latency-messages", type=int, default=3000,
                    help="messages per drain in the network-distance runs (200 ms jobs and zero-length jobs)")
    ap.add_argument("--latency-runs", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list of: compare,slow,idle,latency")
    ap.add_argument("--delay-proxy-bin", help="the test kit's delay-proxy (needed unless latency is skipped)")
    ap.add_argument("--svg", help="write msg/s against round-trip time here")
    ap.add_argument("--worker-bin", required=True)
    ap.add_argument("--agent-bin", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--fauxqs-server", required=True)
    ap.add_argument("--consumer-js", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    if "latency" not in skip and not args.delay_proxy_bin:
        ap.error("--delay-proxy-bin is needed for the network-distance runs (or --skip latency)")
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
        "commit": git_commit(),
        "settings": {k: getattr(args, k) for k in ("runs", "messages", "concurrency", "delete_linger", "worker_env",
                                                    "worker_arg", "slow_messages", "slow_ms", "idle_seconds",
                                                    "rtt_ms", "latency_messages", "latency_runs")},
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
        if "latency" not in skip:
            result["latency"] = latency(args, fq, env, args.kinds.split(","))
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
    if args.svg and "latency" in result:
        with open(args.svg, "w") as f:
            f.write(latency_svg(result["latency"]))
        log(f"wrote {os.path.relpath(args.svg)}")
    print(report(result))
    log(f"wrote {os.path.relpath(args.json)} ({result['bench_seconds']} s)")


def git_commit():
    """The tree's commit (with -dirty for uncommitted changes), so runs before and after a change
    can be told apart; None outside a git checkout."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return r.stdout.strip() or None


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
    if "latency" in result:
        out.append("")
        out.append(latency_tables(result["latency"]))
    return "\n".join(out)


def latency_tables(lat):
    kinds = lat["kinds"]
    n, ms, conc = lat["messages"], lat["slow_ms"], lat["concurrency"]
    ideal = conc * 1000 / ms
    runs = "median of {} runs".format(lat["runs"]) if lat["runs"] > 1 else "one run"
    out = [f"Network distance: every consumer through the delay-proxy (half the round trip each way) to the "
           f"same fauxqs, {n:,} messages per drain, {runs}. 0 ms = through the relay without delay; the "
           f"loopback figures above are direct. Ideal for {ms} ms jobs: {conc} slots / {ms} ms = {ideal:,.0f} msg/s "
           f"(sqs-consumer holds one batch of at most 10 at a time: its own ceiling is {10 * 1000 / ms:,.0f} msg/s).",
           "",
           "| round trip | " + " | ".join(f"{KIND_LABELS.get(k, k)}, {ms} ms jobs" for k in kinds) + " | "
           + " | ".join(f"{KIND_LABELS.get(k, k)}, zero-length" for k in kinds) + " |",
           "|---|" + "---:|" * (2 * len(kinds))]
    for e in lat["by_rtt"]:
        slow, zero = e["slow"]["median"], e["zero"]["median"]
        cells = [f"{fmt(slow[k]['msgs_per_s'], '{:,.0f}')} ({fmt(slow[k]['share_of_ideal'], '{:.0%}')})"
                 for k in kinds]
        cells += [fmt(zero[k]["msgs_per_s"], "{:,.0f}") for k in kinds]
        out.append(f"| {e['rtt_ms']:g} ms (measured +{e['measured_added_rtt_ms']:.1f}) | " + " | ".join(cells) + " |")
    out.append("(msg/s; in brackets the share of the ideal)")
    for e in lat["by_rtt"]:
        out.append("")
        out.append(latency_table(e, kinds, n, ms, conc))
    return "\n".join(out)


def fmt(v, spec):
    return "—" if v is None else spec.format(v)


def latency_table(e, kinds, n, ms, conc):
    slow, zero = e["slow"]["median"], e["zero"]["median"]
    w = "queue-worker"
    others = [k for k in ("sqs-consumer:message", "sqs-consumer:batch") if k in kinds and k != w]
    if w not in kinds:
        others = []
    head = "| | " + " | ".join([KIND_LABELS.get(k, k) for k in kinds]
                               + [f"vs {KIND_LABELS[k].split(' ', 1)[1]}" for k in others]) + " |"
    cols = len(kinds) + len(others)
    lines = [f"Round trip {e['rtt_ms']:g} ms ({e['delay_each_way_us'] / 1000:g} ms each way; measured "
             f"+{e['measured_added_rtt_ms']:.1f} ms per exchange; relay: {e['relay']['connections']} connections)",
             "", head, "|---|" + "---:|" * cols]

    def row(label, src, key, spec, scale=1.0, ratio=True):
        vals = [src[k].get(key) for k in kinds]
        cells = [fmt(None if v is None else v * scale, spec) for v in vals]
        if w in kinds:
            mine = src[w].get(key)
            cells += [fmt_ratio(mine, src[k].get(key)) if ratio else "" for k in others]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row(f"{n:,} × {ms} ms jobs at concurrency {conc}: msg/s", slow, "msgs_per_s", "{:,.0f}")
    row("share of the ideal", slow, "share_of_ideal", "{:.0%}")
    row(f"{n:,} zero-length jobs: msg/s", zero, "msgs_per_s", "{:,.0f}")
    lines.append(f"| emulator CPU, share of a core (saturated from {SATURATED:.0%}) | " + " | ".join(
        fmt(zero[k]["fauxqs_cpu_share"], "{:.0%}") + (", saturated" if zero[k]["emulator_saturated"] else "")
        for k in kinds) + " |" + " |" * (cols - len(kinds)))
    row("relay CPU (share of a core)", zero, "relay_cpu_share", "{:.0%}", ratio=False)
    row(f"SQS requests per 1,000 msg ({ms} ms jobs)", slow, "sqs_requests_per_1000", "{:,.1f}")
    row("SQS requests per 1,000 msg (zero-length)", zero, "sqs_requests_per_1000", "{:,.1f}")
    row(f"peak RSS, MB ({ms} ms jobs)", slow, "peak_rss_kb", "{:.1f}", scale=1 / 1024)
    row("peak RSS, MB (zero-length)", zero, "peak_rss_kb", "{:.1f}", scale=1 / 1024)
    row(f"CPU per message, µs ({ms} ms jobs)", slow, "cpu_us_per_msg", "{:,.1f}")
    row("CPU per message, µs (zero-length)", zero, "cpu_us_per_msg", "{:,.1f}")
    row("messages handled twice (both drains)", {k: {"d": add(slow[k]["duplicates"], zero[k]["duplicates"])}
                                                 for k in kinds}, "d", "{:.0f}", ratio=False)
    return "\n".join(lines)


def add(a, b):
    return None if a is None or b is None else a + b


# ---------------------------------------------------------------------------------------------
# picture


SVG_COLORS = {"queue-worker": "#1f6fb4", "sqs-consumer:message": "#d9622b", "sqs-consumer:batch": "#3a9a48"}


def latency_svg(lat):
    """Two panels side by side, msg/s against round trip, one line per consumer: 200 ms jobs
    (linear, with the ideal) and zero-length jobs (logarithmic: the rates differ by 10-100×)."""
    kinds, rtts = lat["kinds"], [e["rtt_ms"] for e in lat["by_rtt"]]
    W, H, pw, ph, top, left, gap = 960, 430, 360, 270, 70, 80, 120
    x_max = max(rtts) if max(rtts) > 0 else 1.0
    esc = lambda t: t.replace("&", "&amp;").replace("<", "&lt;")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
             'font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16">Throughput against network round trip '
             f'({lat["messages"]:,} messages per drain, concurrency {lat["concurrency"]}, fauxqs behind the delay-proxy)</text>']

    def panel(x0, title, scenario, log_scale, ideal=None):
        vals = [e[scenario]["median"][k]["msgs_per_s"] for e in lat["by_rtt"] for k in kinds]
        vals = [v for v in vals if v]
        hi = max(vals + ([ideal] if ideal else []) + [1.0])
        if log_scale:
            lo_t, hi_t = 10 ** int(math.floor(math.log10(max(min(vals), 1.0)))), 10 ** math.ceil(math.log10(hi))
            ticks = [10 ** i for i in range(int(math.log10(lo_t)), int(math.log10(hi_t)) + 1)]
            y = lambda v: top + ph - ph * (math.log10(max(v, lo_t)) - math.log10(lo_t)) / (math.log10(hi_t) - math.log10(lo_t))
        else:
            step = nice_step(hi / 5)
            hi_t = step * math.ceil(hi * 1.05 / step)
            ticks = [step * i for i in range(int(hi_t / step) + 1)]
            y = lambda v: top + ph - ph * v / hi_t
        x = lambda r: x0 + pw * r / x_max if x_max else x0
        parts.append(f'<text x="{x0 + pw / 2}" y="{top - 14}" text-anchor="middle" font-size="14">{esc(title)}</text>')
        parts.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for t in ticks:
            parts.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e4e4e4"/>')
            parts.append(f'<text x="{x0 - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:,.0f}</text>')
        for r in sorted(set([0.0] + rtts)):
            parts.append(f'<text x="{x(r):.1f}" y="{top + ph + 18}" text-anchor="middle">{r:g}</text>')
        parts.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 38}" text-anchor="middle">round trip (ms)</text>')
        parts.append(f'<text x="{x0 - 58}" y="{top + ph / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 {x0 - 58} {top + ph / 2})">msg/s{" (log scale)" if log_scale else ""}</text>')
        if ideal:
            parts.append(f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(ideal):.1f}" y2="{y(ideal):.1f}" stroke="#555" '
                         'stroke-dasharray="5,4"/>')
            parts.append(f'<text x="{x0 + pw - 4}" y="{y(ideal) - 5:.1f}" text-anchor="end" fill="#555">'
                         f'ideal {ideal:,.0f} msg/s</text>')
        labels = {}  # x -> [(y, value, colour)], spread apart below so close values stay legible
        for k in kinds:
            pts = [(x(e["rtt_ms"]), y(e[scenario]["median"][k]["msgs_per_s"]), e[scenario]["median"][k]["msgs_per_s"])
                   for e in lat["by_rtt"] if e[scenario]["median"][k]["msgs_per_s"]]
            c = SVG_COLORS.get(k, "#000")
            if len(pts) > 1:
                parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                             + " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in pts) + '"/>')
            for px, py, v in pts:
                parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{c}"/>')
                labels.setdefault(px, []).append((py, v, c))
        for px, ls in labels.items():
            last = None
            for py, v, c in sorted(ls, reverse=True):  # from the bottom up
                ly = py - 6 if last is None else min(py - 6, last - 12)
                parts.append(f'<text x="{px + 6:.1f}" y="{ly:.1f}" fill="{c}" font-size="11">{v:,.0f}</text>')
                last = ly

    panel(left, f"{lat['slow_ms']} ms jobs", "slow", False, ideal=lat["concurrency"] * 1000 / lat["slow_ms"])
    panel(left + pw + gap, "zero-length jobs", "zero", True)
    lx = left
    for k in kinds:
        c = SVG_COLORS.get(k, "#000")
        parts.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{H - 22}" y2="{H - 22}" stroke="{c}" stroke-width="2"/>')
        parts.append(f'<text x="{lx + 30}" y="{H - 18}">{esc(KIND_LABELS.get(k, k))}</text>')
        lx += 60 + 7 * len(KIND_LABELS.get(k, k))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def nice_step(raw):
    """1, 2 or 5 times a power of ten, at least `raw`."""
    p = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * p for m in (1, 2, 5, 10) if m * p >= raw)


if __name__ == "__main__":
    main()
