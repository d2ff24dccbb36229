#!/usr/bin/env python3
"""Renders docs/PERFORMANCE.md from the JSON lines scripts/bench-vs-etcd.sh collected."""
import json
import os
import platform
import subprocess
import sys
from collections import OrderedDict

results_path, command = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(results_path) if l.strip()]
by_label = {r["label"]: r for r in rows}

scenarios = OrderedDict()
for r in rows:
    system, members, scenario = r["label"].split("|", 2)
    scenarios.setdefault((members, scenario), {})[system] = r


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"


cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
mem = sh("free -g | awk '/Mem:/ {print $2}'")
etcd_version = sh("etcd --version | head -1")
commit = sh("git rev-parse --short HEAD")
date = sh("date -u +%Y-%m-%d")

out = []
w = out.append
w("# Performance: Skiff vs etcd 3.4, side by side")
w("")
w(f"Produced by `{command}` on {date} (Skiff commit `{commit}`), which starts both systems on this")
w("machine, one after the other, and drives them with the same `skiff bench` workloads. Both fsync")
w("every commit (etcd's default; Skiff's group-committed WAL sync). Nothing here is asserted by a test.")
w("")
w(f"Machine: {os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} {platform.release()}; "
  f"reference: {etcd_version} (Debian etcd-server). Keys 8 B, values 256 B, key space 100,000,")
w("members on 127.0.0.1; clients spread over the members' endpoints round-robin.")
w("")


def fmt(x, digits=1):
    return f"{x:,.{digits}f}"


for members in ("3", "1"):
    w(f"## {members}-member cluster" if members == "3" else "## Single member")
    w("")
    w("| workload | etcd req/s | Skiff req/s | Skiff/etcd | etcd p50 / p99 ms | Skiff p50 / p99 ms | errors (etcd/Skiff) |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for (m, scenario), systems in scenarios.items():
        if m != members or "report" not in next(iter(systems.values())):
            continue
        e, s = systems.get("etcd", {}).get("report"), systems.get("skiff", {}).get("report")
        if not e or not s:
            continue
        ratio = s["throughput"] / e["throughput"] if e["throughput"] else float("nan")
        w(f"| {scenario} | {fmt(e['throughput'])} | {fmt(s['throughput'])} | {ratio:.2f}x | "
          f"{e['latency']['p50_ms']:.2f} / {e['latency']['p99_ms']:.2f} | "
          f"{s['latency']['p50_ms']:.2f} / {s['latency']['p99_ms']:.2f} | {e['errors']}/{s['errors']} |")
    w("")

w("## Footprint and start-up")
w("")
w("| measure | etcd | Skiff | Skiff/etcd |")
w("|---|---:|---:|---:|")
re, rs = by_label.get("etcd|3|rss"), by_label.get("skiff|3|rss")
if re and rs:
    w(f"| RSS per member after the 3-member workloads (MiB) | {re['rss_kb']/1024:.0f} | {rs['rss_kb']/1024:.0f} | {rs['rss_kb']/re['rss_kb']:.2f}x |")
se, ss = by_label.get("etcd|1|startup"), by_label.get("skiff|1|startup")
if se and ss:
    w(f"| start-up to first linearizable read, {se['keys']:,} keys (s) | {se['seconds']:.2f} | {ss['seconds']:.2f} | {ss['seconds']/se['seconds']:.2f}x |")
    w(f"| RSS right after that start-up (MiB) | {se['rss_kb']/1024:.0f} | {ss['rss_kb']/1024:.0f} | {ss['rss_kb']/se['rss_kb']:.2f}x |")
w("")
w("Workload details: `put`/`range` pick random keys; `txn-put` is Kubernetes' update (Txn: if")
w("mod_revision(key) == last seen then put else get); `watch` measures the delay from a put's send time to")
w("its delivery to each of 10,000 watchers on one prefix; the offered-load row paces requests at a fixed rate")
w("and measures latency from each request's scheduled time. See `skiff bench --help`.")
notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "perf_notes.md")
if os.path.exists(notes):
    w("")
    w(open(notes).read().rstrip())
print("\n".join(out))
