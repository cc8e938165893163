#!/usr/bin/env bash
# A throwaway single-node Ceph cluster on 127.0.0.1 for humans (tests start their own).
#   scripts/ceph-cluster.sh start [--cephx]   start one, print `export …` lines
#   scripts/ceph-cluster.sh env   [--cephx]   print them again
#   scripts/ceph-cluster.sh stop  [--cephx]   stop its daemons by PID, remove its directory
# One cluster per variant (fixed ports: auth none 13300-13329, cephx 13400-13429).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # testsupport/ lives in the checkout
cmd=${1:-}; shift || true
variant=none; extra=()
for arg in "$@"; do
    case $arg in
        --cephx) variant=cephx; extra+=(--cephx) ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
state="${XDG_RUNTIME_DIR:-/tmp}/hotluks-ceph-$variant.dir"
case $cmd in
    start)
        if [ -e "$state" ] && [ -d "$(cat "$state")" ]; then
            echo "already running in $(cat "$state"); use: $0 env|stop ${extra[*]:-}" >&2; exit 2
        fi
        out=$("$py" -m testsupport.ceph start "${extra[@]}")
        printf '%s\n' "$out"
        printf '%s\n' "$out" | sed -n 's/^export HOTLUKS_CEPH_DIR=//p' >"$state" ;;
    env)
        [ -e "$state" ] || { echo "no $variant cluster running" >&2; exit 1; }
        "$py" -m testsupport.ceph env "$(cat "$state")" ;;
    stop)
        [ -e "$state" ] || { echo "no $variant cluster running" >&2; exit 1; }
        "$py" -m testsupport.ceph stop "$(cat "$state")"
        rm -f "$state" ;;
    *) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac
