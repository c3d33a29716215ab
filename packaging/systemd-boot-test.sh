#!/usr/bin/env bash
# Installs the amd64 packages in Debian bookworm booted under a real systemd (systemd-nspawn
# --boot) and checks them as services:
#
#   packaging/systemd-boot-test.sh [--root DIR] [--packages DIR] [--results DIR] [--timeout SECONDS]
#
#   --root DIR       the container's root file system: debootstrapped (bookworm, minbase with
#                    systemd, dbus, mosquitto-clients and socat) when DIR holds none yet, reused
#                    as it is otherwise. Every run boots a throwaway copy of it.
#                    Default /var/tmp/fieldbridge-boot-root.
#   --packages DIR   take fieldbridge_*_amd64.deb and fieldbridge-broker_*_amd64.deb from DIR
#                    instead of building them with `build-packages.sh --arch amd64`.
#   --results DIR    where checks.txt, the journal and the console log go (default: a new
#                    directory under /var/tmp).
#   --timeout S      stop the container after S seconds (default 600).
#
# In the container, a oneshot unit installs both packages with dpkg and checks: both units
# active (Type=notify readiness) as their users, the gateway with the dialout group; an MQTT
# publish through the broker; the programs' log priorities in the journal; `systemctl reload
# fieldbridge` refusing a broken gateway.yaml without stopping, then applying a fixed one;
# NRestarts 0 and the watchdog fed after more than WatchdogSec; the gateway, with
# PrivateUsers=yes, opening device nodes owned by root:dialout 0660 through its dialout group
# (a ttyS node and a pty it reads lines from) while DevicePolicy=closed refuses a non-serial
# one; installing again (an upgrade) restarting both services and keeping a local
# configuration change and the state; `systemctl stop` within 5 s; `dpkg --purge` removing
# the state.
#
# Needs root, systemd-nspawn (package systemd-container), debootstrap and, for the first
# debootstrap, deb.debian.org. The host need not run systemd. Exits 1 when a check fails.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
root=/var/tmp/fieldbridge-boot-root
packages=
results=
timeout=600

usage() {
    sed -n '2,28s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$(realpath -m "${2:?--root needs a directory}"); shift 2 ;;
        --packages) packages=$(realpath "${2:?--packages needs a directory}"); shift 2 ;;
        --results) results=$(realpath -m "${2:?--results needs a directory}"); shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

fail() {
    echo "systemd-boot-test: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, systemd-nspawn)"
command -v systemd-nspawn >/dev/null || fail "systemd-nspawn is missing: apt-get install systemd-container"

# A finished debootstrap leaves this file; a root without it is redone.
readonly ROOT_DONE=.fieldbridge-boot-root
readonly ROOT_PACKAGES=systemd,systemd-sysv,dbus,mosquitto-clients,socat,procps

prepare_root() {
    if [ -f "$root/$ROOT_DONE" ]; then
        echo "==> reusing the container root $root"
        return
    fi
    command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap"
    echo "==> debootstrap bookworm into $root"
    rm -rf "$root"
    local started=$SECONDS
    debootstrap --variant=minbase --include="$ROOT_PACKAGES" bookworm "$root" \
        http://deb.debian.org/debian >"$root.debootstrap.log" 2>&1 ||
        fail "debootstrap failed, see $root.debootstrap.log"
    echo fieldbridge-boot-test >"$root/etc/hostname"
    touch "$root/$ROOT_DONE"
    echo "==> debootstrap took $((SECONDS - started)) s"
}

find_deb() {
    local found
    found=$(find "$packages" -maxdepth 1 -name "$1_*_amd64.deb" | sort -V | tail -n 1)
    [ -n "$found" ] || fail "no $1_*_amd64.deb in $packages"
    echo "$found"
}

prepare_packages() {
    if [ -z "$packages" ]; then
        packages=$repo/target/packages
        echo "==> building the amd64 packages"
        local started=$SECONDS
        "$repo/packaging/build-packages.sh" --arch amd64 --out "$packages"
        echo "==> the package build took $((SECONDS - started)) s"
    fi
    gateway_deb=$(find_deb fieldbridge)
    broker_deb=$(find_deb fieldbridge-broker)
}

# The checks, run inside the container by fieldbridge-boot-test.service. Results go to
# /fieldbridge-test-results (the host's --results directory).
write_checks() {
    cat >"$1" <<'CHECKS'
#!/bin/bash
set -uo pipefail
results=/fieldbridge-test-results
checks=$results/checks.txt
conf=/etc/fieldbridge/gateway.yaml
failures=0

report() { # report PASS|FAIL|INFO NAME DETAIL
    printf '%-4s  %s: %s\n' "$1" "$2" "$3" | tee -a "$checks"
    if [ "$1" = FAIL ]; then failures=$((failures + 1)); fi
}
verdict() { # verdict NAME DETAIL COMMAND...: PASS when COMMAND succeeds
    local name=$1 detail=$2
    shift 2
    if "$@"; then report PASS "$name" "$detail"; else report FAIL "$name" "$detail"; fi
}
prop() { systemctl show --value -p "$2" "$1.service"; }
elapsed() { [ $((SECONDS - $1)) -ge "$2" ]; } # elapsed SINCE SECONDS
wait_until() { # wait_until SECONDS COMMAND...
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}
# A journal position for program_log. Not a cursor: journalctl --after-cursor with a match
# skips the first matching entry when the cursor's own entry does not match.
now() { date +@%s.%6N; }
# What the program itself logged (not systemd about it), since a time from `now`.
program_log() {
    local unit=$1 since=$2
    shift 2
    journalctl -q --no-pager "_SYSTEMD_UNIT=$unit.service" ${since:+"--since=$since"} "$@"
}
# (grep reads to the end: with pipefail, grep -q quitting early could fail journalctl.)
logged() { program_log "$1" "$2" -o cat | grep -- "$3" >/dev/null; }
settled() { [ "$(prop "$1" ActiveState)" != activating ] && [ "$(prop "$1" ActiveState)" != reloading ]; }
priorities() { # "N x PRIORITY=p" counts of a unit's own journal entries
    program_log "$1" "" -o export | sed -n 's/^PRIORITY=//p' | sort | uniq -c |
        awk '{printf "%s%s x priority %s", sep, $1, $2; sep=", "}'
}

echo "== fieldbridge package checks under $(systemctl --version | head -n 1)" | tee "$checks"
date +%s.%N >"$results/checks-started"

# 1. Installation and start.
if dpkg -i /root/packages/fieldbridge_*_amd64.deb /root/packages/fieldbridge-broker_*_amd64.deb \
    >"$results/dpkg-install.log" 2>&1; then
    report PASS install "dpkg -i of both packages"
else
    report FAIL install "dpkg -i failed: $(tail -n 3 "$results/dpkg-install.log" | tr '\n' ' ')"
fi
declare -A pid activated
for unit in fieldbridge fieldbridge-broker; do
    wait_until 60 settled "$unit"
    activated[$unit]=$SECONDS
    state=$(systemctl is-active "$unit")
    verdict "$unit started" "is-active $state, Type=$(prop "$unit" Type), UnitFileState $(prop "$unit" UnitFileState), status \"$(prop "$unit" StatusText)\"" \
        test "$state" = active -a "$(prop "$unit" Type)" = notify -a "$(prop "$unit" UnitFileState)" = enabled
    pid[$unit]=$(prop "$unit" MainPID)
    uid=$(awk '/^Uid:/ {print $2}' "/proc/${pid[$unit]}/status" 2>/dev/null)
    gids=$(awk '/^Groups:/ {$1 = ""; print}' "/proc/${pid[$unit]}/status" 2>/dev/null)
    names=$(for g in $gids; do getent group "$g" | cut -d: -f1; done | tr '\n' ' ')
    want_groups=true
    if [ "$unit" = fieldbridge ]; then
        want_groups=$(for g in $gids; do [ "$g" = "$(getent group dialout | cut -d: -f3)" ] && echo true; done)
    fi
    verdict "$unit user" "pid ${pid[$unit]} uid $uid ($(id -nu "$uid" 2>/dev/null)), supplementary groups: ${names:-none}" \
        test -n "$uid" -a "$uid" = "$(id -u "$unit")" -a "$want_groups" = true
    verdict "$unit state directory" "$(stat -c '%n %U:%G %a' "/var/lib/$unit" 2>&1)" \
        test "$(stat -c %U "/var/lib/$unit" 2>/dev/null)" = "$unit"
done

# 2. The broker takes an MQTT publish (retained, read back by a new subscriber).
message="boot-test $(date +%s)"
if mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -r -t fieldbridge/boot-test -m "$message" 2>"$results/mqtt.err"; then
    got=$(mosquitto_sub -h 127.0.0.1 -p 1883 -q 1 -t fieldbridge/boot-test -C 1 -W 10 2>>"$results/mqtt.err")
    verdict "broker MQTT" "QoS 1 retained publish by mosquitto_pub, read back: \"$got\"" test "$got" = "$message"
    mosquitto_pub -h 127.0.0.1 -p 1883 -r -n -t fieldbridge/boot-test 2>>"$results/mqtt.err"
else
    report FAIL "broker MQTT" "mosquitto_pub: $(cat "$results/mqtt.err")"
fi

# 3. Both programs log to the journal with priorities; the gateway warns about its missing
#    Modbus device at 127.0.0.1:502.
wait_until 30 logged fieldbridge "" . >/dev/null
wait_until 30 test -n "$(program_log fieldbridge "" -p warning -o cat | head -n 1)"
warning=$(program_log fieldbridge "" -p warning -o cat | head -n 1)
verdict "gateway journal" "$(priorities fieldbridge); first of -p warning: \"$warning\"" test -n "$warning"
info=$(program_log fieldbridge-broker "" -p info -o cat | head -n 1)
verdict "broker journal" "$(priorities fieldbridge-broker); first: \"$info\"" test -n "$info"

# 4. Reload: a broken file is refused and the gateway keeps running; a fixed one applies.
cp "$conf" "$results/gateway.yaml.installed"
reload_with() { # reload_with FILE_CONTENT EXPECTED_LOG
    local since
    since=$(now)
    printf '%s\n' "$1" >"$conf"
    systemctl reload fieldbridge || return 1
    wait_until 30 logged fieldbridge "$since" "$2" && wait_until 30 settled fieldbridge
    reloaded=$(program_log fieldbridge "$since" -o cat | grep -- "$2" | head -n 1)
}
if reload_with "$(sed 's/poll: 10s/poll: ten seconds/' "$results/gateway.yaml.installed")" "reload refused"; then :; fi
verdict "reload broken gateway.yaml" "is-active $(systemctl is-active fieldbridge), pid $(prop fieldbridge MainPID) (was ${pid[fieldbridge]}); journal: \"$reloaded\"" \
    test "$(systemctl is-active fieldbridge)" = active -a "$(prop fieldbridge MainPID)" = "${pid[fieldbridge]}" -a -n "$reloaded"
reloaded=
if reload_with "$(sed 's/poll: 10s/poll: 5s/' "$results/gateway.yaml.installed")" "configuration reloaded"; then :; fi
verdict "reload fixed gateway.yaml" "is-active $(systemctl is-active fieldbridge), same pid; journal: \"$reloaded\"" \
    test "$(systemctl is-active fieldbridge)" = active -a "$(prop fieldbridge MainPID)" = "${pid[fieldbridge]}" -a -n "$reloaded"
since=$(now)
systemctl reload fieldbridge-broker || true
wait_until 30 logged fieldbridge-broker "$since" "configuration reloaded" && wait_until 30 settled fieldbridge-broker
reloaded=$(program_log fieldbridge-broker "$since" -o cat | grep -- "configuration reloaded" | head -n 1)
verdict "reload fieldbridge-broker" "is-active $(systemctl is-active fieldbridge-broker), pid $(prop fieldbridge-broker MainPID) (was ${pid[fieldbridge-broker]}); journal: \"$reloaded\"" \
    test "$(systemctl is-active fieldbridge-broker)" = active -a "$(prop fieldbridge-broker MainPID)" = "${pid[fieldbridge-broker]}" -a -n "$reloaded"

# 5. No restarts and a fed watchdog after more than WatchdogSec.
for unit in fieldbridge fieldbridge-broker; do
    watchdog_us=$(systemctl show --value -p WatchdogUSec "$unit.service")
    wait_until 120 elapsed "${activated[$unit]}" 45
    active_us=$(prop "$unit" ActiveEnterTimestampMonotonic)
    fed_us=$(prop "$unit" WatchdogTimestampMonotonic)
    fed_after=$(((fed_us - active_us) / 1000000))
    verdict "$unit watchdog" "after $((SECONDS - activated[$unit])) s: NRestarts $(prop "$unit" NRestarts), pid $(prop "$unit" MainPID) (was ${pid[$unit]}), WatchdogSec $watchdog_us, last fed ${fed_after} s after activation" \
        test "$(prop "$unit" NRestarts)" = 0 -a "$(prop "$unit" MainPID)" = "${pid[$unit]}" \
        -a "$(systemctl is-active "$unit")" = active -a "$fed_after" -ge 10
done

# 6. Serial devices owned by root:dialout 0660, opened by the gateway (SupplementaryGroups=
#    dialout, PrivateUsers=yes, DevicePolicy=closed). The kernel checks the file mode before
#    the device policy: EACCES means the group did not count, EPERM that the policy refused.
serial_config() { # serial_config PORT
    cat <<EOF
gateway:
  data_dir: /var/lib/fieldbridge
buses:
  - { name: serial-test, kind: serial-line, port: $1, baud: 9600 }
devices:
  - { id: serial-1, type: boot-test, bus: serial-test, event: reading, qos: 0, parser: { json: true } }
EOF
}
# Points the gateway at PORT (reload) and prints the first line it logged matching PATTERN.
serial_outcome() { # serial_outcome PORT PATTERN
    local since
    since=$(now)
    serial_config "$1" >"$conf"
    systemctl reload fieldbridge
    wait_until 30 logged fieldbridge "$since" "$2"
    program_log fieldbridge "$since" -o cat | grep -m 1 -- "$2"
}
# Opening DEVICE read-write as the fieldbridge user in a transient unit with PROPERTIES.
probe() { # probe DEVICE PROPERTY...
    local device=$1 properties=() property
    shift
    for property in "$@"; do properties+=(-p "$property"); done
    systemd-run --quiet --wait --pipe -p User=fieldbridge "${properties[@]}" /bin/bash -c \
        "if err=\$({ : <>$device; } 2>&1); then echo -n opened; else echo -n \"\${err##*: }\"; fi"
}
probes() { # probes DEVICE: the same open in the gateway's sandbox and without parts of it
    echo "open as fieldbridge with dialout, PrivateUsers=yes, DevicePolicy=closed: $(probe "$1" SupplementaryGroups=dialout PrivateUsers=yes DevicePolicy=closed 'DeviceAllow=char-ttyS rw');" \
        "with dialout, PrivateUsers=no: $(probe "$1" SupplementaryGroups=dialout PrivateUsers=no);" \
        "without dialout: $(probe "$1" PrivateUsers=no)"
}
serial_node() { # serial_node PATH MAJOR MINOR
    mknod -m 0660 "$1" c "$2" "$3" && chgrp dialout "$1"
}
open_failure='rror\|denied\|not permitted\|No such'

# A ttyS node (major 4, allowed by DeviceAllow=char-ttyS) without a UART behind it: ENXIO
# from the driver means both permission checks let the open through.
serial_node /dev/ttyS191 4 255
report INFO "serial ttyS node" "$(stat -c '%n %U:%G %a %t:%T' /dev/ttyS191); $(probes /dev/ttyS191)"
outcome=$(serial_outcome /dev/ttyS191 "port open\|$open_failure")
verdict "serial ttyS node (gateway)" "$outcome" grep -q 'port open\|No such device or address' <<<"$outcome"

# A device that is no serial port (/dev/net/tun's numbers) under a serial port's name: the
# device policy must refuse it.
serial_node /dev/ttyUSB191 10 200
report INFO "serial non-tty node" "$(stat -c '%n %U:%G %a %t:%T' /dev/ttyUSB191); $(probes /dev/ttyUSB191)"
outcome=$(serial_outcome /dev/ttyUSB191 "port open\|$open_failure")
verdict "serial non-tty node refused by DevicePolicy (gateway)" "$outcome" grep -q 'not permitted' <<<"$outcome"
rm -f /dev/ttyS191 /dev/ttyUSB191

# A pty fed JSON lines (DevicePolicy=closed always allows ptys): the gateway reads them.
socat -u STDIN PTY,link=/dev/ttyFB0,rawer < <(while sleep 1; do echo '{"marker": "serial-ok"}'; done) &
socat_pid=$!
wait_until 10 test -e /dev/ttyFB0
pts=$(readlink -f /dev/ttyFB0)
chgrp dialout "$pts" && chmod 0660 "$pts"
report INFO "serial pty" "$(stat -c '%n %U:%G %a' "$pts"); $(probes "$pts")"
outcome=$(serial_outcome /dev/ttyFB0 "serial-ok\|$open_failure")
verdict "serial pty read (gateway)" "$outcome" grep -q 'serial-ok' <<<"$outcome"
kill "$socat_pid"
cp "$results/gateway.yaml.installed" "$conf"
systemctl reload fieldbridge
verdict "gateway after the serial checks" "is-active $(systemctl is-active fieldbridge), NRestarts $(prop fieldbridge NRestarts), pid $(prop fieldbridge MainPID) (was ${pid[fieldbridge]})" \
    test "$(systemctl is-active fieldbridge)" = active -a "$(prop fieldbridge NRestarts)" = 0 -a "$(prop fieldbridge MainPID)" = "${pid[fieldbridge]}"

# 7. Installing the packages again (an upgrade to the same version): both services are
#    restarted, a local change to the configuration and the state are kept.
echo "# local change" >>"$conf"
touch /var/lib/fieldbridge/upgrade-marker /var/lib/fieldbridge-broker/upgrade-marker
for unit in fieldbridge fieldbridge-broker; do pid[$unit]=$(prop "$unit" MainPID); done
if dpkg -i /root/packages/fieldbridge_*_amd64.deb /root/packages/fieldbridge-broker_*_amd64.deb \
    >"$results/dpkg-upgrade.log" 2>&1; then
    for unit in fieldbridge fieldbridge-broker; do
        wait_until 30 settled "$unit"
        verdict "$unit upgrade" "is-active $(systemctl is-active "$unit"), pid $(prop "$unit" MainPID) (was ${pid[$unit]}), state kept: $(ls "/var/lib/$unit/upgrade-marker" 2>&1)" \
            test "$(systemctl is-active "$unit")" = active -a "$(prop "$unit" MainPID)" != "${pid[$unit]}" \
            -a -e "/var/lib/$unit/upgrade-marker"
    done
    verdict "upgrade keeps the configuration" "last line of gateway.yaml: \"$(tail -n 1 "$conf")\"" \
        test "$(tail -n 1 "$conf")" = "# local change"
else
    report FAIL upgrade "dpkg -i again failed: $(tail -n 3 "$results/dpkg-upgrade.log" | tr '\n' ' ')"
fi

# 8. Stopping takes less than 5 s; purging removes the state.
for unit in fieldbridge fieldbridge-broker; do
    started=$(date +%s%N)
    systemctl stop "$unit"
    ms=$((($(date +%s%N) - started) / 1000000))
    verdict "$unit stop" "${ms} ms, Result $(prop "$unit" Result), main process $(prop "$unit" ExecMainCode)/$(prop "$unit" ExecMainStatus) (1/0: exited with 0)" \
        test "$ms" -lt 5000 -a "$(prop "$unit" Result)" = success
done
if dpkg --purge fieldbridge fieldbridge-broker >"$results/dpkg-purge.log" 2>&1; then
    left=$(ls -d /var/lib/fieldbridge /var/lib/fieldbridge-broker /etc/fieldbridge /etc/fieldbridge-broker \
        /lib/systemd/system/fieldbridge.service /lib/systemd/system/fieldbridge-broker.service 2>/dev/null | tr '\n' ' ')
    verdict purge "left behind: ${left:-nothing}; users kept: $(getent passwd fieldbridge fieldbridge-broker | cut -d: -f1 | tr '\n' ' ')" test -z "$left"
else
    report FAIL purge "dpkg --purge failed: $(tail -n 3 "$results/dpkg-purge.log" | tr '\n' ' ')"
fi

journalctl -b --no-pager -o short-precise >"$results/journal.txt"
echo "$failures" >"$results/failures"
echo "== $failures failed" | tee -a "$checks"
[ "$failures" = 0 ]
CHECKS
    chmod 0755 "$1"
}

write_unit() {
    cat >"$1" <<'UNIT'
[Unit]
Description=fieldbridge package checks
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/fieldbridge-boot-checks
StandardOutput=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
UNIT
}

prepare_root
prepare_packages

[ -n "$results" ] || results=$(mktemp -d /var/tmp/fieldbridge-boot-results.XXXXXX)
mkdir -p "$results"
rm -f "$results/checks.txt" "$results/failures" "$results/checks-started"

run_root=$(mktemp -d "$root.run.XXXXXX")
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ]; then
        kill "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    rm -rf --one-file-system "$run_root"
}
trap cleanup EXIT

echo "==> copying the root to $run_root"
cp -a --reflink=auto "$root/." "$run_root/"
mkdir -p "$run_root/root/packages" "$run_root/fieldbridge-test-results"
cp "$gateway_deb" "$broker_deb" "$run_root/root/packages/"
write_checks "$run_root/usr/local/sbin/fieldbridge-boot-checks"
write_unit "$run_root/etc/systemd/system/fieldbridge-boot-test.service"
ln -sf /etc/systemd/system/fieldbridge-boot-test.service \
    "$run_root/etc/systemd/system/multi-user.target.wants/fieldbridge-boot-test.service"

echo "==> booting $(basename "$gateway_deb") and $(basename "$broker_deb") (console: $results/console.log)"
booted=$(date +%s.%N)
# --keep-unit and --register=no: no systemd or machined needed on the host.
# --private-network: the container's loopback is its own (ports 502 and 1883).
# The unified cgroup hierarchy (also on hosts with the hybrid one) and the bpf() system call
# let the container's systemd enforce DevicePolicy= with cgroup device programs.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 timeout --kill-after=30 "$timeout" systemd-nspawn --quiet \
    --keep-unit --register=no --private-network --system-call-filter=bpf \
    --machine=fieldbridge-boot-test --directory="$run_root" \
    --bind="$results:/fieldbridge-test-results" --console=read-only --boot \
    >"$results/console.log" 2>&1 &
nspawn_pid=$!
touch "$results/checks.txt"
tail --pid="$nspawn_pid" -n +1 -F "$results/checks.txt" 2>/dev/null || true
nspawn_status=0
wait "$nspawn_pid" || nspawn_status=$?
nspawn_pid=

if [ -f "$results/checks-started" ]; then
    echo "==> boot to the first check: $(awk -v a="$booted" '{printf "%.1f", $1 - a}' "$results/checks-started") s;" \
        "whole run $(awk -v a="$booted" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}') s"
fi
echo "==> results in $results (checks.txt, journal.txt, console.log)"
[ "$nspawn_status" != 124 ] || fail "the container did not finish within $timeout s"
[ -f "$results/failures" ] || fail "the checks did not finish (container exit status $nspawn_status), see $results/console.log"
[ "$(cat "$results/failures")" = 0 ] || fail "$(cat "$results/failures") check(s) failed"
echo "==> all checks passed"
