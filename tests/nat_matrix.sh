#!/usr/bin/env bash
# The NAT lab as a matrix (issue 25): one run of tests/nat_lab.sh per cell, each with
# ATTEMPTS rounds (conntrack flushed between them). Prints one line per cell: whether
# every check passed, rounds direct / attempted, how many the first DCUtR round made
# direct, rounds that ended relayed or otherwise, hangs, the median ms from `connect` to
# direct, and the round trip measured between the two NATs.
#
#   mapping:   cone (port-preserving MASQUERADE, to B) | symmetric (--random-fully, to C:
#              every round must end relayed, and say so) | public (P, no NAT, connects to A)
#   filter:    drop (unsolicited packets vanish) | reject (TCP RST, ICMP port unreachable)
#   transport: both | tcp | quic (what the users listen on and know the relay by) |
#              tcp-boot (both, but the relay known by its TCP address only)
#   rtt:       0 | 50 | 150 ms between the NATs (packets held in user space: nat_delay)
#
# Usage: tests/nat_matrix.sh PTPCHAT_BINARY NAT_DELAY_BINARY [ATTEMPTS=20]
#   (cargo build --release --examples; the binaries are target/release/ptpchat and
#   target/release/examples/nat_delay). NAT_MATRIX_CELLS="mapping/filter/transport/rtt ..."
#   runs only those cells. Needs what nat_lab.sh needs (root, iproute2, iptables,
#   conntrack, NFQUEUE). A round that ends relayed waits out the 30 s hole punch.

set -u
BIN=${1:?usage: nat_matrix.sh PTPCHAT_BINARY NAT_DELAY_BINARY [ATTEMPTS]}
DELAY=${2:?usage: nat_matrix.sh PTPCHAT_BINARY NAT_DELAY_BINARY [ATTEMPTS]}
ATTEMPTS=${3:-20}
LAB="$(dirname "$0")/nat_lab.sh"

cells=${NAT_MATRIX_CELLS:-}
if [ -z "$cells" ]; then
    for rtt in 0 50 150; do
        for filter in drop reject; do
            for transport in both tcp quic; do cells+=" cone/$filter/$transport/$rtt"; done
        done
    done
    cells+=" cone/drop/tcp-boot/0 cone/reject/tcp-boot/0 cone/reject/tcp-boot/150"
    cells+=" symmetric/drop/both/0 symmetric/reject/both/50"
    cells+=" public/drop/both/50 public/reject/both/50"
fi

fmt='%-9s %-7s %-9s %4s  %-7s %-7s %-6s %-8s %-6s %-5s %9s %12s %8s\n'
# shellcheck disable=SC2059
printf "$fmt" mapping filter transport rtt checks direct first relayed other hangs median_ms \
    after_accept path_rtt
err=$(mktemp)
for cell in $cells; do
    IFS=/ read -r mapping filter transport rtt <<<"$cell"
    boot=both; tr=$transport
    [ "$transport" = tcp-boot ] && { boot=tcp; tr=both; }
    case $mapping in cone) peer=b ;; symmetric) peer=c ;; public) peer=p ;; esac
    # The functional checks (deny, deny then a late accept, the symmetric NAT) run in the
    # cells with both transports; the others only measure.
    checks=0
    [ "$transport" = both ] && checks=1
    out=$(NAT_FILTER=$filter NAT_TRANSPORT=$tr NAT_BOOTSTRAP=$boot NAT_RTT_MS=$rtt \
        NAT_PEER=$peer NAT_CHECKS=$checks NAT_DELAY_BIN=$DELAY \
        bash "$LAB" "$BIN" "$ATTEMPTS" 2>"$err")
    code=$?
    line=$(echo "$out" | grep '^hole_punch ')
    field() { echo "$line" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
    case $code in 0) result=pass ;; 77) result=skipped ;; *) result=FAIL ;; esac
    # shellcheck disable=SC2059
    printf "$fmt" "$mapping" "$filter" "$transport" "$rtt" "$result" "$(field direct)/$ATTEMPTS" \
        "$(field first_attempt)" "$(field relayed)" "$(field other)" "$(field hangs)" \
        "$(field median_ms)" "$(field after_accept_ms)" "$(field path_rtt_ms)"
    if [ "$code" = 77 ]; then
        grep nat_lab: "$err" >&2
        rm -f "$err"
        exit 77
    fi
    [ "$result" = FAIL ] && grep 'nat_lab: FAIL' "$err" | head -3 >&2
    grep 'nat_lab: attempt' "$err" | head -3 >&2
done
rm -f "$err"
