#!/usr/bin/env bash
# Figures for NAT traversal on the real router rig (tools/nat-rig.sh; root):
#   1. time from start to a working mapping, per protocol (`zeppelin nat check --method M`:
#      discovery + mapping request, process start-up excluded), RUNS runs each;
#   2. time from start to a working mapping in auto mode when the router serves only PCP or
#      only NAT-PMP (the cost of the fallback: discovery asks all three at once);
#   3. renewals over a HOLD-long run with 30-second leases: count, how long before expiry each
#      came, late ones, failed requests.
#
#   tools/nat-bench.sh                 # RUNS=5 HOLD=120s; ZEPPELIN_BIN=target/debug/zeppelin
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${ZEPPELIN_BIN:-target/debug/zeppelin}")
RUNS=${RUNS:-5}
HOLD=${HOLD:-120s}
export ZP_RIG=${ZP_RIG:-natbench}
[ -x "$BIN" ] || { echo "nat-bench: build first (cargo build): $BIN" >&2; exit 1; }
trap 'tools/nat-rig.sh down >/dev/null 2>&1 || true' EXIT
tools/nat-rig.sh up >/dev/null 2>&1
# shellcheck disable=SC1090
. "/run/zeppelin-nat-rig-$ZP_RIG.env"
lan() { ip netns exec "$ZP_NS_LAN" "$@"; }

echo "== 1. time to a working mapping per protocol (ms; $RUNS runs; router serves all three)"
for m in upnp pcp natpmp; do
    for _ in $(seq "$RUNS"); do lan "$BIN" nat check --method "$m" --port 7070 --lease 30s --json; done |
        python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
ok = [r for r in rows if r["ok"]]
def stats(key):
    v = sorted(r[key] for r in ok)
    return "min %d, median %d, max %d" % (v[0], statistics.median(v), v[-1]) if v else "-"
print("%-9s %d/%d ok; answered: %s; mapped: %s" % (rows[0]["method"], len(ok), len(rows), stats("answer_ms"), stats("mapped_ms")))'
done

echo "== 2. auto mode, time from start to a working mapping (ms, from the NAT task's start)"
for flags in "" "--no-natpmp --no-pcp" "--no-upnp" "--no-upnp --no-pcp"; do
    # shellcheck disable=SC2086
    tools/nat-rig.sh restart-router $flags >/dev/null 2>&1
    lan "$BIN" nat check --hold --json --port 7070 --lease 30s --duration 4s 2>/dev/null |
        python3 -c '
import json, sys
ev = [json.loads(l) for l in sys.stdin if l.strip()]
m = next((e for e in ev if e["event"] == "mapped"), None)
print("router %-22s -> %s, mapped at %s ms" % (sys.argv[1] or "(all three)", m and m["method"], m and m["at_ms"]))' "$flags"
done

echo "== 3. renewals over $HOLD with 30 s leases (auto: UPnP IGD)"
tools/nat-rig.sh restart-router >/dev/null 2>&1
lan "$BIN" nat check --hold --json --port 7070 --lease 30s --duration "$HOLD" 2>/dev/null |
    python3 -c '
import json, sys
ev = [json.loads(l) for l in sys.stdin if l.strip()]
ren = [e for e in ev if e["event"] == "renewed"]
st = ev[-1]["status"]
m = [e["margin_ms"] for e in ren]
at = [e["at_ms"] for e in ren]
gaps = [b - a for a, b in zip(at, at[1:])]
print("renewals: %d; all before expiry: %s; margin before expiry min %d ms, max %d ms" % (len(ren), all(x > 0 for x in m), min(m), max(m)))
print("interval between renewals: min %d ms, max %d ms (lease/2 = 15000)" % (min(gaps), max(gaps)) if gaps else "")
print("late renewals: %d; failed requests: %d; reachable at the end: %s" % (st["mappings"][0]["late_renewals"], st["failures"], st["reachable"]))'
