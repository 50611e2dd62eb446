#!/usr/bin/env bash
# The NAT lab: a small internet on this one machine, built from network namespaces, veth
# pairs and iptables masquerading, with real ptpchat processes in it.
#
#   internet 203.0.113.0/24 (a bridge)
#     relay   203.0.113.10                      ptpchat relay
#     nat-a   203.0.113.20 | 192.0.2.1/25       cone NAT (MASQUERADE, port-preserving)
#       host-a              192.0.2.10          ptpchat run
#     nat-b   203.0.113.30 | 198.51.100.1/24    cone NAT
#       host-b              198.51.100.10       ptpchat run
#     nat-c   203.0.113.40 | 192.0.2.129/25     symmetric NAT (MASQUERADE --random-fully)
#       host-c              192.0.2.130         ptpchat run
#
# Every NAT drops unsolicited inbound packets, to itself and to its LAN (with
# NAT_FILTER=reject it answers them with a TCP RST or an ICMP port unreachable). Only address
# ranges reserved for documentation are used, inside namespaces: nothing leaves the machine.
#
# Usage: tests/nat_lab.sh PTPCHAT_BINARY [ATTEMPTS]
#   Checks reservation, private NAT status, CONNECT accept -> direct through both cone
#   NATs, deny -> no connection, and symmetric NAT -> messages still flow over the relay.
#   With ATTEMPTS (e.g. 50) it then measures hole punching: that many connect/disconnect
#   rounds between A and B, printing the success rate and the median time to direct.
# Exit 0 when every check passed, 1 when one failed, 77 when the lab cannot be built here.
# Namespaces and processes are removed on every exit path.

set -u
BIN=${1:?usage: nat_lab.sh PTPCHAT_BINARY [ATTEMPTS]}
ATTEMPTS=${2:-0}
# NAT_FILTER=reject: the routers answer unsolicited packets (RST, ICMP port unreachable)
# instead of dropping them.
FILTER=${NAT_FILTER:-drop}
# NAT_BOOTSTRAP=tcp: users know only the relay's TCP address (as a user given one
# `--bootstrap` line would), so no QUIC connection shows them their QUIC address.
BOOTSTRAP=${NAT_BOOTSTRAP:-both}
# NAT_TRANSPORT=tcp|quic: the users listen on (and know the relay by) that transport only.
TRANSPORT=${NAT_TRANSPORT:-both}
P="ptl$$"            # namespace prefix, unique per run
WORK=$(mktemp -d /tmp/ptpchat-natlab.XXXXXX)
PIDS=()

log() { echo "nat_lab: $*" >&2; }
fail() { log "FAIL: $*"; FAILED=1; }
FAILED=0

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    for ns in i r na a nb b nc c; do ip netns del "$P$ns" 2>/dev/null; done
    if [ "$FAILED" != 0 ]; then
        for f in "$WORK"/*.log; do log "---- $(basename "$f")"; tail -n 30 "$f" >&2; done
    fi
    if [ -n "${NAT_LAB_KEEP:-}" ]; then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

for tool in ip iptables conntrack; do
    command -v "$tool" >/dev/null || { log "SKIP: $tool is not installed"; exit 77; }
done
if [ "$(id -u)" != 0 ] || ! ip netns add "${P}probe" 2>/dev/null; then
    log "SKIP: cannot create network namespaces (needs root)"
    exit 77
fi
ip netns del "${P}probe"

ns() { local n=$1; shift; ip netns exec "$P$n" "$@"; }
# Daemons are started with `ip netns exec` itself in the background, not through `ns`: a
# function in the background is a subshell, and killing its pid would leave the daemon
# (the subshell's child) running after the lab is gone. `ip` execs the daemon, so $! is
# the daemon's own pid.

# ---- the network ----
for n in i r na a nb b nc c; do
    ip netns add "$P$n"
    ns "$n" ip link set lo up
done
ns i ip link add br0 type bridge
ns i ip link set br0 up

# wan NAME NS ADDR: a host on the internet bridge.
wan() {
    ip -n "${P}i" link add "$1" type veth peer name wan netns "$P$2"
    ip -n "${P}i" link set "$1" master br0 up
    ns "$2" ip addr add "$3/24" dev wan
    ns "$2" ip link set wan up
}
wan vr r 203.0.113.10
wan vna na 203.0.113.20
wan vnb nb 203.0.113.30
wan vnc nc 203.0.113.40

# nat ROUTER HOST LAN_ROUTER_ADDR/LEN HOST_ADDR [symmetric]
nat() {
    local router=$1 host=$2 raddr=$3 haddr=$4 mode=${5:-cone}
    ip -n "$P$router" link add lan type veth peer name eth0 netns "$P$host"
    ns "$router" ip addr add "$raddr" dev lan
    ns "$router" ip link set lan up
    ns "$host" ip addr add "$haddr/${raddr#*/}" dev eth0
    ns "$host" ip link set eth0 up
    ns "$host" ip route add default via "${raddr%/*}"
    ns "$router" sysctl -qw net.ipv4.ip_forward=1
    local random=()
    [ "$mode" = symmetric ] && random=(--random-fully)
    if ! ns "$router" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE "${random[@]}"; then
        log "SKIP: this kernel or iptables cannot masquerade (nf_nat)"
        exit 77
    fi
    ns "$router" iptables -A FORWARD -i lan -o wan -j ACCEPT
    ns "$router" iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    ns "$router" iptables -P FORWARD DROP
    ns "$router" iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    if [ "$FILTER" = reject ]; then
        # Many home routers answer what they do not expect: a TCP RST, an ICMP error.
        for chain in INPUT FORWARD; do
            ns "$router" iptables -A "$chain" -i wan -p tcp -j REJECT --reject-with tcp-reset
            ns "$router" iptables -A "$chain" -i wan -j REJECT --reject-with icmp-port-unreachable
        done
    else
        ns "$router" iptables -A INPUT -i wan -j DROP
    fi
}
nat na a 192.0.2.1/25 192.0.2.10
nat nb b 198.51.100.1/24 198.51.100.10
nat nc c 192.0.2.129/25 192.0.2.130 symmetric

# ---- the nodes ----
export RUST_LOG=${RUST_LOG:-info}
LISTEN=(--listen /ip4/0.0.0.0/tcp/4001 --listen /ip4/0.0.0.0/udp/4001/quic-v1)

# The measured rounds open two circuits each, more than the default burst allows.
ip netns exec "${P}r" "$BIN" --home "$WORK/relay" relay "${LISTEN[@]}" --private-ips --circuit-burst 500 \
    >"$WORK/relay.out" 2>"$WORK/relay.log" &
PIDS+=($!)
RELAY_TCP=""
for _ in $(seq 100); do
    RELAY_TCP=$(grep -m1 '^/ip4/203.0.113.10/tcp/' "$WORK/relay.out" 2>/dev/null)
    RELAY_QUIC=$(grep -m1 '^/ip4/203.0.113.10/udp/' "$WORK/relay.out" 2>/dev/null)
    [ -n "$RELAY_TCP" ] && [ -n "$RELAY_QUIC" ] && break
    sleep 0.1
done
[ -n "$RELAY_TCP" ] || { fail "the relay printed no address"; exit 1; }
log "relay at $RELAY_TCP"

user() { # NAME NS POLICY [PORT]
    local port=${4:-4001}
    local listen=(--listen "/ip4/0.0.0.0/tcp/$port" --listen "/ip4/0.0.0.0/udp/$port/quic-v1")
    local boot=(--bootstrap "$RELAY_TCP" --bootstrap "$RELAY_QUIC")
    [ "$BOOTSTRAP" = tcp ] && boot=(--bootstrap "$RELAY_TCP")
    case $TRANSPORT in
        tcp) listen=(--listen "/ip4/0.0.0.0/tcp/$port"); boot=(--bootstrap "$RELAY_TCP") ;;
        quic) listen=(--listen "/ip4/0.0.0.0/udp/$port/quic-v1"); boot=(--bootstrap "$RELAY_QUIC") ;;
    esac
    ip netns exec "$P$2" "$BIN" --home "$WORK/$1" run "${listen[@]}" --no-mdns --private-ips \
        "${boot[@]}" --accept-connect "$3" \
        >/dev/null 2>"$WORK/$1.log" &
    PIDS+=($!)
}
cli() { local home=$1; shift; "$BIN" --home "$WORK/$home" "$@"; }

user a a all
user b b all
user c c all
user d b none 4002   # a second host behind NAT-B whose policy refuses everybody
user e b ask 4003    # a third host behind NAT-B whose user answers each request

# wait_for SECONDS DESCRIPTION COMMAND...: polls until COMMAND succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ]; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    fail "timed out after ${secs}s waiting for $what"
    return 1
}
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.readline())$1)"; }
has_reservation() { cli "$1" status --json | json_field '["relays"]' | grep -q 203.0.113.10; }
is_private() { [ "$(cli "$1" status --json | json_field '["nat"]')" = private ]; }

for u in a b c d e; do
    wait_for 30 "$u's relay reservation" has_reservation "$u" || exit 1
done
log "reservations: a, b, c hold one on the relay"
for u in a b c; do
    wait_for 60 "AutoNAT to find $u private" is_private "$u" || exit 1
done
log "AutoNAT: a, b and c are private"

uuid() { cli "$1" id --json | json_field '["uuid"]'; }
A=$(uuid a); B=$(uuid b); C=$(uuid c); D=$(uuid d); E=$(uuid e)

# Each document names only the relay circuit (the host's own IP is nowhere in it).
doc_is_circuit_only() {
    local doc; doc=$(cli a whois "$1" --json) || return 1
    echo "$doc" | grep -q p2p-circuit && ! echo "$doc" | grep -qE '192\.0\.2\.|198\.51\.100\.|203\.0\.113\.(20|30|40)'
}
wait_for 30 "B's document with only a circuit address" doc_is_circuit_only "$B" || exit 1
wait_for 30 "C's document with only a circuit address" doc_is_circuit_only "$C" || exit 1
log "documents: only circuit addresses are published"

# A direct message to C, behind the symmetric NAT, goes over the relay.
out=$(cli a send "$C" "through the relay" --timeout 20 --json)
[ "$(echo "$out" | json_field '["status"]')" = delivered ] || fail "message to C not delivered: $out"
cli c recv --json | grep -q "through the relay" || fail "C did not store the message"
log "message: A -> C (symmetric NAT) delivered over the relay"

# CONNECT A -> B through both cone NATs: accepted, hole-punched, direct.
out=$(cli a connect "$B" --timeout 40 --json); code=$?
status=$(echo "$out" | json_field '["status"]')
if [ $code = 0 ] && [ "$status" = direct ]; then
    log "connect A -> B: direct at $(echo "$out" | json_field '["addr"]')"
    cli a peers --json | grep "$(cli b status --json | json_field '["peer_id"]')" | grep -q '"relayed":false' \
        || fail "peers does not show the connection to B as direct"
else
    fail "connect A -> B: exit $code, $out"
fi

# CONNECT A -> C (symmetric NAT): accepted, but only the relay works; messages still flow.
out=$(cli a connect "$C" --timeout 50 --json); code=$?
[ $code = 4 ] || fail "connect A -> C through a symmetric NAT: expected exit 4, got $code ($out)"
log "connect A -> C (symmetric NAT): $(echo "$out" | json_field '["status"]'), exit $code"
out=$(cli c send "$A" "still over the relay" --timeout 20 --json)
[ "$(echo "$out" | json_field '["status"]')" = delivered ] || fail "message C -> A not delivered: $out"

# Deny: D (behind NAT-B too) refuses everybody; A is told so and gets no address of D.
cli a disconnect "$B" >/dev/null 2>&1
sleep 1
ns na conntrack -D -d 203.0.113.30 >/dev/null 2>&1
ns nb conntrack -D -d 203.0.113.20 >/dev/null 2>&1
out=$(cli a connect "$D" --timeout 30 --json); code=$?
status=$(echo "$out" | json_field '["status"]')
[ $code = 4 ] && [ "$status" = denied ] || fail "connect to a denying D: exit $code, $out"
sleep 3
if cli a peers --json | grep "$(cli d status --json | json_field '["peer_id"]')" | grep -q '"relayed":false'; then
    fail "A holds a direct connection to D after D denied"
fi
# Nothing went between the two NATs: NAT-A holds no flow with NAT-B's address.
if ns na conntrack -L 2>/dev/null | grep -q 203.0.113.30; then
    fail "traffic between the NATs after a deny"
fi
log "deny: exit 4, no direct connection, no packet between the two NATs"

# Deny, then accept: E's user denies A's first CONNECT and accepts the next one. The circuit
# of the denied request stays gated; the accepted one must still punch through, and no
# sequence of answers may panic E (it once did, in libp2p's Either handler).
answer_next() { # HOME VERB: answers the oldest pending request
    local id; id=$(cli "$1" requests --json | head -1 | json_field '["request_id"]') || return 1
    [ -n "$id" ] && cli "$1" "$2" "$id"
}
E_PID=${PIDS[-1]}
for verb in deny accept; do
    cli a connect "$E" --timeout 40 --json >"$WORK/connect-e.out" &
    req=$!
    wait_for 20 "A's request to reach E" answer_next e "$verb"
    wait "$req"; code=$?
    out=$(cat "$WORK/connect-e.out")
    status=$(echo "$out" | json_field '["status"]' 2>/dev/null)
    case $verb in
        deny) [ $code = 4 ] && [ "$status" = denied ] || fail "denied connect to E: exit $code, $out" ;;
        accept) [ $code = 0 ] && [ "$status" = direct ] || fail "accepted connect to E after a deny: exit $code, $out" ;;
    esac
    sleep 1
done
kill -0 "$E_PID" 2>/dev/null || fail "E died during deny-then-accept"
grep -q "panicked" "$WORK/e.log" && fail "E panicked: $(grep -m1 -A2 panicked "$WORK/e.log")"
cli e status --json >/dev/null || fail "E does not answer after deny-then-accept"
log "deny then accept: denied, then direct; E alive"

# ---- hole punching, measured ----
if [ "$ATTEMPTS" -gt 0 ]; then
    ok=0; times=()
    for i in $(seq "$ATTEMPTS"); do
        cli a disconnect "$B" >/dev/null 2>&1
        sleep 2   # B answers one CONNECT per 2 s from one peer after a burst of 10
        # Forget the NAT mappings between A and B, so each round punches anew.
        ns na conntrack -D -d 203.0.113.30 >/dev/null 2>&1
        ns nb conntrack -D -d 203.0.113.20 >/dev/null 2>&1
        t0=$(date +%s%N)
        out=$(cli a connect "$B" --timeout 30 --json); code=$?
        t1=$(date +%s%N)
        if [ $code = 0 ]; then
            ok=$((ok + 1)); times+=($(( (t1 - t0) / 1000000 )))
        else
            log "attempt $i: $out"
        fi
    done
    median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}')
    echo "hole_punch attempts=$ATTEMPTS direct=$ok median_ms=$median"
fi

[ "$FAILED" = 0 ] && log "all checks passed"
exit "$FAILED"
