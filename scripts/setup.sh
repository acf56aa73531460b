#!/usr/bin/env bash
# One set-up for `make demo`, `make test`, CI and the Vagrant VM: idempotent, quick the second time.
# Installs Debian packages, makes bcc find kernel headers, mounts bpffs, builds the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (BPF, network namespaces and cgroups need it): try 'sudo make ...'" >&2
    exit 1
fi

PKGS=(python3-bpfcc python3-venv python3-pip linux-headers-amd64 dnsmasq-base unbound bind9-dnsutils
      iproute2 bpftool nftables dnsperf prometheus curl procps ruby musl-tools make gcc libc6-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    # Packages like unbound and prometheus ship services; we run our own copies, so keep apt from
    # starting theirs (a system unbound would take port 53 on the node).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Nodes (and this CI) often run a kernel with no
# matching headers package; our BPF programs use only UAPI types, so Debian's generic headers serve.
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
    amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$amd64" ] || [ -z "$common" ]; then
        echo "setup: no kernel headers found under /usr/src; bcc cannot compile BPF programs" >&2
        exit 1
    fi
    echo "setup: no headers for kernel $KREL; pointing bcc at $amd64 (UAPI types only)"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$amd64" "/lib/modules/$KREL/build"
    ln -sfn "$common" "/lib/modules/$KREL/source"
fi

# bpffs holds the agent's pins (restart without a gap).
if ! grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
    mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
fi
if ! grep -q ' cgroup2 ' /proc/mounts; then
    echo "setup: warning: no cgroup v2 mount; BPF steering cannot attach (the responder can still run with --no-bpf)" >&2
fi

# bcc imports only into the system Python, so the venv must see system site-packages.
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[dev]'
    rm -f "$VENV"/.installed-* && touch "$stamp"
fi
"$VENV/bin/python" -c 'import bcc, dnslib, pyroute2, prometheus_client, dns.resolver' \
    || { echo "setup: the venv cannot import bcc/dnslib/pyroute2/prometheus_client/dnspython" >&2; exit 1; }
echo "setup: ready"
