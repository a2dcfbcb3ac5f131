#!/usr/bin/env bash
# Silent and dawdling clients: the proxy's CPU while SILENT plain TCP clients
# hold half an h2c preface each (and, separately, TLS_SILENT TLS clients that
# finished the handshake with ALPN h2 and say nothing), and how many of them
# are still connected after the header read timeout (2 s here).
#
#   benches/silent_clients.sh                     # SILENT=2000 TLS_SILENT=200
#   BIN=/path/to/other/line-auth-proxy benches/silent_clients.sh
#
# CPU is the proxy's user+system time over the 2 s window, from /proc.
set -euo pipefail
SILENT=${SILENT:-2000}
TLS_SILENT=${TLS_SILENT:-200}
source "$(dirname "$0")/common.sh"
ulimit -n 65536 2>/dev/null || true
start_fixtures
python3 - "$TMP" <<'PY'
import subprocess, sys
d = sys.argv[1]
subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", f"{d}/tls.key", "-out", f"{d}/tls.crt", "-days", "1", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
PY
HZ=$(getconf CLK_TCK)
run() {
    local label=$1 tls=$2
    cat > "$TMP/$label.toml" <<T
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_connections = 10000
header_read_timeout_ms = 2000
$( [ "$tls" = tls ] && printf 'tls_cert_file = "%s"\ntls_key_file = "%s"\n' "$TMP/tls.crt" "$TMP/tls.key" )
[limits]
connections = 0
[upstream]
url = "http://127.0.0.1:$UP_PORT"
[line]
channel_ids = ["1234567890"]
api_base_url = "http://127.0.0.1:$LINE_PORT"
T
    start_proxy "$label"
    local pid=$PROXY_PID port=$PROXY_PORT
    local n; n=$([ "$tls" = tls ] && echo "$TLS_SILENT" || echo "$SILENT")
    python3 - "$port" "$n" "$tls" "$pid" "$HZ" <<'PY'
import socket, ssl, sys, time
port, n, tls, pid, hz = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "tls", sys.argv[4], int(sys.argv[5])
def cpu():
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return int(f[11]) + int(f[12])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if tls:
        s = ctx.wrap_socket(s, server_hostname="localhost")
    else:
        s.sendall(b"PRI * HTTP/2.0\r\n")  # half the preface
    socks.append(s)
c0, t0 = cpu(), time.time()
time.sleep(1.5)
c1, t1 = cpu(), time.time()
time.sleep(2.0)
open_after = 0
for s in socks:
    s.setblocking(False)
    try:
        open_after += 1 if s.recv(16) is None else 0
    except (BlockingIOError, ssl.SSLWantReadError):
        open_after += 1
    except (OSError, ssl.SSLError):
        pass
what = "TLS clients silent after the handshake (ALPN h2)" if tls else "plain clients holding half an h2c preface"
print(f"   {n} {what}: proxy CPU {100 * (c1 - c0) / hz / (t1 - t0):.1f} % of a core while they wait; "
      f"{open_after} still open 3.5 s after connecting (header timeout 2 s)")
PY
    kill "$pid"
}
echo "== plain listener"
run plain plain
echo "== TLS listener"
run tls tls
