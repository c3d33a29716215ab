#!/usr/bin/env bash
# Runs the binaries of the cross-built packages under qemu-user, as they were packaged:
#
#   packaging/qemu-smoke.sh [--arch arm64|armhf]... [--packages DIR]
#
# For each architecture (default: arm64) it unpacks fieldbridge_*_ARCH.deb and
# fieldbridge-broker_*_ARCH.deb from DIR (default target/packages, as left by
# build-packages.sh), then runs `--version` of both programs, `fieldbridge check` on the
# installed configuration and on the full example, and the broker on its installed
# configuration (moved to a free port) until it listens; with mosquitto_pub and
# mosquitto_sub present, one message also goes through that broker.
#
# Needs qemu-user (qemu-aarch64, qemu-arm) and the target's C library under
# /usr/<gnu triple> (libc6-arm64-cross, libc6-armhf-cross).
set -euo pipefail

cd "$(dirname "$0")/.."
packages=$(pwd)/target/packages
arches=()

while [ $# -gt 0 ]; do
    case $1 in
        --arch) arches+=("${2:?--arch needs arm64 or armhf}"); shift 2 ;;
        --packages) packages=$(realpath "${2:?--packages needs a directory}"); shift 2 ;;
        -h|--help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ ${#arches[@]} -gt 0 ] || arches=(arm64)

fail() {
    echo "qemu-smoke: $*" >&2
    exit 1
}

scratch=$(mktemp -d)
broker_pid=
cleanup() {
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

smoke() {
    local arch=$1 qemu sysroot root
    case $arch in
        arm64) qemu=qemu-aarch64; sysroot=/usr/aarch64-linux-gnu ;;
        armhf) qemu=qemu-arm; sysroot=/usr/arm-linux-gnueabihf ;;
        *) fail "unsupported architecture $arch (arm64 or armhf)" ;;
    esac
    command -v "$qemu" >/dev/null || command -v "$qemu-static" >/dev/null ||
        fail "$qemu is missing (apt-get install qemu-user)"
    command -v "$qemu" >/dev/null || qemu=$qemu-static
    [ -d "$sysroot/lib" ] || fail "$sysroot is missing (apt-get install libc6-$arch-cross)"

    root=$scratch/$arch
    mkdir -p "$root"
    for package in fieldbridge fieldbridge-broker; do
        local debs=("$packages/${package}_"*"_$arch.deb")
        [ -e "${debs[0]}" ] || fail "no ${package}_*_$arch.deb in $packages (run build-packages.sh --arch $arch)"
        dpkg-deb --extract "${debs[-1]}" "$root"
    done
    # The loader of the cross sysroot must load that sysroot's libc: with libc6:ARCH also
    # installed (multiarch), it would otherwise find /lib/<triple>/libc.so.6, of another
    # build, and the mismatched pair hangs at the first thread.
    local run=("$qemu" -L "$sysroot" -E "LD_LIBRARY_PATH=$sysroot/lib")

    echo "==> $arch: $(readelf --file-header "$root/usr/bin/fieldbridge" | sed -n 's/^ *Machine: *//p')"
    "${run[@]}" "$root/usr/bin/fieldbridge" --version
    "${run[@]}" "$root/usr/bin/fieldbridge-broker" --version
    "${run[@]}" "$root/usr/bin/fieldbridge" check --config "$root/etc/fieldbridge/gateway.yaml" | tail -n 1
    BOILER_1_TOKEN=t HEAT_METER_1_TOKEN=t PLC_1_TOKEN=t FLUE_1_TOKEN=t GPS_1_TOKEN=t DOSING_1_TOKEN=t \
        "${run[@]}" "$root/usr/bin/fieldbridge" check \
        --config "$root/usr/share/doc/fieldbridge/examples/gateway.example.yaml" | tail -n 1

    sed -e 's/"127.0.0.1:1883"/"127.0.0.1:0"/' \
        -e "s#/var/lib/fieldbridge-broker/#$root/#" \
        "$root/etc/fieldbridge-broker/broker.yaml" >"$root/broker.yaml"
    local log=$root/broker.log
    : >"$log"
    "${run[@]}" "$root/usr/bin/fieldbridge-broker" --config "$root/broker.yaml" 2>"$log" &
    broker_pid=$!
    local address=
    for _ in $(seq 120); do
        address=$(sed -n 's/^listening on //p' "$log")
        [ -n "$address" ] && break
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.5
    done
    [ -n "$address" ] || fail "the $arch broker did not start:
$(cat "$log")"
    echo "$arch broker listening on $address"
    if command -v mosquitto_sub >/dev/null && command -v mosquitto_pub >/dev/null; then
        local port=${address##*:} received
        mosquitto_sub -h 127.0.0.1 -p "$port" -t smoke/test -C 1 -W 60 >"$root/received" &
        local sub_pid=$!
        for _ in $(seq 60); do
            mosquitto_pub -h 127.0.0.1 -p "$port" -t smoke/test -m "hello from $arch" -q 1
            [ -s "$root/received" ] && break
            sleep 1
        done
        wait "$sub_pid" || true
        received=$(cat "$root/received")
        [ "$received" = "hello from $arch" ] || fail "$arch broker round trip: got '$received'"
        echo "$arch broker round trip: $received"
    fi
    kill "$broker_pid"
    wait "$broker_pid" || true
    broker_pid=
    [ -f "$root/broker.db" ] || fail "the $arch broker wrote no database"
}

for arch in "${arches[@]}"; do
    smoke "$arch"
done
echo "qemu smoke test passed: ${arches[*]}"
