#!/usr/bin/env bash
# The NAT lab as a matrix (issue 25): one run of tests/nat_lab.sh per cell, each with
# ATTEMPTS hole punches between two cone NATs (conntrack flushed between attempts), and
# the symmetric-NAT and consent checks nat_lab.sh makes in every run. Prints one line per
# cell: whether every check passed, punches direct / attempted, median ms to direct.
#
#   filter:    drop (unsolicited packets vanish) | reject (TCP RST, ICMP port unreachable)
#   transport: both | tcp | quic (what the users listen on and know the relay by) |
#              tcp-boot (both, but the relay known by its TCP address only)
#
# Usage: tests/nat_matrix.sh PTPCHAT_BINARY [ATTEMPTS=20]
# Needs what nat_lab.sh needs (root, iproute2, iptables, conntrack). A cell whose punches
# fail waits out each 30 s connect, so a failing cell takes ATTEMPTS × 32 s.

set -u
BIN=${1:?usage: nat_matrix.sh PTPCHAT_BINARY [ATTEMPTS]}
ATTEMPTS=${2:-20}
LAB="$(dirname "$0")/nat_lab.sh"
printf '%-8s %-9s %-7s %-14s %s\n' filter transport checks direct median_ms
for filter in drop reject; do
    for transport in both tcp quic tcp-boot; do
        boot=both; tr=$transport
        [ "$transport" = tcp-boot ] && { boot=tcp; tr=both; }
        out=$(NAT_FILTER=$filter NAT_TRANSPORT=$tr NAT_BOOTSTRAP=$boot \
            bash "$LAB" "$BIN" "$ATTEMPTS" 2>/tmp/nat_matrix.$$.err)
        code=$?
        line=$(echo "$out" | grep '^hole_punch ')
        direct=$(echo "$line" | sed -n 's/.*direct=\([0-9]*\).*/\1/p')
        median=$(echo "$line" | sed -n 's/.*median_ms=\(.*\)/\1/p')
        case $code in 0) checks=pass ;; 77) checks=skipped ;; *) checks=FAIL ;; esac
        printf '%-8s %-9s %-7s %-14s %s\n' "$filter" "$transport" "$checks" \
            "${direct:-0}/$ATTEMPTS" "${median:-n/a}"
        if [ "$code" = 77 ]; then
            grep nat_lab: /tmp/nat_matrix.$$.err >&2
            rm -f /tmp/nat_matrix.$$.err
            exit 77
        fi
        [ "$checks" = FAIL ] && grep 'nat_lab: FAIL' /tmp/nat_matrix.$$.err | head -3 >&2
    done
done
rm -f /tmp/nat_matrix.$$.err
