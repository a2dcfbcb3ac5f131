"""Turns benches/load.sh measurements (environment variables) into a table, a
JSON record and a PNG chart, and says for each target whether it was met."""
import datetime
import json
import os
import sys

out = sys.argv[1]
e = os.environ
num = lambda k: float(e[k]) if e.get(k) else None
cold, coalesce = json.loads(e["COLD"]), json.loads(e["COALESCE"])
cold["proxy_cpu_us_per_login"] = num("COLD_CPU_US")
LABELS = ["direct", "proxy", "session", "h2c", "tls", "nginx", "nginx_h2c", "nginx_tls"]
r = {
    "date": datetime.date.today().isoformat(),
    "machine": f"{e['CORES']} cores, {e['CPU_MODEL']}; {e['PINNED']}",
    "command": f"DURATION={e['DURATION']} CONNS={e['CONNS']} ROUNDS={e['ROUNDS']} benches/load.sh",
    "rps": {k: num(f"RPS_{k.upper()}") for k in LABELS},
    "p50_ms": {k: num(f"P50_{k.upper()}") for k in LABELS},
    "p99_ms": {k: num(f"P99_{k.upper()}") for k in LABELS},
    "cpu_us_per_request": {k: num(f"CPU_{k.upper()}") for k in LABELS if k != "direct"},
    # The user-space part of the CPU (median of the rounds); the rest is the kernel's.
    "user_us_per_request": {k: num(f"USER_{k.upper()}") for k in LABELS if k != "direct"},
    "idle_rss_mb": round(int(e["IDLE_RSS"]) / 1024, 1),
    "identities": json.loads(e.get("IDS_JSON") or "[]"),
    "cold": cold,
    "coalesce": coalesce,
    "curve": json.loads(e.get("CURVE_JSON") or "[]"),
    "idle_connections": json.loads(e["IDLE_JSON"]) if e.get("IDLE_JSON") else None,
}

def ratio(a, b):
    return round(a / b, 2) if a and b else None

targets = []
def target(name, ok, detail):
    targets.append((name, "met" if ok else "MISSED", detail))

cpu = r["cpu_us_per_request"]
user = r["user_us_per_request"]

def kernel(k):
    return round(cpu[k] - user[k], 2) if cpu.get(k) and user.get(k) is not None else None

def split(k):
    return f"user {user.get(k)} + kernel {kernel(k)} us" if kernel(k) is not None else "no user/kernel split"

for mine, theirs, name in [
    ("proxy", "nginx", "HTTP/1.1 CPU/request <= 1.0x nginx proxy_pass"),
    ("h2c", "nginx_h2c", "h2c (4 connections x 8 streams) CPU/request <= 1.0x nginx http2"),
    ("tls", "nginx_tls", "TLS (keep-alive) CPU/request <= 1.0x nginx ssl"),
]:
    if cpu.get(mine) and cpu.get(theirs):
        target(name, cpu[mine] <= cpu[theirs], f"{cpu[mine]} us vs {cpu[theirs]} us ({ratio(cpu[mine], cpu[theirs])}x); {split(mine)} vs {split(theirs)}")
if r["rps"]["nginx"]:
    target("throughput at 32 connections >= nginx", r["rps"]["proxy"] >= r["rps"]["nginx"], f"{r['rps']['proxy']:.0f} vs {r['rps']['nginx']:.0f} req/s ({ratio(r['rps']['proxy'], r['rps']['nginx'])}x)")
added = round(r["p99_ms"]["proxy"] - r["p99_ms"]["direct"], 3)
target("p99 added over direct <= 0.5 ms", added <= 0.5, f"{added} ms (nginx: {round(r['p99_ms']['nginx'] - r['p99_ms']['direct'], 3) if r['p99_ms']['nginx'] else '-'} ms)")
if cpu.get("session") and cpu.get("proxy"):
    extra = round(cpu["session"] - cpu["proxy"], 2)
    target("session cookie adds <= 2 us CPU over a cached token", extra <= 2.0, f"{cpu['session']} us vs {cpu['proxy']} us ({extra:+} us)")
target("idle RSS <= 10 MB", r["idle_rss_mb"] <= 10, f"{r['idle_rss_mb']} MB")
ids = {row["identities"]: row for row in r["identities"]}
for row in r["identities"]:
    row["rss_mb"] = round(row["rss_kb"] / 1024, 1)
if 100000 in ids:
    target("100000 cached identities <= 64 MB RSS", ids[100000]["rss_mb"] <= 64 and ids[100000]["entries"] >= 100000, f"{ids[100000]['rss_mb']} MB")
if 1000000 in ids:
    big = ids[1000000]
    target("1000000 cached identities <= 400 MB RSS", big["rss_mb"] <= 400 and big["entries"] >= 1000000, f"{big['rss_mb']} MB ({big['entries']:.0f} entries)")
    if 1000 in ids:
        slower = round((big["cpu_us"] / ids[1000]["cpu_us"] - 1) * 100, 1)
        target("hit cost at 1000000 identities within 20 % of 1000", slower <= 20, f"{big['cpu_us']} us vs {ids[1000]['cpu_us']} us ({slower:+} %)")
target("cold login: one round trip (verify and profile concurrently)", cold["verify_per_login"] == 1 and cold["profile_per_login"] == 1 and cold["p50_ms"] < 40, f"{cold['verify_per_login']} verify + {cold['profile_per_login']} profile per login, p50 {cold['p50_ms']} ms with LINE at 20 ms; proxy CPU {cold['proxy_cpu_us_per_login']} us per login")
target("coalescing: 500 concurrent, one fresh token", coalesce["verify_calls"] == 1 and coalesce["profile_calls"] == 1 and coalesce["ok"] == coalesce["requests"], f"{coalesce['verify_calls']:.0f} verify, {coalesce['profile_calls']:.0f} profile, {coalesce['ok']}/{coalesce['requests']} ok")
idle = r["idle_connections"]
if idle and idle["connections"]:
    per_kb = round((idle["rss_after_kb"] - idle["rss_before_kb"]) / idle["connections"], 1)
    idle["kb_per_connection"] = per_kb
    target(
        f"memory per idle keep-alive connection ({idle['connections']} held) <= 20 KB",
        per_kb <= 20,
        f"{per_kb} KB ({idle['rss_before_kb'] // 1024} MB -> {idle['rss_after_kb'] // 1024} MB RSS; "
        f"{idle['upstream_connections_open']} upstream connections kept open)",
    )
r["targets"] = [{"target": t, "result": res, "detail": d} for t, res, d in targets]

rows = [
    ("direct to upstream", "direct"),
    ("line-auth-proxy, cached token", "proxy"),
    ("line-auth-proxy, session cookie", "session"),
    ("nginx proxy_pass", "nginx"),
    ("line-auth-proxy, h2c (4 conns x 8 streams)", "h2c"),
    ("nginx http2 (h2c), same load", "nginx_h2c"),
    ("line-auth-proxy, TLS", "tls"),
    ("nginx ssl, same certificate", "nginx_tls"),
]
rows = [(l, k) for l, k in rows if r["rps"].get(k)]
against = {"proxy": "nginx", "session": "nginx", "h2c": "nginx_h2c", "tls": "nginx_tls"}
show = lambda v: "–" if v is None else (f"{v:.0f}" if v >= 1000 else f"{v}")
lines = [
    f"Measured {r['date']} on {r['machine']}; `{r['command']}` (median of {e['ROUNDS']} rounds).",
    "",
    "| target | req/s | p50 ms | p99 ms | server CPU µs/req | vs nginx (CPU) |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
]
for label, k in rows:
    c = cpu.get(k)
    base = cpu.get(against.get(k, ""))
    lines.append(
        f"| {label} | {r['rps'][k]:.0f} | {show(r['p50_ms'][k])} | {show(r['p99_ms'][k])} | {show(c)} | "
        f"{str(ratio(c, base)) + 'x' if c and base else '–'} |"
    )
split_rows = [(l, k) for l, k in rows if k != "direct" and kernel(k) is not None]
if split_rows:
    lines += [
        "",
        "Where the CPU goes (from `/proc/PID/stat`: user-space time per request is the median of the rounds; kernel time is the median total minus the median user time):",
        "",
        "| target | user µs/req | kernel µs/req | kernel share |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, k in split_rows:
        lines.append(f"| {label} | {user[k]} | {kernel(k)} | {round(kernel(k) / cpu[k] * 100)} % |")
if r["curve"]:
    lines += [
        "",
        "CPU per request as concurrency grows (cached token; nginx `proxy_pass` with `keepalive 64`):",
        "",
        "| connections | proxy req/s | proxy p99 ms | proxy CPU µs/req | nginx req/s | nginx p99 ms | nginx CPU µs/req | CPU vs nginx |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["curve"]:
        n_cpu = row.get("nginx_cpu_us")
        lines.append(
            f"| {row['conns']} | {row['proxy_rps']:.0f} | {row['proxy_p99_ms']} | {row['proxy_cpu_us']} | "
            f"{row.get('nginx_rps', 0):.0f} | {row.get('nginx_p99_ms', '–')} | {n_cpu if n_cpu else '–'} | "
            f"{str(ratio(row['proxy_cpu_us'], n_cpu)) + 'x' if n_cpu else '–'} |"
        )
if r["identities"]:
    lines += [
        "",
        "Distinct cached identities (each request's token drawn at random from all of them; this stage runs with the access log off, as a million fill requests would write a million lines, so compare its rows with each other, not with the rows above):",
        "",
        "| identities | cache entries | RSS MB | proxy CPU µs/req | req/s | fill (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["identities"]:
        lines.append(
            f"| {row['identities']} | {row['entries']:.0f} | {row['rss_mb']} | {row['cpu_us']} | {row['rps']:.0f} | {row['fill']['seconds']} |"
        )
lines += ["", "| target | result | measured |", "| --- | --- | --- |"]
lines += [f"| {t} | {res} | {d} |" for t, res, d in targets]
md = "\n".join(lines) + "\n"
print(md)
with open(os.path.join(out, "latest.md"), "w") as f:
    f.write(md)
with open(os.path.join(out, "latest.json"), "w") as f:
    json.dump(r, f, indent=2)

try:
    import matplotlib
except ImportError:
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=False)
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    pairs = [(n, a, b) for n, a, b in [("HTTP/1.1", "proxy", "nginx"), ("session", "session", "nginx"), ("h2c", "h2c", "nginx_h2c"), ("TLS", "tls", "nginx_tls")] if cpu.get(a)]
    xs = list(range(len(pairs)))
    for ax, metric, title in [(axes[0], r["cpu_us_per_request"], "server CPU per request (µs, lower is better)"), (axes[1], r["rps"], "throughput (req/s, higher is better)")]:
        ax.bar([x - 0.2 for x in xs], [metric.get(a) or 0 for _, a, _ in pairs], 0.4, color="#06c755", label="line-auth-proxy")
        ax.bar([x + 0.2 for x in xs], [metric.get(b) or 0 for _, _, b in pairs], 0.4, color="#369", label="nginx")
        ax.set_xticks(xs, [n for n, _, _ in pairs])
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    p99 = [(l, k) for l, k in [("direct", "direct"), ("proxy", "proxy"), ("nginx", "nginx")] if r["p99_ms"].get(k)]
    axes[2].bar([l for l, _ in p99], [r["p99_ms"][k] for _, k in p99], color=["#888", "#06c755", "#369"][: len(p99)])
    axes[2].set_title("p99 latency, HTTP/1.1 (ms, lower is better)", fontsize=9)
    if r["curve"]:
        conns = [row["conns"] for row in r["curve"]]
        axes[3].plot(conns, [row["proxy_cpu_us"] for row in r["curve"]], "o-", color="#06c755", label="line-auth-proxy")
        if all(row.get("nginx_cpu_us") for row in r["curve"]):
            axes[3].plot(conns, [row["nginx_cpu_us"] for row in r["curve"]], "s-", color="#369", label="nginx")
        axes[3].set_xscale("log")
        axes[3].set_xticks(conns, [str(c) for c in conns])
        axes[3].set_ylim(bottom=0)
        axes[3].set_title("CPU per request by connections (µs)", fontsize=9)
        axes[3].legend(fontsize=8)
    fig.suptitle(f"line-auth-proxy, {r['date']}, {e['CONNS']} connections, {r['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "chart.png"), dpi=100)
    print(f"chart: {os.path.join(out, 'chart.png')}")
except Exception as exc:  # the numbers above stand without the chart
    print(f"no chart: {exc}")
