#!/usr/bin/env python3
"""Draws a local-ecs run as an SVG timeline (no JavaScript; any browser opens it).

One lane per task: its jobs as bars (green done, red failed, grey cancelled at the shutdown
deadline), shaded spans with a solid bottom edge while it was protected, a hatched span while it
was yielding (labelled with its reason and length), its start, SIGTERM, SIGKILL and exit; above
them a "service" strip, red while scale-in or a deployment was held up by protected tasks;
vertical markers for desired-count changes and deployments; a time axis in seconds since
local-ecs started.

Inputs:
  --events FILE  local-ecs's timeline: the JSON lines of `local-ecs up --timeline FILE`, or the
                 JSON array of `GET /events?format=json` on its control port.
  --logs DIR     the tasks' logs, DIR/task-N.log (the worker's JSON log lines; task N of the
                 log is task N of local-ecs).

Usage: python3 scripts/timeline.py --events timeline.jsonl --logs .run/demo/logs \
           --out timeline.svg [--title "scale to zero"]

Python 3 standard library only. Missing pieces are drawn as far as they go: no events file
(lanes from the logs alone), no log for a task (a lane without jobs), no yield lines.
"""

import argparse
import json
import math
import os
import re
import sys
from datetime import datetime, timezone
from xml.sax.saxutils import escape

JOB_COLOURS = {"done": "#2e9d4f", "failed": "#d6453d", "cancelled": "#8a8a8a"}
PROTECTED_FILL = "#3b7dd8"
YIELD_COLOUR = "#e8912d"
MARKER_COLOURS = {
    "desired-count": "#7b3fb5",
    "deployment-started": "#c2185b",
    "deployment-completed": "#00897b",
}

WIDTH = 1200
LEFT = 150  # room for the lane labels
RIGHT = 30
TOP = 84  # title, marker labels and the service strip
STRIP_H = 12
BLOCKED_COLOUR = "#c62828"
LANE_GAP = 8
ROW_H = 11  # one row of job bars
LANE_MIN_H = 34
LABEL_CHAR_W = 5.2  # about how wide a character of the 9 px labels is

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_time(text):
    """RFC 3339 to epoch seconds (float), any number of fraction digits; None if unreadable."""
    if not isinstance(text, str):
        return None
    m = RFC3339.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction = float("0." + m.group(7)) if m.group(7) else 0.0
    zone = m.group(8)
    offset = 0
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    try:
        base = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except ValueError:
        return None
    return base.timestamp() + fraction - offset


def load_events(path):
    """local-ecs events as dicts; a JSON array or JSON lines; unreadable lines are skipped."""
    if not path or not os.path.exists(path):
        if path:
            print(f"timeline: no events file {path}; drawing from the logs alone", file=sys.stderr)
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            events = json.loads(stripped)
            return [e for e in events if isinstance(e, dict)]
        except json.JSONDecodeError:
            pass
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict):
            events.append(e)
    return events


def load_logs(directory):
    """task number -> its JSON log lines (dicts, with "_t" = epoch seconds)."""
    logs = {}
    if not directory or not os.path.isdir(directory):
        if directory:
            print(f"timeline: no log directory {directory}; drawing without jobs", file=sys.stderr)
        return logs
    for name in os.listdir(directory):
        m = re.fullmatch(r"task-(\d+)\.log", name)
        if not m:
            continue
        lines = []
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
            for raw in f:
                raw = raw.strip()
                if not raw.startswith("{"):
                    continue
                try:
                    v = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                t = parse_time(v.get("timestamp")) if isinstance(v, dict) else None
                if t is None:
                    continue
                v["_t"] = t
                lines.append(v)
        logs[int(m.group(1))] = lines
    return logs


class Lane:
    def __init__(self, n):
        self.n = n
        self.revision = None
        self.start = None
        self.end = None
        self.exit_text = None
        self.sigterm = None
        self.sigterm_reason = None
        self.sigkill = None
        self.protected = []  # (start, end, how it ended)
        self.yielding = []  # (start, end, reason)
        self.jobs = []  # (start, end, outcome, message id)


def job_outcome(message):
    if message == "done":
        return "done"
    if message.startswith("job failed"):
        return "failed"
    if message.startswith("cancelled at the shutdown deadline"):
        return "cancelled"
    return None


def build(events, logs):
    """(lanes by task number, markers, blocked spans, time origin, time end), times in epoch
    seconds."""
    times = []
    for e in events:
        t = parse_time(e.get("time"))
        if t is not None:
            e["_t"] = t
            times.append(t - float(e.get("at_s", 0) or 0))
    for lines in logs.values():
        times.extend(v["_t"] for v in lines)
    origin = min(times) if times else 0.0
    lanes = {}

    def lane(n):
        if n not in lanes:
            lanes[n] = Lane(n)
        return lanes[n]

    markers = []
    blocked = []  # (start, end or None, what)
    open_protection = {}
    last = origin
    for e in events:
        t = e.get("_t")
        if t is None:
            continue
        last = max(last, t)
        kind = e.get("kind")
        task = e.get("task")
        if kind == "task-started" and isinstance(task, int):
            ln = lane(task)
            ln.start, ln.revision = t, e.get("revision")
        elif kind == "sigterm" and isinstance(task, int):
            ln = lane(task)
            ln.sigterm, ln.sigterm_reason = t, e.get("reason")
        elif kind == "sigkill" and isinstance(task, int):
            lane(task).sigkill = t
        elif kind == "task-exited" and isinstance(task, int):
            ln = lane(task)
            ln.end = t
            if e.get("code") is not None:
                ln.exit_text = f"exit {e['code']}"
            elif e.get("signal") is not None:
                ln.exit_text = f"signal {e['signal']}"
            if task in open_protection:
                ln.protected.append((open_protection.pop(task), t, "exit"))
        elif kind == "protection-on" and isinstance(task, int):
            open_protection.setdefault(task, t)
            lane(task)
        elif kind in ("protection-off", "protection-expired") and isinstance(task, int):
            if task in open_protection:
                how = "expired" if kind == "protection-expired" else "off"
                lane(task).protected.append((open_protection.pop(task), t, how))
        elif kind in ("scale-in-blocked", "deployment-blocked"):
            what = "scale-in" if kind == "scale-in-blocked" else "deployment"
            if not blocked or blocked[-1][1] is not None:
                blocked.append((t, None, what))
            elif blocked[-1][2] != what:
                blocked[-1] = (blocked[-1][0], t, blocked[-1][2])
                blocked.append((t, None, what))
        elif kind == "unblocked":
            if blocked and blocked[-1][1] is None:
                blocked[-1] = (blocked[-1][0], t, blocked[-1][2])
        elif kind == "desired-count":
            markers.append((t, kind, f"desired {e.get('from')}\u2192{e.get('to')}"))
        elif kind == "deployment-started":
            markers.append((t, kind, f"deploy rev {e.get('revision')}"))
        elif kind == "deployment-completed" and e.get("revision") != 1:
            # Revision 1 completes as the service first starts: no news.
            markers.append((t, kind, f"rev {e.get('revision')} deployed"))

    for n, lines in logs.items():
        ln = lane(n)
        open_yield = None
        if ln.start is None and lines:
            ln.start = lines[0]["_t"]  # no events: the first log line stands for the start
        for v in lines:
            t = v["_t"]
            last = max(last, t)
            message = v.get("message") or ""
            outcome = job_outcome(message) if isinstance(message, str) else None
            if outcome:
                elapsed = v.get("elapsed_ms")
                elapsed = float(elapsed) / 1000.0 if isinstance(elapsed, (int, float)) else 0.0
                span = v.get("span") if isinstance(v.get("span"), dict) else {}
                ln.jobs.append((t - elapsed, t, outcome, span.get("message_id") or ""))
            y = v.get("yield")
            if y == "start" and open_yield is None:
                open_yield = (t, str(v.get("reason") or ""))
            elif y == "end" and open_yield is not None:
                ln.yielding.append((open_yield[0], t, open_yield[1]))
                open_yield = None
        if open_yield is not None:
            end = ln.end if ln.end is not None else (lines[-1]["_t"] if lines else open_yield[0])
            ln.yielding.append((open_yield[0], max(end, open_yield[0]), open_yield[1]))
    for n, start in open_protection.items():
        lanes[n].protected.append((start, None, "open"))
    blocked = [(b, e if e is not None else last, what) for b, e, what in blocked]
    return lanes, markers, blocked, origin, last


def nice_step(span):
    """A tick step giving about 10 ticks over `span` seconds."""
    raw = max(span / 10.0, 0.001)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def pack_rows(jobs):
    """Row index per job so that overlapping jobs of one task sit on different rows."""
    rows_end = []
    placed = []
    for job in sorted(jobs, key=lambda j: (j[0], j[1])):
        for i, end in enumerate(rows_end):
            if job[0] >= end:
                rows_end[i] = job[1]
                placed.append((job, i))
                break
        else:
            rows_end.append(job[1])
            placed.append((job, len(rows_end) - 1))
    return placed, max(len(rows_end), 1)


def fmt(x):
    return f"{x:.1f}"


def render(lanes, markers, blocked, origin, last, title):
    span = max(last - origin, 1.0) * 1.02
    plot_w = WIDTH - LEFT - RIGHT

    def x(t):
        return LEFT + (t - origin) / span * plot_w

    order = sorted(lanes)
    layouts = []
    y = TOP
    for n in order:
        placed, rows = pack_rows(lanes[n].jobs)
        h = max(LANE_MIN_H, 14 + rows * ROW_H + 6)
        layouts.append((n, y, h, placed))
        y += h + LANE_GAP
    plot_bottom = y
    height = plot_bottom + 80

    out = []
    add = out.append
    add('<?xml version="1.0" encoding="UTF-8"?>')
    add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">'
    )
    add("<defs>")
    add(
        f'<pattern id="yield-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{YIELD_COLOUR}" '
        f'fill-opacity="0.15"/><line x1="0" y1="0" x2="0" y2="6" stroke="{YIELD_COLOUR}" '
        f'stroke-width="2.5"/></pattern>'
    )
    add("</defs>")
    add(f'<rect width="{WIDTH}" height="{height}" fill="white"/>')
    add(
        f'<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>'
    )

    # Lanes.
    for n, top, h, placed in layouts:
        ln = lanes[n]
        add(f'<g class="lane" data-task="{n}">')
        label = f"task {n}" + (f" (rev {ln.revision})" if ln.revision is not None else "")
        add(
            f'<text x="{LEFT - 8}" y="{fmt(top + h / 2 + 4)}" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        start = ln.start if ln.start is not None else origin
        end = ln.end if ln.end is not None else last
        add(
            f'<rect class="alive" x="{fmt(x(start))}" y="{fmt(top)}" '
            f'width="{fmt(max(x(end) - x(start), 1))}" height="{h}" fill="#f2f2f2" '
            f'stroke="#cfcfcf"><title>task {n}: {fmt(start - origin)}s to '
            f"{fmt(end - origin)}s</title></rect>"
        )
        for p_start, p_end, how in ln.protected:
            p_end = p_end if p_end is not None else end
            w = fmt(max(x(p_end) - x(p_start), 1))
            add(
                f'<rect class="protected" x="{fmt(x(p_start))}" y="{fmt(top + 2)}" '
                f'width="{w}" height="{h - 4}" '
                f'fill="{PROTECTED_FILL}" fill-opacity="0.18"><title>protected '
                f"{fmt(p_start - origin)}s to {fmt(p_end - origin)}s ({how})</title></rect>"
            )
            # A solid edge along the lane's bottom: the shading hides under a busy lane's jobs.
            add(
                f'<rect class="protected-edge" x="{fmt(x(p_start))}" y="{fmt(top + h - 5)}" '
                f'width="{w}" height="3" fill="{PROTECTED_FILL}"/>'
            )
            if how == "expired":
                add(
                    f'<line x1="{fmt(x(p_end))}" y1="{fmt(top + 2)}" x2="{fmt(x(p_end))}" '
                    f'y2="{fmt(top + h - 2)}" stroke="{PROTECTED_FILL}" stroke-dasharray="3,2"/>'
                )
        for y_start, y_end, reason in ln.yielding:
            add(
                f'<rect class="yielding" x="{fmt(x(y_start))}" y="{fmt(top + 1)}" '
                f'width="{fmt(max(x(y_end) - x(y_start), 2))}" height="7" '
                f'fill="url(#yield-hatch)" stroke="{YIELD_COLOUR}"><title>yielding '
                f"({escape(reason)}) {fmt(y_start - origin)}s to {fmt(y_end - origin)}s"
                f"</title></rect>"
            )
        for (j_start, j_end, outcome, message_id), row in placed:
            jy = top + 12 + row * ROW_H
            add(
                f'<rect class="job job-{outcome}" x="{fmt(x(j_start))}" y="{fmt(jy)}" '
                f'width="{fmt(max(x(j_end) - x(j_start), 1.5))}" height="{ROW_H - 3}" '
                f'fill="{JOB_COLOURS[outcome]}" stroke="white" stroke-width="0.6" rx="1.5">'
                f"<title>{outcome} "
                f"{escape(message_id)}: {fmt(j_start - origin)}s to {fmt(j_end - origin)}s "
                f"({j_end - j_start:.2f}s)</title></rect>"
            )
        for y_start, y_end, reason in ln.yielding:
            # After the jobs, so that no bar hides it: right of the hatched strip (and of the
            # SIGTERM and exit marks that often end it), else left of it where the plot ends.
            if reason:
                text = f"yield: {reason} {y_end - y_start:.1f}s"
                right = x(y_end) + 3
                for mark, half in ((ln.sigterm, 5), (ln.end, 1.5)):
                    if mark is not None and -6 <= x(mark) - x(y_end) <= 12:
                        right = max(right, x(mark) + half + 3)
                if right + LABEL_CHAR_W * len(text) <= WIDTH - 2:
                    tx, anchor = right, "start"
                else:
                    tx, anchor = x(y_start) - 3, "end"
                add(
                    f'<text class="yield-label" x="{fmt(tx)}" y="{fmt(top + 8)}" font-size="9" '
                    f'text-anchor="{anchor}" fill="#a35f12">{escape(text)}</text>'
                )
        if ln.start is not None:
            add(
                f'<path class="start" d="M{fmt(x(ln.start))},{fmt(top)} l6,{h / 2} l-6,{h / 2} z" '
                f'fill="#555"><title>started at {fmt(ln.start - origin)}s</title></path>'
            )
        if ln.sigterm is not None:
            reason = ln.sigterm_reason or ""
            add(
                f'<path class="sigterm" d="M{fmt(x(ln.sigterm) - 5)},{fmt(top - 1)} h10 l-5,8 z" '
                f'fill="#d6453d"><title>SIGTERM at {fmt(ln.sigterm - origin)}s '
                f"({escape(str(reason))})</title></path>"
            )
        if ln.sigkill is not None:
            add(
                f'<text class="sigkill" x="{fmt(x(ln.sigkill) - 3)}" y="{fmt(top + h - 3)}" '
                f'text-anchor="end" fill="#b00020" font-weight="bold">SIGKILL</text>'
            )
        if ln.end is not None:
            add(
                f'<rect class="exit" x="{fmt(x(ln.end) - 1.5)}" y="{fmt(top)}" width="3" '
                f'height="{h}" fill="#222"><title>exited at {fmt(ln.end - origin)}s '
                f"({escape(ln.exit_text or '')})</title></rect>"
            )
        add("</g>")

    # The service strip: when protected tasks held scale-in or a deployment up.
    strip_y = TOP - STRIP_H - 6
    add('<g class="service">')
    add(
        f'<text x="{LEFT - 8}" y="{strip_y + STRIP_H - 2}" text-anchor="end" fill="#555">'
        "held up by protection</text>"
    )
    add(
        f'<rect x="{LEFT}" y="{strip_y}" width="{plot_w}" height="{STRIP_H}" fill="#fafafa" '
        f'stroke="#e0e0e0"/>'
    )
    for b_start, b_end, what in blocked:
        w = max(x(b_end) - x(b_start), 1.5)
        add(
            f'<rect class="blocked" x="{fmt(x(b_start))}" y="{strip_y}" width="{fmt(w)}" '
            f'height="{STRIP_H}" fill="{BLOCKED_COLOUR}" fill-opacity="0.8"><title>{what} held '
            f"up by protected tasks {fmt(b_start - origin)}s to {fmt(b_end - origin)}s "
            f"({b_end - b_start:.1f}s)</title></rect>"
        )
        # The longest text that fits: what and how long, else how long alone.
        for text in (f"{what} blocked {b_end - b_start:.1f}s", f"{b_end - b_start:.1f}s"):
            if w > 6.2 * len(text):
                add(
                    f'<text x="{fmt(x(b_start) + 4)}" y="{strip_y + STRIP_H - 2.5}" '
                    f'font-size="9.5" fill="white">{escape(text)}</text>'
                )
                break
    add("</g>")

    # Markers, labels staggered on three rows so that close ones do not overlap.
    label_rows = [-1e9, -1e9, -1e9]
    for t, kind, text in sorted(markers):
        mx = x(t)
        row = next((i for i, end in enumerate(label_rows) if mx > end + 4), 0)
        label_rows[row] = mx + 6.2 * len(text)
        colour = MARKER_COLOURS.get(kind, "#444")
        ly = 34 + row * 11
        add(f'<g class="marker marker-{kind}">')
        add(
            f'<line x1="{fmt(mx)}" y1="{ly + 2}" x2="{fmt(mx)}" y2="{plot_bottom}" '
            f'stroke="{colour}" stroke-width="1.2" stroke-dasharray="5,3"/>'
        )
        if mx + 2 + 6.2 * len(text) > WIDTH:
            add(
                f'<text x="{fmt(mx - 2)}" y="{ly}" fill="{colour}" text-anchor="end">'
                f"{escape(text)}</text>"
            )
        else:
            add(f'<text x="{fmt(mx + 2)}" y="{ly}" fill="{colour}">{escape(text)}</text>')
        add("</g>")

    # Time axis.
    axis_y = plot_bottom + 6
    add('<g class="axis">')
    add(
        f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" stroke="#333"/>'
    )
    step = nice_step(span)
    k = 0
    while k * step <= span + 1e-9:
        tx = x(origin + k * step)
        value = k * step
        text = f"{value:g}s" if step >= 1 else f"{value:.1f}s"
        add(f'<line x1="{fmt(tx)}" y1="{axis_y}" x2="{fmt(tx)}" y2="{axis_y + 5}" stroke="#333"/>')
        add(f'<text x="{fmt(tx)}" y="{axis_y + 17}" text-anchor="middle">{text}</text>')
        k += 1
    add(
        f'<text x="{WIDTH - RIGHT}" y="{axis_y + 30}" text-anchor="end" fill="#555">'
        "seconds since local-ecs started</text>"
    )
    add("</g>")

    # Legend.
    ly = axis_y + 48
    items = [
        ("rect", JOB_COLOURS["done"], "job done"),
        ("rect", JOB_COLOURS["failed"], "job failed"),
        ("rect", JOB_COLOURS["cancelled"], "job cancelled"),
        ("protected", PROTECTED_FILL, "protected"),
        ("yield", YIELD_COLOUR, "yielding"),
        ("sigterm", "#d6453d", "SIGTERM"),
        ("exit", "#222", "exit"),
        ("rect", BLOCKED_COLOUR, "held up by protection"),
    ]
    lx = LEFT
    add('<g class="legend">')
    for shape, colour, text in items:
        if shape == "protected":
            add(f'<rect x="{lx}" y="{ly - 9}" width="14" height="10" fill="{colour}" fill-opacity="0.25"/>')
            add(f'<rect x="{lx}" y="{ly - 2}" width="14" height="3" fill="{colour}"/>')
        elif shape == "yield":
            add(f'<rect x="{lx}" y="{ly - 9}" width="14" height="10" fill="url(#yield-hatch)" stroke="{colour}"/>')
        elif shape == "sigterm":
            add(f'<path d="M{lx + 2},{ly - 9} h10 l-5,8 z" fill="{colour}"/>')
        elif shape == "exit":
            add(f'<rect x="{lx + 5}" y="{ly - 10}" width="3" height="12" fill="{colour}"/>')
        else:
            add(f'<rect x="{lx}" y="{ly - 9}" width="14" height="10" fill="{colour}" rx="1.5"/>')
        add(f'<text x="{lx + 18}" y="{ly}">{escape(text)}</text>')
        lx += 26 + 6.5 * len(text)
    add("</g>")
    add("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="Draw a local-ecs run as an SVG timeline.")
    ap.add_argument("--events", help="local-ecs timeline (JSON lines or a JSON array)")
    ap.add_argument("--logs", help="directory with the tasks' task-N.log files")
    ap.add_argument("--out", required=True, help="the SVG file to write")
    ap.add_argument("--title", default="local-ecs run", help="title above the lanes")
    args = ap.parse_args(argv)
    events = load_events(args.events)
    logs = load_logs(args.logs)
    lanes, markers, blocked, origin, last = build(events, logs)
    if not lanes:
        print("timeline: no tasks in the events or the logs: nothing to draw", file=sys.stderr)
        return 1
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(render(lanes, markers, blocked, origin, last, args.title))
    jobs = sum(len(ln.jobs) for ln in lanes.values())
    print(f"timeline: {len(lanes)} tasks, {jobs} jobs, {len(markers)} markers -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
