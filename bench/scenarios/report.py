#!/usr/bin/env python3
"""Writes a scenario's result files from loadgen's --json summaries.

usage: report.py runs  BASE TITLE NOTE CMD_SERVER CMD_LOADGEN RUN.json...
       report.py steps BASE TITLE NOTE CMD_SERVER CMD_LOADGEN LABEL=STEP.json...

`runs`: repeated runs of one load; the table shows every run and the median
of each figure (the machine is shared and noisy, so one run proves little).
`steps`: a ceiling search; one row per step, and the highest deliveries/s
held (zero loss, no error, p99 within the limit).

Writes BASE.md and BASE.json; the SVG and .hgrm of the median run (or of the
highest step held) are copied to BASE.svg and BASE.hgrm.
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from datetime import datetime, timezone


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores (nproc), {model}{mem}, Linux {platform.release()}"


def commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # Result files rewritten by earlier runs are not code changes.
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                                "--", ".", ":(exclude)bench/results"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load(path):
    with open(path) as f:
        return json.load(f)


# (column title, function of a summary)
FIGURES = [
    ("result", lambda s: "OK" if s["ok"] else "FAILED"),
    ("connect s", lambda s: s["connect"]["seconds"]),
    ("deliveries/s", lambda s: s["deliveries"]["per_second"]),
    ("lost", lambda s: s["deliveries"]["lost"]),
    ("p50 ms", lambda s: s["latency_ms"]["p50"]),
    ("p90 ms", lambda s: s["latency_ms"]["p90"]),
    ("p99 ms", lambda s: s["latency_ms"]["p99"]),
    ("p99.9 ms", lambda s: s["latency_ms"]["p999"]),
    ("max ms", lambda s: s["latency_ms"]["max"]),
    ("at socket p50 ms", lambda s: s["socket_latency_ms"]["p50"]),
    ("at socket p99 ms", lambda s: s["socket_latency_ms"]["p99"]),
    ("completion p50 ms", lambda s: s["completion_ms"]["p50"]),
    ("completion p99 ms", lambda s: s["completion_ms"]["p99"]),
    ("send lag p99 ms", lambda s: s["send_lag_ms"]["p99"]),
    ("loadgen ns/delivery", lambda s: s["cpu"]["loadgen_ns_per_delivery"]),
    ("server ns/delivery", lambda s: s["cpu"]["server_ns_per_delivery"]),
    ("wire B/delivery", lambda s: s["deliveries"].get("bytes_per_delivery")),
]


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v < 1 else f"{v:.2f}"


def median(values):
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return None
    return statistics.median(nums)


def header(title, note, cmd_server, cmd_loadgen, s):
    c = s["config"]
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, commit {commit()}",
        f"- machine: {machine()} (shared with the server, noisy)",
        f"- server: `{cmd_server}`",
        f"- loadgen: `{cmd_loadgen}`",
        f"- load: {c['clients']:,} clients in {c['rooms']:,} rooms of {c['room_size']:,} on "
        f"{len(c['urls'])} node(s), {c['rate']:,g} msg/s × {c['payload']} B, {c['duration_s']:g} s measured "
        f"after {c['warmup_s']:g} s warm-up; {c['workers']} loadgen process(es)",
    ]
    if note:
        lines.append(f"- note: {note}")
    lines += [
        "",
        "Latency: from each message's scheduled send time to its reading by each recipient (open "
        "loop, no coordinated omission). At socket: the same up to the kernel's receive timestamp, "
        "i.e. before loadgen's own read delay. Completion: per message, the latency of its last "
        "delivery. Send lag: how late loadgen sent. CPU per delivery: loadgen's getrusage and the "
        "server's /proc/PID/stat (10 ms ticks) over the traffic phase, divided by the deliveries "
        "received in it.",
        "",
    ]
    return lines


def table(rows, labels):
    out = ["| run | " + " | ".join(t for t, _ in FIGURES) + " |",
           "|---|" + "---|" * len(FIGURES)]
    for label, values in zip(labels, rows):
        out.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + " |")
    return out


def figures(s):
    vals = []
    for _, f in FIGURES:
        try:
            vals.append(f(s))
        except (KeyError, TypeError):
            vals.append(None)
    return vals


def main():
    mode, base, title, note, cmd_server, cmd_loadgen = sys.argv[1:7]
    items = sys.argv[7:]
    if mode == "runs":
        paths = items
        labels = [f"{i + 1}" for i in range(len(paths))]
    else:
        labels = [i.split("=", 1)[0] for i in items]
        paths = [i.split("=", 1)[1] for i in items]
    sums = [load(p) for p in paths]
    rows = [figures(s) for s in sums]
    md = header(title, note, cmd_server, cmd_loadgen, sums[0])
    out = {"title": title, "note": note, "server": cmd_server, "loadgen": cmd_loadgen,
           "machine": machine(), "commit": commit(), "mode": mode}
    svg_from = None
    if mode == "runs":
        med = [median([r[i] for r in rows]) for i in range(len(FIGURES))]
        med[0] = "OK" if all(s["ok"] for s in sums) else f"{sum(not s['ok'] for s in sums)} of {len(sums)} FAILED"
        md += table(rows + [med], labels + ["**median**"])
        out["runs"] = sums
        out["median"] = {t: v for (t, _), v in zip(FIGURES, med)}
        # The plot of the run whose p99 is the median one.
        p99 = [s["latency_ms"]["p99"] for s in sums]
        order = sorted(range(len(sums)), key=lambda i: p99[i])
        svg_from = paths[order[len(order) // 2]]
        md += ["", f"Plot: the run with the median p99 (run {order[len(order) // 2] + 1})."]
    else:
        limit = float(os.environ.get("P99_LIMIT_MS", "50"))
        held = [(s["deliveries"]["per_second"], p, l) for s, p, l in zip(sums, paths, labels)
                if s["ok"] and s["latency_ms"]["p99"] <= limit]
        md += table(rows, labels)
        best = max(held) if held else None
        lossless = [(s["deliveries"]["per_second"], l) for s, l in zip(sums, labels) if s["ok"]]
        top = max(lossless) if lossless else None
        out["steps"] = [{"step": l, "summary": s} for l, s in zip(labels, sums)]
        out["p99_limit_ms"] = limit
        out["ceiling_deliveries_per_s"] = best[0] if best else None
        out["ceiling_step"] = best[2] if best else None
        out["max_lossless_deliveries_per_s"] = top[0] if top else None
        out["max_lossless_step"] = top[1] if top else None
        md += [""]
        if best:
            md.append(f"**Ceiling: {best[0]:,.0f} deliveries/s held** (step {best[2]}) with zero loss "
                      f"and p99 ≤ {limit:g} ms.")
            svg_from = best[1]
        else:
            md.append(f"No step held zero loss with p99 ≤ {limit:g} ms.")
        if top:
            md.append("")
            md.append(f"Highest rate with zero loss and no error at any latency: {top[0]:,.0f} deliveries/s "
                      f"(step {top[1]}).")
    failures = [f"run {l}: {'; '.join(s['failures'])}" for l, s in zip(labels, sums) if not s["ok"]]
    if failures:
        md += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    if svg_from:
        stem = os.path.splitext(svg_from)[0]
        if os.path.exists(stem + ".hgrm"):
            shutil.copyfile(stem + ".hgrm", base + ".hgrm")
        if os.path.exists(stem + ".svg"):
            shutil.copyfile(stem + ".svg", base + ".svg")
            md += ["", f"![latency percentile spectrum]({os.path.basename(base)}.svg)"]
    with open(base + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    with open(base + ".json", "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
