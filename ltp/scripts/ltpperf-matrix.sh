#!/usr/bin/env bash
# LTP red goodput on loopback vs raw UDP, with ltpperf (release build).
# Usage: ltp/scripts/ltpperf-matrix.sh [TOTAL_MIB]   (env BLOCKS_MIB, SEGS, WINDOWS, LOSSES override)
# Prints one markdown table row per run: block, segment, window, loss, LTP goodput, raw goodput, ratio.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target-ltpcodec}"
cargo build --release -q -p tools --bin ltpperf
BIN="$CARGO_TARGET_DIR/release/ltpperf"
TOTAL_MIB="${1:-64}"                     # octets per run = max(TOTAL_MIB, block size)
BLOCKS_MIB="${BLOCKS_MIB:-1 64}"
SEGS="${SEGS:-1400 60000}"
WINDOWS="${WINDOWS:-1 8 32}"
LOSSES="${LOSSES:-0 0.01 0.05}"
PORT=$((20000 + RANDOM % 20000))

jfield() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

raw() { # $1 block bytes $2 blocks $3 segment
  local out
  "$BIN" recv --bind 127.0.0.1:$PORT --raw --json --idle-exit 1 > /tmp/ltpperf-raw.$$ & local rp=$!
  sleep 0.3
  "$BIN" send --to 127.0.0.1:$PORT --raw --blocks "$2" --block-size "$1" --segment-size "$3" --json > /dev/null
  wait $rp
  jfield goodput_bps < /tmp/ltpperf-raw.$$
}

ltp() { # $1 block $2 blocks $3 segment $4 window $5 loss
  "$BIN" recv --bind 127.0.0.1:$PORT --json --idle-exit 2 > /dev/null & local rp=$!
  sleep 0.3
  local out
  out=$("$BIN" send --to 127.0.0.1:$PORT --blocks "$2" --block-size "$1" --segment-size "$3" \
        --window "$4" --loss "$5" --red-fraction 1 --json --timeout 300 || true)
  wait $rp || true
  echo "$out" | tail -1
}

echo "| block | segment | window | loss | LTP Mbit/s | raw UDP Mbit/s | LTP/raw | retransmitted segs | completed/cancelled |"
echo "|---|---|---|---|---|---|---|---|---|"
for bm in $BLOCKS_MIB; do
  bs=$((bm * 1024 * 1024))
  n=$(( TOTAL_MIB / bm )); [ "$n" -lt 1 ] && n=1
  for seg in $SEGS; do
    r=$(raw "$bs" "$n" "$seg")
    for w in $WINDOWS; do
      for loss in $LOSSES; do
        j=$(ltp "$bs" "$n" "$seg" "$w" "$loss")
        g=$(echo "$j" | jfield goodput_bps)
        rt=$(echo "$j" | jfield segments_retransmitted)
        c=$(echo "$j" | jfield blocks_completed); x=$(echo "$j" | jfield blocks_cancelled)
        python3 -c "print(f'| {$bm} MiB x $n | $seg | $w | $loss | {$g/1e6:.0f} | {$r/1e6:.0f} | {$g/$r*100:.0f}% | $rt | $c/$x |')"
      done
    done
  done
done
rm -f /tmp/ltpperf-raw.$$
