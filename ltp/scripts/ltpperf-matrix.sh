#!/usr/bin/env bash
# LTP red goodput on loopback vs raw UDP, with ltpperf (release build).
# Usage: ltp/scripts/ltpperf-matrix.sh [TOTAL_MIB]
#   env BLOCKS_MIB, SEGS, WINDOWS, LOSSES narrow the matrix;
#   env LTPPERF=path runs that binary instead of building one (e.g. an older build to compare);
#   env IOFLAGS="--no-batch" (or --no-gso / --no-gro) is passed to both sides of every run, raw
#   and LTP alike (ltpperf's raw mode uses the driver's socket I/O, so both take the same path);
#   env SENDFLAGS (e.g. "--max-in-flight 4194304") goes to the LTP sender only;
#   env RAW_MIB octets of each raw reference run (default: 4 x TOTAL_MIB, at least 256: a raw run
#   at tens of Gbit/s is over in milliseconds otherwise);
#   env RECV_CPU/SEND_CPU pin the receiver and the sender of every run, raw and LTP alike, to
#   those CPUs (default 1 and 0 on a machine with two or more; PIN=0 leaves them unpinned: the
#   scheduler then often runs both on one CPU, since each wakes the other, and idles the rest).
#   env REPEAT runs every row that many times (default 3).
# Every LTP run is paired with a raw UDP run of the same datagram size just before it, so that
# the two see the same machine (on a shared VM its speed moves by 2x within minutes).
# Prints one markdown table row per configuration: block, segment, window, loss, the medians over
# the repeats of LTP goodput, raw goodput and the per-pair ratio (with the lowest and highest
# ratio), retransmitted segments and blocks completed/cancelled summed over the repeats, and the
# UDP receive-buffer drops the kernel counted during the LTP runs (RcvbufErrors of
# /proc/net/snmp: system-wide, so other UDP traffic on the machine would show there too).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-ltpcodec}"
if [ -n "${LTPPERF:-}" ]; then
  BIN="$LTPPERF"
else
  cargo build --release -q -p tools --bin ltpperf
  BIN="$CARGO_TARGET_DIR/release/ltpperf"
fi
TOTAL_MIB="${1:-64}"                     # octets per run = max(TOTAL_MIB, block size)
BLOCKS_MIB="${BLOCKS_MIB:-1 64}"
SEGS="${SEGS:-1400 60000}"
WINDOWS="${WINDOWS:-1 8 32}"
LOSSES="${LOSSES:-0 0.01 0.05}"
IOFLAGS="${IOFLAGS:-}"
SENDFLAGS="${SENDFLAGS:-}"
RAW_MIB="${RAW_MIB:-$(( TOTAL_MIB * 4 > 256 ? TOTAL_MIB * 4 : 256 ))}"
REPEAT="${REPEAT:-3}"
PORT=$((20000 + RANDOM % 20000))
RECV_PIN=""; SEND_PIN=""
if [ "${PIN:-1}" != 0 ] && [ "$(nproc)" -ge 2 ]; then
  RECV_PIN="--cpu ${RECV_CPU:-1}"; SEND_PIN="--cpu ${SEND_CPU:-0}"
fi

jfield() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
rcvbuf_errors() { awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp 2>/dev/null || echo 0; }

raw() { # $1 segment $2 block size (the datagrams are slices of one block of that size, as
        # LTP's segments are: the kernel reads them from as much memory)
  local n=$(( RAW_MIB * 1048576 / $2 )); [ "$n" -lt 1 ] && n=1
  # shellcheck disable=SC2086
  "$BIN" recv --bind 127.0.0.1:$PORT --raw --json --idle-exit 0.5 $IOFLAGS $RECV_PIN > /tmp/ltpperf-raw.$$ & local rp=$!
  sleep 0.3
  # shellcheck disable=SC2086
  "$BIN" send --to 127.0.0.1:$PORT --raw --blocks "$n" --block-size "$2" --segment-size "$1" --json $IOFLAGS $SEND_PIN > /dev/null
  wait $rp
  jfield goodput_bps < /tmp/ltpperf-raw.$$
}

ltp() { # $1 block $2 blocks $3 segment $4 window $5 loss
  # shellcheck disable=SC2086
  "$BIN" recv --bind 127.0.0.1:$PORT --json --idle-exit 1 $IOFLAGS $RECV_PIN > /dev/null & local rp=$!
  sleep 0.3
  local out
  # shellcheck disable=SC2086
  out=$("$BIN" send --to 127.0.0.1:$PORT --blocks "$2" --block-size "$1" --segment-size "$3" \
        --window "$4" --loss "$5" --red-fraction 1 --json --timeout 300 $IOFLAGS $SEND_PIN $SENDFLAGS || true)
  wait $rp || true
  echo "$out" | tail -1
}

echo "| block | segment | window | loss | LTP Mbit/s | raw UDP Mbit/s | LTP/raw (lowest-highest) | retransmitted segs | completed/cancelled | rcvbuf drops |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for bm in $BLOCKS_MIB; do
  bs=$((bm * 1024 * 1024))
  n=$(( TOTAL_MIB / bm )); [ "$n" -lt 1 ] && n=1
  for seg in $SEGS; do
    for w in $WINDOWS; do
      for loss in $LOSSES; do
        runs=""; drops=0
        for _ in $(seq "$REPEAT"); do
          r=$(raw "$seg" "$bs")
          d0=$(rcvbuf_errors)
          j=$(ltp "$bs" "$n" "$seg" "$w" "$loss")
          d1=$(rcvbuf_errors)
          drops=$((drops + d1 - d0))
          runs="$runs$r $(echo "$j" | python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(d['goodput_bps'], d['segments_retransmitted'], d['blocks_completed'], d['blocks_cancelled'])");"
        done
        python3 - "$runs" <<PY
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1].split(";") if r.strip()]
raw = statistics.median(r[0] for r in rows); ltp = statistics.median(r[1] for r in rows)
ratios = sorted(r[1] / r[0] * 100 for r in rows)
rt, c, x = (int(sum(r[i] for r in rows)) for i in (2, 3, 4))
print(f"| $bm MiB x $n | $seg | $w | $loss | {ltp/1e6:.0f} | {raw/1e6:.0f} | "
      f"{statistics.median(ratios):.0f}% ({ratios[0]:.0f}-{ratios[-1]:.0f}%) | {rt} | {c}/{x} | $drops |")
PY
      done
    done
  done
done
rm -f /tmp/ltpperf-raw.$$
