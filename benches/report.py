"""Turns benches/load.sh measurements (environment variables) into a table, a
JSON record and a PNG chart, and says for each target whether it was met."""
import datetime
import json
import os
import sys

out = sys.argv[1]
e = os.environ
num = lambda k: float(e[k]) if e.get(k) else None
cold, coalesce, fill = json.loads(e["COLD"]), json.loads(e["COALESCE"]), json.loads(e["FILL_OUT"])
r = {
    "date": datetime.date.today().isoformat(),
    "machine": f"{e['CORES']} cores, {e['CPU_MODEL']}; {e['PINNED']}",
    "command": f"DURATION={e['DURATION']} CONNS={e['CONNS']} benches/load.sh",
    "rps": {"direct": num("RPS_DIRECT"), "proxy": num("RPS_PROXY"), "session": num("RPS_SESSION"), "nginx": num("RPS_NGINX")},
    "p50_ms": {"direct": num("P50_DIRECT"), "proxy": num("P50_PROXY"), "session": num("P50_SESSION"), "nginx": num("P50_NGINX")},
    "p99_ms": {"direct": num("P99_DIRECT"), "proxy": num("P99_PROXY"), "session": num("P99_SESSION"), "nginx": num("P99_NGINX")},
    "cpu_us_per_request": {"proxy": num("CPU_PROXY"), "session": num("CPU_SESSION"), "nginx": num("CPU_NGINX")},
    "idle_rss_mb": round(int(e["IDLE_RSS"]) / 1024, 1),
    "rss_mb_filled": round(int(e["FILL_RSS"]) / 1024, 1),
    "cached_identities": int(float(e["ENTRIES"] or 0)),
    "cold": cold,
    "coalesce": coalesce,
    "fill": fill,
    "curve": json.loads(e.get("CURVE_JSON") or "[]"),
    "idle_connections": json.loads(e["IDLE_JSON"]) if e.get("IDLE_JSON") else None,
}

def ratio(a, b):
    return round(a / b, 2) if a and b else None

targets = []
def target(name, ok, detail):
    targets.append((name, "met" if ok else "MISSED", detail))

cpu_p, cpu_n = r["cpu_us_per_request"]["proxy"], r["cpu_us_per_request"]["nginx"]
if cpu_n:
    target("CPU/request <= 1.0x nginx proxy_pass", cpu_p <= cpu_n, f"{cpu_p} us vs {cpu_n} us ({ratio(cpu_p, cpu_n)}x)")
    target("throughput >= nginx", r["rps"]["proxy"] >= r["rps"]["nginx"], f"{r['rps']['proxy']:.0f} vs {r['rps']['nginx']:.0f} req/s ({ratio(r['rps']['proxy'], r['rps']['nginx'])}x)")
added = round(r["p99_ms"]["proxy"] - r["p99_ms"]["direct"], 3)
target("p99 added over direct <= 0.5 ms", added <= 0.5, f"{added} ms")
cpu_s = r["cpu_us_per_request"]["session"]
if cpu_s is not None and cpu_p is not None:
    extra = round(cpu_s - cpu_p, 2)
    target("session cookie adds <= 2 us CPU over a cached token", extra <= 2.0, f"{cpu_s} us vs {cpu_p} us (+{extra} us)")
target("idle RSS <= 10 MB", r["idle_rss_mb"] <= 10, f"{r['idle_rss_mb']} MB")
target(f"{r['cached_identities']} cached identities <= 64 MB RSS", r["rss_mb_filled"] <= 64 and r["cached_identities"] >= 100000, f"{r['rss_mb_filled']} MB")
target("cold login: one round trip (verify and profile concurrently)", cold["verify_per_login"] == 1 and cold["profile_per_login"] == 1 and cold["p50_ms"] < 40, f"{cold['verify_per_login']} verify + {cold['profile_per_login']} profile per login, p50 {cold['p50_ms']} ms with LINE at 20 ms")
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

rows = [("direct to upstream", "direct"), ("line-auth-proxy, cached token", "proxy"), ("line-auth-proxy, session cookie", "session")]
if r["rps"]["nginx"]:
    rows.append(("nginx proxy_pass", "nginx"))
lines = [
    f"Measured {r['date']} on {r['machine']}; `{r['command']}`.",
    "",
    "| target | req/s | p50 ms | p99 ms | server CPU µs/req | vs direct (req/s) | vs nginx (CPU) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for label, k in rows:
    cpu = r["cpu_us_per_request"].get(k)
    lines.append(
        f"| {label} | {r['rps'][k]:.0f} | {r['p50_ms'][k]} | {r['p99_ms'][k]} | {cpu if cpu is not None else '–'} | "
        f"{ratio(r['rps'][k], r['rps']['direct'])} | {ratio(cpu, cpu_n) if cpu and cpu_n else '–'} |"
    )
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
            f"{ratio(row['proxy_cpu_us'], n_cpu) if n_cpu else '–'}x |"
        )
lines += ["", "| target | result | measured |", "| --- | --- | --- |"]
lines += [f"| {t} | {res} | {d} |" for t, res, d in targets]
lines += ["", f"Idle RSS {r['idle_rss_mb']} MB; {r['cached_identities']} cached identities: {r['rss_mb_filled']} MB RSS."]
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
    labels = [l for l, _ in rows]
    keys = [k for _, k in rows]
    fig, axes = plt.subplots(1, 4 if r["curve"] else 3, figsize=(17 if r["curve"] else 13, 4))
    axes[0].bar(labels, [r["rps"][k] for k in keys], color=["#888", "#06c755", "#0a5", "#369"][: len(keys)])
    axes[0].set_title("throughput (req/s, higher is better)")
    axes[1].bar(labels, [r["p99_ms"][k] for k in keys], color=["#888", "#06c755", "#0a5", "#369"][: len(keys)])
    axes[1].set_title("p99 latency (ms, lower is better)")
    cpu_keys = [k for k in keys if r["cpu_us_per_request"].get(k)]
    axes[2].bar([labels[keys.index(k)] for k in cpu_keys], [r["cpu_us_per_request"][k] for k in cpu_keys], color=["#06c755", "#0a5", "#369"][: len(cpu_keys)])
    axes[2].set_title("server CPU per request (µs, lower is better)")
    for ax in axes[:3]:
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    if r["curve"]:
        conns = [row["conns"] for row in r["curve"]]
        axes[3].plot(conns, [row["proxy_cpu_us"] for row in r["curve"]], "o-", color="#06c755", label="line-auth-proxy")
        if all(row.get("nginx_cpu_us") for row in r["curve"]):
            axes[3].plot(conns, [row["nginx_cpu_us"] for row in r["curve"]], "s-", color="#369", label="nginx")
        axes[3].set_xscale("log")
        axes[3].set_xticks(conns, [str(c) for c in conns])
        axes[3].set_ylim(bottom=0)
        axes[3].set_title("CPU per request by connections (µs)")
        axes[3].legend(fontsize=8)
    fig.suptitle(f"line-auth-proxy, {r['date']}, {e['CONNS']} connections, {r['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "chart.png"), dpi=100)
    print(f"chart: {os.path.join(out, 'chart.png')}")
except Exception as exc:  # the numbers above stand without the chart
    print(f"no chart: {exc}")
