#!/usr/bin/env bash
# Run the agent on the kernels nodes run: boot Debian's own kernels in VMs, one at a time, and in
# each check that the BPF programs load, attach, steer and are adopted by a second agent; `full` runs
# the kernel-relevant end-to-end tests there too. One table row per kernel.
#
#   scripts/kernels.sh probe [SUITE...]   the probe only, a few minutes under TCG (.ci/run)
#   scripts/kernels.sh full  [SUITE...]   the probe, then the e2e tests marked `kernel` (steering UDP/
#                                         TCP/IPv6, fail-open, hand-over, VIPs, the listen link, kernel
#                                         answers; `make kernels`; about an hour a kernel under TCG)
#   scripts/kernels.sh fetch [SUITE...]   install the tools and download the kernels, nothing else
#
# SUITE is bullseye (5.10), bookworm (6.1) or trixie (6.12); the default is all three. Exit 1 if a
# row failed, except a failure named in NA_KERNELS_XFAIL (see scripts/kernel_guest.py `table`).
#
# How it works: virtme-ng (`vng -r vmlinuz`) boots the kernel on this machine's own root filesystem
# (9p, read-only; tmpfs overlays on what the guest writes, this checkout included), so the guest
# uses the host's packages, venv and checkout and changes nothing on the host. vng finds the
# kernel's modules in the unpacked package beside its vmlinuz. The guest runs
# scripts/kernel_guest.py, which writes its results into a directory shared read-write with the
# host: vng cannot hand back the guest's exit code on a machine without udev.
#
# Settings (environment):
#   NA_ACCEL=kvm|tcg     default: detected. KVM where /dev/kvm is a hardware KVM (kvm_intel or
#                        kvm_amd); TCG (software emulation, 20-30x slower) where there is no usable
#                        /dev/kvm or it is kvm_pvm, a paravirtual KVM on which stock kernels hang
#                        right after the decompressor.
#   NA_KERNELS_CACHE     tools and unpacked kernels, kept between runs (/var/lib/node-agent-kernels)
#   NA_KERNELS_OUT       this run's logs and results (a new /tmp/node-agent-kernels.<mode>.XXXXXX)
#   Both must be visible in the guest: vng mounts empty tmpfs on /var/cache, /var/tmp and others, so
#   the modules directory it links for the guest kernel would dangle there.
#   NA_VM_CPUS, NA_VM_MEM  guest size (2, 4G)
#   NA_VM_TIMEOUT        bound on one kernel's VM in seconds (probe: 600 under TCG, 240 under KVM;
#                        full: that, the e2e bound - 4800 s under TCG, 800 under KVM - and 60 s;
#                        each times the host's pace, node_agent/testing/pace.py, when not given)
#   NA_E2E_TESTS         pytest's arguments in `full` (default: -m kernel tests/e2e; e.g. a file or a node id)
#   NA_MIRROR            the Debian mirror (default: this machine's, from its apt sources)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

CACHE=${NA_KERNELS_CACHE:-/var/lib/node-agent-kernels}
VNG=$CACHE/vng/bin/vng
export PATH=$CACHE/vng/bin:$PATH  # vng runs virtme-run from there
CPUS=${NA_VM_CPUS:-2}
MEM=${NA_VM_MEM:-4G}
E2E_TESTS=${NA_E2E_TESTS:--m kernel tests/e2e}
declare -A KVER=([bullseye]=5.10 [bookworm]=6.1 [trixie]=6.12)
ALL_SUITES=(bullseye bookworm trixie)

log() { echo "kernels: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (apt, BPF in the guest)"; exit 1
fi

detect_accel() {
    if [ -n "${NA_ACCEL:-}" ]; then
        echo "$NA_ACCEL"
    elif [ -d /sys/module/kvm_pvm ]; then
        echo tcg
    elif [ -c /dev/kvm ] && [ -r /dev/kvm ] && [ -w /dev/kvm ] \
            && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
        echo kvm
    else
        echo tcg
    fi
}

tools() {
    local pkgs=(qemu-system-x86 kmod file busybox-static) missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # virtme-ng from PyPI (Debian 12 has none), in a venv of its own: not the project's dependency.
    if [ ! -x "$VNG" ]; then
        log "installing virtme-ng into $CACHE/vng"
        rm -rf "$CACHE/vng"
        /usr/bin/python3 -m venv "$CACHE/vng"
        "$CACHE/vng/bin/pip" install -q virtme-ng
    fi
    # The guest runs the host's venv and checkout: set up here first (idempotent).
    bash scripts/setup.sh > "$CACHE/setup.log" 2>&1 || { cat "$CACHE/setup.log" >&2; exit 1; }
}

# apt with a private configuration (sources, lists, cache under $CACHE/apt): the machine's own apt
# sources and state are never touched, and the lists are removed once the kernels are unpacked.
apt_private() {
    apt-get -o Dir::Etc::SourceList="$CACHE/apt/sources.list" -o Dir::Etc::SourceParts="$CACHE/apt/none" \
        -o Dir::State::Lists="$CACHE/apt/lists" -o Dir::Cache="$CACHE/apt/cache" \
        -o APT::Sandbox::User=root -qq "$@"
}

fetch() {  # fetch SUITE...: unpack each suite's linux-image-amd64 into $CACHE/kernels/SUITE
    local need=()
    for s in "$@"; do
        ls "$CACHE/kernels/$s"/boot/vmlinuz-* >/dev/null 2>&1 || need+=("$s")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    local mirror=${NA_MIRROR:-$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null)}
    mirror=${mirror:-http://deb.debian.org/debian}
    rm -rf "$CACHE/apt"
    mkdir -p "$CACHE/apt/none" "$CACHE/apt/lists/partial" "$CACHE/apt/cache/archives/partial" "$CACHE/apt/debs"
    trap 'rm -rf "$CACHE/apt"' RETURN
    for s in "${need[@]}"; do
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $s main"
    done > "$CACHE/apt/sources.list"
    log "fetching kernels of ${need[*]} from $mirror"
    apt_private update
    for s in "${need[@]}"; do
        (
            cd "$CACHE/apt/debs"
            rm -f ./*.deb
            apt_private download "linux-image-amd64/$s"
            # The metapackage names this point release's kernel package (linux-image-<abi>-amd64).
            local image
            image=$(dpkg-deb -f linux-image-amd64_*.deb Depends | grep -o 'linux-image-[^ ,]*' | head -n 1)
            apt_private download "$image/$s"
            rm -rf "$CACHE/kernels/$s.part" && mkdir -p "$CACHE/kernels/$s.part"
            dpkg-deb -x "$image"_*.deb "$CACHE/kernels/$s.part"
            dpkg-deb -f "$image"_*.deb Package Version > "$CACHE/kernels/$s.part/PACKAGE"
            rm -rf "$CACHE/kernels/$s" && mv "$CACHE/kernels/$s.part" "$CACHE/kernels/$s"
        )
        log "$s: $(tr '\n' ' ' < "$CACHE/kernels/$s/PACKAGE")"
    done
}

run_vm() {  # run_vm SUITE MODE OUTDIR BOUND
    local suite=$1 mode=$2 out=$3 bound=$4 image accel_args=()
    image=$(ls "$CACHE/kernels/$suite"/boot/vmlinuz-* | head -n 1)
    [ "$ACCEL" = tcg ] && accel_args=(--disable-kvm)
    rm -rf "$out" && mkdir -p "$out"
    # The commit goes in the row: rows of one table may come from separate runs (one suite each).
    local commit
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit+dirty"
    printf '%s\n' "$suite" "${KVER[$suite]}" "$ACCEL" "$commit" > "$out/vm"
    # The guest's arguments go in a file: vng passes its command on the kernel command line, which
    # the kernel cuts at 2 KiB.
    printf '%s\n' "$mode" "$E2E_TIMEOUT" $E2E_TESTS > "$out/args"
    # One VM at a time on this machine, also across checkouts (CI of one, make kernels of another
    # may run at once): each waits for the lock, and its bound and time start when it has it.
    exec 8> "$CACHE/vm.lock"
    flock 8
    local t0=$SECONDS
    # Niced: other work shares this machine. timeout ends qemu itself (vng execs it), and with it
    # the guest and everything in it.
    nice -n 10 timeout -k 10 "$bound" "$VNG" "${accel_args[@]}" -r "$image" --cpus "$CPUS" --memory "$MEM" \
        --overlay-rwdir "$ROOT" --rwdir "$out" -- \
        "$ROOT/.venv/bin/python" "$ROOT/scripts/kernel_guest.py" guest "$out" \
        > "$out/console.log" 2>&1 < /dev/null || echo "$?" > "$out/vm-rc"
    flock -u 8
    echo "$(( SECONDS - t0 ))" > "$out/vm-seconds"
    log "$suite (${KVER[$suite]}): VM ran $(( SECONDS - t0 )) s"
}

scale() {  # scale SECONDS PACE: SECONDS times PACE, whole seconds
    awk -v s="$1" -v p="$2" 'BEGIN { printf "%d\n", s * p + 0.5 }'
}

main() {
    local mode=${1:-probe}; shift || true
    local suites=("$@")
    [ ${#suites[@]} -gt 0 ] || suites=("${ALL_SUITES[@]}")
    for s in "${suites[@]}"; do
        [ -n "${KVER[$s]:-}" ] || { log "unknown suite $s (one of ${ALL_SUITES[*]})"; exit 2; }
    done
    case $mode in probe|full|fetch) ;; *) log "usage: $0 probe|full|fetch [SUITE...]"; exit 2 ;; esac
    mkdir -p "$CACHE"
    (
        flock 9  # one installer and downloader at a time: they replace what they update
        tools
        fetch "${suites[@]}"
    ) 9> "$CACHE/install.lock"
    [ "$mode" = fetch ] && return 0

    ACCEL=$(detect_accel)
    local bound pace
    if [ "$ACCEL" = tcg ]; then
        E2E_TIMEOUT=4800 bound=600
    else
        E2E_TIMEOUT=800 bound=240
    fi
    # Those hold on the reference machine; a guest is as many times slower as its host is (under
    # TCG a 5.10 guest's agent started in 69 s on one host, in 240-275 s on one at pace 2.9).
    pace=$("$ROOT/.venv/bin/python" -c 'from node_agent.testing.pace import python_pace; print(f"{python_pace():.2f}")')
    E2E_TIMEOUT=$(scale "$E2E_TIMEOUT" "$pace") bound=$(scale "$bound" "$pace")
    [ "$mode" = full ] && bound=$(( bound + E2E_TIMEOUT + 60 ))
    bound=${NA_VM_TIMEOUT:-$bound}
    local outroot=${NA_KERNELS_OUT:-$(mktemp -d "/tmp/node-agent-kernels.$mode.XXXXXX")}
    log "$mode on ${suites[*]}: $ACCEL, $CPUS vCPUs, $MEM; host pace $pace; each VM bounded to $bound s; logs in $outroot"
    local dirs=()
    for s in "${suites[@]}"; do
        run_vm "$s" "$mode" "$outroot/$s" "$bound"
        dirs+=("$outroot/$s")
    done
    /usr/bin/python3 scripts/kernel_guest.py table "${dirs[@]}"
}

main "$@"
