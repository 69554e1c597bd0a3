"""scripts/timeline.py on generated runs: the SVG parses as XML, has one lane per task, and
draws what the inputs hold (job outcomes, protection, yields, markers), also when pieces are
missing. Run: python3 -m unittest discover -s tests/timeline (the testkit test `timeline` does).
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "timeline.py")
SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def stamp(s, nanos=False):
    """RFC 3339 for T0 + s seconds (nanoseconds like the worker's logs, or milliseconds)."""
    whole = int(T0 + s)
    from datetime import datetime, timezone

    base = datetime.fromtimestamp(whole, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    frac = (T0 + s) - whole
    return f"{base}.{int(round(frac * 1e9)):09d}Z" if nanos else f"{base}.{int(round(frac * 1e3)):03d}Z"


def event(at, kind, **fields):
    return {"kind": kind, "at_s": at, "time": stamp(at), "text": kind, **fields}


def job_line(end, message, elapsed_ms, message_id, level="INFO", **fields):
    return {
        "timestamp": stamp(end, nanos=True),
        "level": level,
        "message": message,
        "elapsed_ms": elapsed_ms,
        "span": {"message_id": message_id, "receive_count": 1, "name": "job"},
        **fields,
    }


def run_of_three():
    """Task 1: jobs done/failed, protected, yields for a deployment, stopped. Task 2: a
    cancelled job, protection that expired, SIGKILL. Task 3: the new revision, no log at all."""
    events = [
        event(0.1, "task-started", task=1, pid=11, revision=1),
        event(0.1, "task-started", task=2, pid=12, revision=1),
        event(0.2, "deployment-completed", revision=1),
        event(1.0, "protection-on", task=1, expires_in_s=60.0, refresh=False),
        event(1.5, "protection-on", task=2, expires_in_s=60.0, refresh=False),
        event(4.0, "deployment-started", revision=2),
        event(4.0, "task-started", task=3, pid=13, revision=2),
        event(5.0, "deployment-blocked", protected=1),
        event(6.0, "desired-count", **{"from": 2, "to": 1}),
        event(7.0, "protection-off", task=1),
        event(7.1, "sigterm", task=1, reason="deployment"),
        event(7.1, "unblocked"),
        event(7.5, "task-exited", task=1, code=0, signal=None, requested=True),
        event(8.0, "protection-expired", task=2),
        event(8.1, "sigterm", task=2, reason="scale-in"),
        event(9.1, "sigkill", task=2),
        event(9.2, "task-exited", task=2, code=None, signal=9, requested=True),
        event(9.5, "deployment-completed", revision=2),
    ]
    logs = {
        1: [
            {"timestamp": stamp(0.3, nanos=True), "level": "INFO", "message": "worker started"},
            job_line(2.0, "done", 900, "m-1"),
            job_line(3.5, "job failed; retrying in 1s", 1200, "m-2", level="WARN"),
            {"timestamp": stamp(5.5), "level": "INFO", "message": "yielding", "yield": "start",
             "reason": "deployment"},
            job_line(6.5, "done", 2000, "m-3"),
            {"timestamp": stamp(6.9), "level": "INFO", "message": "yielded", "yield": "end"},
        ],
        2: [
            job_line(3.0, "done", 1000, "m-4"),
            job_line(2.8, "done", 1500, "m-5"),  # overlaps m-4: a second row
            job_line(
                9.1,
                "cancelled at the shutdown deadline; returning the message to the queue now",
                3000,
                "m-6",
            ),
            "not json at all",
        ],
    }
    return events, logs


class TimelineTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def write(self, events, logs, as_array=False):
        events_path = os.path.join(self.dir.name, "events.json")
        with open(events_path, "w") as f:
            if as_array:
                json.dump(events, f)
            else:
                for e in events:
                    f.write(json.dumps(e) + "\n")
        log_dir = os.path.join(self.dir.name, "logs")
        os.makedirs(log_dir, exist_ok=True)
        for n, lines in logs.items():
            with open(os.path.join(log_dir, f"task-{n}.log"), "w") as f:
                for line in lines:
                    f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
        return events_path, log_dir

    def render(self, events_path, log_dir, *extra):
        out = os.path.join(self.dir.name, "timeline.svg")
        args = [sys.executable, SCRIPT, "--out", out, *extra]
        if events_path:
            args += ["--events", events_path]
        if log_dir:
            args += ["--logs", log_dir]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return ET.parse(out).getroot()

    @staticmethod
    def of_class(root, cls):
        return [e for e in root.iter() if cls in (e.get("class") or "").split()]

    def test_three_tasks_with_everything(self):
        events, logs = run_of_three()
        root = self.render(*self.write(events, logs), "--title", "a & b <test>")
        self.assertEqual(root.tag, SVG + "svg")
        lanes = self.of_class(root, "lane")
        self.assertEqual([lane.get("data-task") for lane in lanes], ["1", "2", "3"])
        self.assertEqual(len(self.of_class(root, "job-done")), 4)
        self.assertEqual(len(self.of_class(root, "job-failed")), 1)
        self.assertEqual(len(self.of_class(root, "job-cancelled")), 1)
        self.assertEqual(len(self.of_class(root, "protected")), 2)
        self.assertEqual(len(self.of_class(root, "yielding")), 1)
        self.assertEqual(len(self.of_class(root, "sigterm")), 2)
        self.assertEqual(len(self.of_class(root, "sigkill")), 1)
        self.assertEqual(len(self.of_class(root, "exit")), 2)
        self.assertEqual(len(self.of_class(root, "blocked")), 1)
        # Revision 1's completion at the start is left out; the rest are markers.
        self.assertEqual(len(self.of_class(root, "marker")), 3)
        texts = " ".join(t.text or "" for t in root.iter(SVG + "text"))
        self.assertIn("a & b <test>", texts)
        self.assertIn("desired 2\u21921", texts)
        self.assertIn("deploy rev 2", texts)
        self.assertIn("rev 2 deployed", texts)
        self.assertIn("yield: deployment", texts)
        self.assertIn("task 3 (rev 2)", texts)
        # A job bar spans its elapsed time: m-3 ran 2 s, the whole run ~9.5 s.
        lane1 = lanes[0]
        widths = sorted(float(r.get("width")) for r in self.of_class(lane1, "job"))
        self.assertGreater(widths[-1], widths[0])
        # Overlapping jobs of task 2 sit on two rows.
        rows = {r.get("y") for r in self.of_class(lanes[1], "job")}
        self.assertEqual(len(rows), 2)

    def test_a_yield_label_at_the_right_edge_stays_inside(self):
        # Task 1 yields until it exits at the very end of the run: its label goes left of the
        # hatched strip instead of off the picture.
        events = [
            event(0.0, "task-started", task=1, pid=1, revision=1),
            event(5.0, "desired-count", **{"from": 1, "to": 0}),
            event(9.9, "sigterm", task=1, reason="scale-in"),
            event(10.0, "task-exited", task=1, code=0, signal=None, requested=True),
        ]
        logs = {1: [{"timestamp": stamp(6.0), "level": "INFO", "message": "yielding",
                     "yield": "start", "reason": "scale-in"}]}
        root = self.render(*self.write(events, logs))
        (label,) = self.of_class(root, "yield-label")
        self.assertEqual(label.text, "yield: scale-in 4.0s")
        self.assertEqual(label.get("text-anchor"), "end")
        (strip,) = self.of_class(root, "yielding")
        self.assertLess(float(label.get("x")), float(strip.get("x")))

    def test_json_array_from_the_control_port_reads_the_same(self):
        events, logs = run_of_three()
        root = self.render(*self.write(events, logs, as_array=True))
        self.assertEqual(len(self.of_class(root, "lane")), 3)
        self.assertEqual(len(self.of_class(root, "job")), 6)

    def test_no_yields_no_jobs_no_logs(self):
        events = [
            event(0.0, "task-started", task=1, pid=1, revision=1),
            event(0.0, "task-started", task=2, pid=2, revision=1),
            event(2.0, "desired-count", **{"from": 2, "to": 0}),
            event(2.1, "sigterm", task=1, reason="scale-in"),
            event(2.2, "task-exited", task=1, code=0, signal=None, requested=True),
        ]
        root = self.render(*self.write(events, {}))
        self.assertEqual(len(self.of_class(root, "lane")), 2)
        self.assertEqual(self.of_class(root, "job"), [])
        self.assertEqual(self.of_class(root, "yielding"), [])

    def test_logs_alone_without_an_events_file(self):
        _, logs = run_of_three()
        _, log_dir = self.write([], logs)
        root = self.render(os.path.join(self.dir.name, "missing.jsonl"), log_dir)
        self.assertEqual(len(self.of_class(root, "lane")), 2)
        self.assertEqual(len(self.of_class(root, "job")), 6)

    def test_nothing_to_draw_fails_with_a_message(self):
        out = os.path.join(self.dir.name, "t.svg")
        done = subprocess.run(
            [sys.executable, SCRIPT, "--events", os.path.join(self.dir.name, "none"), "--out", out],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 1)
        self.assertIn("nothing to draw", done.stderr)


if __name__ == "__main__":
    unittest.main()
