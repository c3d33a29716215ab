#!/usr/bin/env bash
# Runs the same load scenarios against fieldbridge-broker, Mosquitto and (when it is
# installed) rumqttd on this machine, and prints a table of the figures and the ratios.
#
#   broker/bench/compare.sh [--quick] [--repeat N] [--duration D] [--only SCENARIO]...
#                           [--protocols "3.1.1 5"]
#
# Every run gets a freshly started broker on a free loopback port; the brokers take turns
# within each round, in a different order each round, and the table shows the median over
# the rounds. The load generator (fieldbridge-bench) runs on the same cores as the broker.
# Raw results (one JSON object per run) go to $RESULTS (default:
# $CARGO_TARGET_DIR/broker-bench-results.jsonl). Scenarios: fanin-q0 fanin-q1 fanout-q0
# latency-fanin latency-fanout idle-10k, and with each broker's default limits
# fanin-q1-defaults and rate-q1 (QoS 1 fan-in at rising rates until a step loses a
# message or its p99 reaches 10 ms). --protocols runs every scenario in each MQTT
# version given (default 3.1.1), in the same round. BASELINE=PATH adds another
# fieldbridge-broker binary (an earlier build) as the broker "baseline", configured alike,
# to tell a regression from the machine's noise. See docs/BENCHMARKS.md.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target-broker}
repeat=3
duration=10s
warmup=1s
only=()
protocols=(3.1.1)
while [ $# -gt 0 ]; do
    case $1 in
        --quick) repeat=1; duration=3s ;;
        --repeat) repeat=$2; shift ;;
        --duration) duration=$2; shift ;;
        --only) only+=("$2"); shift ;;
        --protocols) read -r -a protocols <<< "$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

echo "== building release binaries (CARGO_TARGET_DIR=$target)" >&2
(cd "$root" && CARGO_TARGET_DIR=$target cargo build --release -q -p fieldbridge-broker -p fieldbridge-bench)
bench=$target/release/fieldbridge-bench
fieldbridge=$target/release/fieldbridge-broker
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
rumqttd=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")
[ -x "$mosquitto" ] || { echo "compare.sh: mosquitto not found (apt-get install -y mosquitto)" >&2; exit 1; }
brokers=(fieldbridge mosquitto)
if [ -n "${BASELINE:-}" ]; then
    [ -x "$BASELINE" ] || { echo "compare.sh: BASELINE=$BASELINE is not an executable" >&2; exit 1; }
    brokers+=(baseline)
fi
if [ -x "$rumqttd" ]; then
    brokers+=(rumqttd)
else
    echo "== rumqttd not installed (cargo install rumqttd): compared with Mosquitto only" >&2
fi

# 10,000 idle connections need as many descriptors in the broker and in the generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
    echo "compare.sh: ulimit -n is $(ulimit -n); 10,000 idle connections need more" >&2
    exit 1
fi

work=$(mktemp -d)
results=${RESULTS:-$target/broker-bench-results.jsonl}
: > "$results"
broker_pid=
cleanup() {
    if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The scenarios run with the brokers' default queue and in-flight limits.
with_defaults() { [[ $1 == *-defaults || $1 == rate-q1* ]]; }

# start_broker NAME SCENARIO: starts it on a free port; sets broker_pid and port.
start_broker() {
    port=$(free_port)
    case $1 in
        fieldbridge|baseline)
            cat > "$work/broker.yaml" <<YAML
listeners:
  - bind: 127.0.0.1:$port
allow_anonymous: true
limits:
  max_connections: 100000
  max_sessions: 100000
YAML
            if ! with_defaults "$2"; then
                cat >> "$work/broker.yaml" <<YAML
  max_inflight: 100
  max_queued_messages: 100000
  max_queued_bytes: 1GiB
YAML
            fi
            binary=$fieldbridge
            if [ "$1" = baseline ]; then binary=$BASELINE; fi
            "$binary" --config "$work/broker.yaml" 2> "$work/broker.log" &
            ;;
        mosquitto)
            cat > "$work/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
set_tcp_nodelay true
connection_messages false
log_dest stderr
log_type error
CONF
            if ! with_defaults "$2"; then
                printf 'max_inflight_messages 100\nmax_queued_messages 100000\n' >> "$work/mosquitto.conf"
            fi
            "$mosquitto" -c "$work/mosquitto.conf" 2> "$work/broker.log" &
            ;;
        rumqttd)
            sed "s/@PORT@/$port/" "$here/rumqttd.toml" > "$work/rumqttd.toml"
            "$rumqttd" --config "$work/rumqttd.toml" > "$work/broker.log" 2>&1 &
            ;;
    esac
    broker_pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "$broker_pid" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "compare.sh: $1 did not start; its log:" >&2
    cat "$work/broker.log" >&2
    exit 1
}

stop_broker() {
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=
}

# Peak resident memory of the broker so far, KiB.
broker_peak_rss() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$broker_pid/status"
}

# CPU seconds (user + system) the broker has used so far.
broker_cpu() {
    awk -v tck="$(getconf CLK_TCK)" '{ print ($14 + $15) / tck }' "/proc/$broker_pid/stat"
}

scenarios=(fanin-q0 fanin-q1 fanout-q0 latency-fanin latency-fanout idle-10k fanin-q1-defaults rate-q1)
# Total publish rates (msg/s over 100 publishers) of rate-q1's steps.
rate_steps=(10000 14000 20000 28000 40000 56000 80000 112000 160000 224000)
scenario_args() {
    case $1 in
        fanin-q0) echo "--publishers 100 --subscribers 1 --qos 0" ;;
        fanin-q1) echo "--publishers 100 --subscribers 1 --qos 1 --inflight 32" ;;
        fanout-q0) echo "--publishers 1 --subscribers 1000 --qos 0" ;;
        latency-fanin) echo "--publishers 10 --subscribers 1 --qos 0 --rate 1000" ;;
        latency-fanout) echo "--publishers 1 --subscribers 1000 --qos 0 --rate 20" ;;
        idle-10k) echo "--connections-only 10000 --rss-pid $broker_pid" ;;
        fanin-q1-defaults) echo "--publishers 100 --subscribers 1 --qos 1 --inflight 32" ;;
        rate-q1-*) echo "--publishers 100 --subscribers 1 --qos 1 --inflight 32 --rate $(( ${1#rate-q1-} / 100 ))" ;;
    esac
}
if [ ${#only[@]} -gt 0 ]; then scenarios=("${only[@]}"); fi

run_one() { # broker scenario round protocol
    start_broker "$1" "$2"
    local args cpu_before started line status=0
    args=$(scenario_args "$2")
    cpu_before=$(broker_cpu)
    started=$(date +%s.%N)
    # shellcheck disable=SC2086
    line=$("$bench" --port "$port" --protocol "$4" --duration "$duration" --warmup "$warmup" --drain-max 10s --json $args) || status=$?
    local cpu wall
    cpu=$(awk -v a="$cpu_before" -v b="$(broker_cpu)" 'BEGIN { print b - a }')
    local peak_rss
    peak_rss=$(broker_peak_rss)
    wall=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    stop_broker
    if [ -z "$line" ]; then
        echo "   $1 $2: the generator failed (exit $status)" >&2
        line='{}'
    fi
    echo "$line" | jq -c --arg broker "$1" --arg scenario "$2" --argjson round "$3" --arg protocol "$4" \
        --argjson cpu "$cpu" --argjson wall "$wall" --argjson status "$status" --argjson rss "$peak_rss" \
        '. + {broker_name: $broker, scenario: $scenario, round: $round, protocol: $protocol, broker_cpu_secs: $cpu, broker_peak_rss_kib: $rss, wall_secs: $wall, exit: $status}' \
        >> "$results"
    tail -n 1 "$results" | jq -r '"   \(.broker_name) \(.scenario) MQTT \(.protocol): " +
        (if .kib_per_connection then "\(.kib_per_connection | floor) KiB/conn, \(.connections_open) open"
         else "received \(.received_per_sec // 0 | floor)/s, sent \(.sent_per_sec // 0 | floor)/s, lost \(.lost_total // "?")" +
              (if .latency then ", p99 \(.latency.p99_us) µs" else "" end) end) +
        ", broker CPU \(.broker_cpu_secs)s" + (if .first_failure then ", failure: \(.first_failure)" else "" end)' >&2
}

echo "== $(nproc) cores, $(uname -r); ${#brokers[@]} brokers x ${#scenarios[@]} scenarios x MQTT ${protocols[*]} x $repeat rounds, $duration each" >&2
for round in $(seq "$repeat"); do
    # Rotate the order of the brokers each round so neither always runs first.
    order=("${brokers[@]:$(( (round - 1) % ${#brokers[@]} ))}" "${brokers[@]:0:$(( (round - 1) % ${#brokers[@]} ))}")
    for scenario in "${scenarios[@]}"; do
        for protocol in "${protocols[@]}"; do
            for broker in "${order[@]}"; do
                echo "-- round $round: $scenario on $broker, MQTT $protocol" >&2
                if [ "$scenario" != rate-q1 ]; then
                    run_one "$broker" "$scenario" "$round" "$protocol"
                    continue
                fi
                # Up the rate until a step loses a message or its p99 reaches 10 ms.
                for rate in "${rate_steps[@]}"; do
                    run_one "$broker" "rate-q1-$rate" "$round" "$protocol"
                    tail -n 1 "$results" | jq -e '(.lost_total // 1) + (.undelivered_total // 1) == 0
                        and (.latency.p99_us // 1e9) < 10000 and .exit == 0' > /dev/null || break
                done
            done
        done
    done
done

python3 "$here/summarize.py" "$results"
echo "raw results: $results" >&2
