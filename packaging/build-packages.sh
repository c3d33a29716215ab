#!/usr/bin/env bash
# Builds the fieldbridge and fieldbridge-broker Debian packages for amd64, arm64 and armhf,
# without containers.
#
#   packaging/build-packages.sh [--arch amd64|arm64|armhf]... [--out DIR] [--install-deps]
#
# amd64 (on an amd64 host) is built with the default toolchain into target/release.
# arm64 and armhf are cross-compiled with Debian's rustc (package rustc-web, whose
# standard library comes per architecture as libstd-rust-web-dev:ARCH) and Debian's cross
# gcc as linker, into target/cross so they never invalidate the native build. Where the
# prebuilt standard library of an architecture cannot be installed, the standard library
# is compiled from Debian's source of the same rustc (package rust-web-src, cargo's
# -Zbuild-std). With --install-deps the script installs what a cross build needs through
# apt (as root).
#
# Every binary is checked for its architecture and for the glibc symbol versions it needs:
# nothing newer than 2.36, the glibc of Raspberry Pi OS / Debian bookworm. The packages
# land in target/packages (or --out DIR).
set -euo pipefail

readonly GLIBC_FLOOR=2.36
readonly PACKAGES=(fieldbridge fieldbridge-broker)
readonly DEBIAN_RUSTC=/usr/bin/rustc
readonly DEBIAN_RUST_SRC=/usr/lib/rustlib/src/rust/library

cd "$(dirname "$0")/.."
root=$(pwd)
out=$root/target/packages
arches=()
install_deps=false

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --arch) arches+=("${2:?--arch needs amd64, arm64 or armhf}"); shift 2 ;;
        --out) out=$(realpath -m "${2:?--out needs a directory}"); shift 2 ;;
        --install-deps) install_deps=true; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64 armhf)

fail() {
    echo "build-packages: $*" >&2
    exit 1
}

rust_triple() {
    case $1 in
        amd64) echo x86_64-unknown-linux-gnu ;;
        arm64) echo aarch64-unknown-linux-gnu ;;
        armhf) echo armv7-unknown-linux-gnueabihf ;;
        *) fail "unsupported architecture $1 (amd64, arm64 or armhf)" ;;
    esac
}

gnu_triple() {
    case $1 in
        amd64) echo x86_64-linux-gnu ;;
        arm64) echo aarch64-linux-gnu ;;
        armhf) echo arm-linux-gnueabihf ;;
    esac
}

elf_machine() {
    case $1 in
        amd64) echo 'X86-64' ;;
        arm64) echo 'AArch64' ;;
        armhf) echo 'ARM' ;;
    esac
}

cross_packages() {
    echo "rustc-web libstd-rust-web-dev:$1 gcc-$(gnu_triple "$1") libc6-dev-$1-cross"
}

# How the standard library for a target comes: `prebuilt` (libstd-rust-web-dev:ARCH),
# `source` (built from rust-web-src), or nothing when neither is installed.
std_source() {
    local triple=$1 libdir
    libdir=$("$DEBIAN_RUSTC" --print target-libdir --target "$triple" 2>/dev/null || true)
    if compgen -G "$libdir/libstd-*.rlib" >/dev/null; then
        echo prebuilt
    elif [ -f "$DEBIAN_RUST_SRC/Cargo.lock" ] &&
        [[ "$(readlink -f "$DEBIAN_RUST_SRC")" == */rustc-"$("$DEBIAN_RUSTC" --version | cut -d' ' -f2)"/library ]]; then
        echo source
    fi
}

# What a cross build lacks, one item per line; nothing when it can go ahead.
cross_missing() {
    local arch=$1 triple
    triple=$(rust_triple "$arch")
    if [ ! -x "$DEBIAN_RUSTC" ]; then
        echo "Debian's rustc ($DEBIAN_RUSTC, package rustc-web)"
    elif [ -z "$(std_source "$triple")" ]; then
        echo "the Rust standard library for $triple (package libstd-rust-web-dev:$arch, or rust-web-src to build it)"
    fi
    command -v "$(gnu_triple "$arch")-gcc" >/dev/null ||
        echo "the cross linker $(gnu_triple "$arch")-gcc (package gcc-$(gnu_triple "$arch"))"
}

install_cross_deps() {
    local arch=$1
    [ "$(id -u)" = 0 ] || fail "--install-deps needs root (apt-get)"
    if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        dpkg --add-architecture "$arch"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A mirror caught mid-sync fails one index; the others are still usable.
    apt-get update || echo "build-packages: apt-get update reported errors, going on" >&2
    # shellcheck disable=SC2046
    if ! apt-get install -y --no-install-recommends $(cross_packages "$arch"); then
        echo "build-packages: no prebuilt standard library for $arch; installing its source" >&2
        apt-get install -y --no-install-recommends rustc-web rust-web-src \
            "gcc-$(gnu_triple "$arch")" "libc6-dev-$arch-cross"
    fi
}

# The newest GLIBC_x.y symbol version a binary needs.
glibc_needed() {
    readelf --version-info --wide "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' |
        sort -uV | tail -n 1
}

check_binary() {
    local arch=$1 binary=$2 machine needed
    [ -x "$binary" ] || fail "$binary was not built"
    machine=$(readelf --file-header "$binary" | sed -n 's/^ *Machine: *//p')
    case $machine in
        *"$(elf_machine "$arch")"*) ;;
        *) fail "$binary is built for '$machine', not $arch" ;;
    esac
    needed=$(glibc_needed "$binary")
    [ -n "$needed" ] || fail "$binary: no GLIBC symbol versions found"
    if [ "$(printf '%s\n%s\n' "$needed" "$GLIBC_FLOOR" | sort -V | tail -n 1)" != "$GLIBC_FLOOR" ]; then
        fail "$binary needs GLIBC_$needed, newer than the $GLIBC_FLOOR floor"
    fi
    echo "$binary: $machine, needs GLIBC_$needed (floor $GLIBC_FLOOR)"
}

build_arch() {
    local arch=$1 triple bin_dir native=false
    triple=$(rust_triple "$arch")
    if [ "$arch" = amd64 ] && [ "$(uname -m)" = x86_64 ]; then
        native=true
    fi

    # The packaged gateway leaves out `fieldbridge demo` (the embedded broker and the
    # simulators): the edge box runs the gateway only.
    local build=(cargo build --release --locked --no-default-features)
    local deb=(cargo deb --no-build --output "$out")
    for package in "${PACKAGES[@]}"; do
        build+=(-p "$package" --bin "$package")
    done

    if $native; then
        unset CARGO_TARGET_DIR
        bin_dir=$root/target/release
    else
        local missing
        missing=$(cross_missing "$arch")
        if [ -n "$missing" ] && $install_deps; then
            install_cross_deps "$arch"
            missing=$(cross_missing "$arch")
        fi
        if [ -n "$missing" ]; then
            fail "cannot cross-build $arch; missing:
$(sed 's/^/  - /' <<<"$missing")
Install them (as root) with: $0 --arch $arch --install-deps
or: dpkg --add-architecture $arch && apt-get update && apt-get install $(cross_packages "$arch")
(rust-web-src instead of libstd-rust-web-dev:$arch builds the standard library from source)"
        fi
        local gnu env_triple
        gnu=$(gnu_triple "$arch")
        env_triple=$(tr '[:lower:]-' '[:upper:]_' <<<"$triple")
        export RUSTC=$DEBIAN_RUSTC
        export CARGO_TARGET_DIR=$root/target/cross
        export "CARGO_TARGET_${env_triple}_LINKER=$gnu-gcc"
        export "CC_${triple//-/_}=$gnu-gcc" "AR_${triple//-/_}=$gnu-ar"
        build+=(--target "$triple")
        deb+=(--target "$triple")
        if [ "$(std_source "$triple")" = source ]; then
            echo "==> $arch: compiling the standard library from $(readlink -f "$DEBIAN_RUST_SRC")"
            # -Zbuild-std is a nightly flag; this rustc builds its own std source with it.
            export RUSTC_BOOTSTRAP=1
            build+=(-Zbuild-std=std,panic_abort)
        fi
        bin_dir=$CARGO_TARGET_DIR/$triple/release
    fi

    echo "==> $arch: ${build[*]}"
    "${build[@]}"
    for package in "${PACKAGES[@]}"; do
        check_binary "$arch" "$bin_dir/$package"
    done
    for package in "${PACKAGES[@]}"; do
        "${deb[@]}" -p "$package"
    done
    if ! $native; then
        unset RUSTC CARGO_TARGET_DIR RUSTC_BOOTSTRAP
    fi
}

cargo deb --version >/dev/null 2>&1 ||
    fail "cargo-deb is missing: cargo install cargo-deb --locked"
mkdir -p "$out"
for arch in "${arches[@]}"; do
    rust_triple "$arch" >/dev/null
    build_arch "$arch"
done

echo "==> packages in $out:"
for arch in "${arches[@]}"; do
    for package in "${PACKAGES[@]}"; do
        for deb in "$out/${package}_"*"_$arch.deb"; do
            [ -e "$deb" ] || fail "no $package package for $arch in $out"
            echo "$(basename "$deb"): $(dpkg-deb --field "$deb" Architecture Depends | tr '\n' ' ')"
        done
    done
done
