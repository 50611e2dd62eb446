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
#   Environment (tests/nat_matrix.sh runs the combinations):
#     NAT_FILTER=drop|reject, NAT_BOOTSTRAP=both|tcp, NAT_TRANSPORT=both|tcp|quic (below)
#     NAT_RTT_MS=N     N ms of round trip between the NATs: each router holds what comes
#                      in on its WAN side N/2 ms (NAT_DELAY_BIN, examples/nat_delay, holds
#                      NFQUEUEd packets: this kernel has no netem). The added round trip is
#                      measured and checked in each run.
#     NAT_PEER=b|c|p   whom the measured rounds punch to: b (cone NAT, the default), c
#                      (symmetric NAT: every round must end relayed, none may hang), or p (a
#                      public host, 203.0.113.50, that connects to A behind its NAT)
#     NAT_CHECKS=0     skip the checks after the reservations (for matrix cells that only
#                      measure)
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
RTT=${NAT_RTT_MS:-0}
DELAY_BIN=${NAT_DELAY_BIN:-}
PEER=${NAT_PEER:-b}
CHECKS=${NAT_CHECKS:-1}
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
    for ns in i r na a nb b nc c p; do ip netns del "$P$ns" 2>/dev/null; done
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
NSES=(i r na a nb b nc c)
[ "$PEER" = p ] && NSES+=(p)
for n in "${NSES[@]}"; do
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
[ "$PEER" = p ] && wan vp p 203.0.113.50

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
if [ "$PEER" = p ]; then   # a public host: no NAT, no filter
    ns p sysctl -qw net.ipv4.ip_forward=0
fi

# ---- path latency ----
# Each router (and the public host) holds what arrives on its WAN side RTT/2 ms, after the
# sender's NAT has mapped it and before its own conntrack sees it, as a long wire would: a
# round trip between two of them crosses two such holds. The relay holds nothing, so the
# round trip to it is RTT/2.
if [ "$RTT" -gt 0 ]; then
    [ -x "$DELAY_BIN" ] || {
        fail "NAT_RTT_MS needs NAT_DELAY_BIN, the latency helper (cargo build --example nat_delay): '$DELAY_BIN'"
        exit 1
    }
    delayed=(na nb nc)
    [ "$PEER" = p ] && delayed+=(p)
    for n in "${delayed[@]}"; do
        ip netns exec "$P$n" "$DELAY_BIN" 0 $((RTT / 2)) 2>"$WORK/delay-$n.log" &
        PIDS+=($!)
        for _ in $(seq 50); do grep -q ready "$WORK/delay-$n.log" && break; sleep 0.1; done
        if ! grep -q ready "$WORK/delay-$n.log"; then
            log "SKIP: no NFQUEUE here (nfnetlink_queue): $(cat "$WORK/delay-$n.log")"
            exit 77
        fi
        ns "$n" iptables -t raw -A PREROUTING -i wan -j NFQUEUE --queue-num 0 \
            || { log "SKIP: iptables has no NFQUEUE target"; exit 77; }
    done
fi

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

# connect_ms NS: the median of 5 TCP handshakes from NS to the relay, in ms (one hold, RTT/2).
connect_ms() {
    ns "$1" python3 -c '
import socket, statistics, time
ts = []
for _ in range(5):
    t = time.perf_counter()
    socket.create_connection(("203.0.113.10", 4001), timeout=5).close()
    ts.append((time.perf_counter() - t) * 1000)
print(round(statistics.median(ts), 1))'
}
ra=$(connect_ms a); rb=$(connect_ms b)
PATH_RTT=$(python3 -c "print(round($ra + $rb, 1))")
log "path: A-B round trip ${PATH_RTT} ms (wanted $RTT; A-relay $ra ms, B-relay $rb ms)"
if [ "$RTT" -gt 0 ] && python3 -c "import sys; sys.exit(not $PATH_RTT < 0.9 * $RTT)"; then
    fail "the path's round trip is ${PATH_RTT} ms, not the $RTT ms asked for"
    exit 1
fi

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
E_PID=${PIDS[-1]}
[ "$PEER" = p ] && user p p all   # the public host

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
if [ "$PEER" = p ]; then
    is_public() { [ "$(cli p status --json | json_field '["nat"]')" = public ]; }
    wait_for 60 "AutoNAT to find p public" is_public || exit 1
    log "AutoNAT: p is public"
fi

uuid() { cli "$1" id --json | json_field '["uuid"]'; }
A=$(uuid a); B=$(uuid b); C=$(uuid c); D=$(uuid d); E=$(uuid e)

if [ "$CHECKS" != 0 ]; then

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
t0=$(date +%s%N)
out=$(cli a connect "$C" --timeout 50 --json); code=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ $code = 4 ] || fail "connect A -> C through a symmetric NAT: expected exit 4, got $code ($out)"
log "connect A -> C (symmetric NAT): $(echo "$out" | json_field '["status"]'), exit $code, after $ms ms"
# Where the NATs answer and the users have TCP alone, each failed dial fails at once (a
# RST): A counts them, makes a second attempt, and says relayed within seconds rather than
# after the 30 s limit. (A QUIC dial is not ended by an ICMP error: it fails after its 5 s
# handshake timeout, so with QUIC the rounds outlast the limit.)
if [ "$FILTER" = reject ] && [ "$TRANSPORT" = tcp ] && [ "$ms" -gt 15000 ]; then
    fail "connect A -> C through a rejecting symmetric NAT took $ms ms to say relayed"
fi
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
    [ -n "$id" ] && cli "$1" "$2" "$id" >/dev/null
}
has_request() { cli "$1" requests --json | grep -q request_id; }
for verb in deny accept; do
    cli a connect "$E" --timeout 40 --json >"$WORK/connect-e.out" &
    req=$!
    # The user takes a while to answer: the accept comes 3 s after the request.
    wait_for 20 "A's request to reach E" has_request e
    sleep 3
    answer_next e "$verb" || fail "E could not $verb A's request"
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
fi   # CHECKS

# ---- hole punching, measured ----
# Each round: hang up, forget the NAT mappings between the two (so each round punches
# anew), connect, and sort the outcome: direct, relayed (exit 4, the relay still carries
# the messages) or anything else; a connect that does not end within its timeout (plus a
# margin) is a hang. For the target of each CONNECT (the side that drives DCUtR), the
# rounds it needed come from its `status --json` punches: first_attempt counts the direct
# outcomes its first round brought.
if [ "$ATTEMPTS" -gt 0 ]; then
    case $PEER in
        b) from=a; to=b; to_id=$B; routers=(na nb) ;;
        c) from=a; to=c; to_id=$C; routers=(na nc) ;;
        p) from=p; to=a; to_id=$A; routers=(na) ;;
        *) fail "NAT_PEER is b, c or p, not $PEER"; exit 1 ;;
    esac
    retries() { cli "$to" status --json | json_field '["punches"]["retries"]'; }
    ok=0; relayed=0; other=0; hangs=0; first=0; times=(); after=()
    for i in $(seq "$ATTEMPTS"); do
        cli "$from" disconnect "$to_id" >/dev/null 2>&1
        sleep 2   # the target answers one CONNECT per 2 s from one peer after a burst of 10
        for r in "${routers[@]}"; do
            ns "$r" conntrack -D -d 203.0.113.20 >/dev/null 2>&1
            ns "$r" conntrack -D -d 203.0.113.30 >/dev/null 2>&1
            ns "$r" conntrack -D -d 203.0.113.40 >/dev/null 2>&1
            ns "$r" conntrack -D -d 203.0.113.50 >/dev/null 2>&1
        done
        r0=$(retries)
        t0=$(date +%s%N)
        out=$(cli "$from" connect "$to_id" --timeout 45 --json); code=$?
        t1=$(date +%s%N)
        ms=$(( (t1 - t0) / 1000000 ))
        status=$(echo "$out" | json_field '["status"]' 2>/dev/null)
        [ "$ms" -gt 50000 ] && { hangs=$((hangs + 1)); log "attempt $i: hung for $ms ms"; }
        if [ $code = 0 ] && [ "$status" = direct ]; then
            ok=$((ok + 1)); times+=("$ms")
            after+=("$(cli "$from" status --json | json_field '["punches"]["last_direct_ms"]')")
            sleep 0.5
            [ "$(retries)" = "$r0" ] && first=$((first + 1))
        elif [ $code = 4 ] && [ "$status" = relayed ]; then
            relayed=$((relayed + 1))
            [ "$PEER" = c ] || log "attempt $i: relayed after $ms ms"
        else
            other=$((other + 1)); log "attempt $i: exit $code after $ms ms: $out"
        fi
    done
    med() { printf '%s\n' "$@" | grep -E '^[0-9]+$' | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
    median=$(med "${times[@]}"); after_accept=$(med "${after[@]}")
    echo "hole_punch peer=$PEER attempts=$ATTEMPTS direct=$ok first_attempt=$first relayed=$relayed other=$other hangs=$hangs median_ms=$median after_accept_ms=$after_accept path_rtt_ms=$PATH_RTT"
    if [ "$PEER" = c ] && [ $((relayed)) != "$ATTEMPTS" ]; then
        fail "through the symmetric NAT every round must end relayed: $relayed of $ATTEMPTS did"
    fi
    [ "$hangs" = 0 ] || fail "$hangs connects hung"
fi

[ "$FAILED" = 0 ] && log "all checks passed"
exit "$FAILED"
