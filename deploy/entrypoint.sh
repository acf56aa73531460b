#!/usr/bin/env bash
# Container entrypoint: make bcc find kernel headers, then exec the command (node-agent run ...).
#
# bcc compiles against /lib/modules/$(uname -r)/build (and .../source on Debian's split header packages).
# The DaemonSet mounts the node's /lib/modules and /usr/src read-only under /host; this script builds the
# container's own /lib/modules/$(uname -r) from them, mapping the node's absolute symlinks
# (build -> /usr/src/linux-headers-...) to /host/usr/src/.... When the node has no headers for its kernel,
# it falls back to the image's Debian generic headers (linux-headers-amd64): our BPF programs use only UAPI
# types, so those serve any kernel, as scripts/setup.sh does on development machines.
#
# Paths are overridable for tests: NODE_AGENT_HOST_ROOT, NODE_AGENT_MODULES_DIR, NODE_AGENT_HEADERS_DIR,
# NODE_AGENT_KERNEL_RELEASE.
set -euo pipefail

HOST_ROOT=${NODE_AGENT_HOST_ROOT:-/host}
MODULES=${NODE_AGENT_MODULES_DIR:-/lib/modules}
HEADERS=${NODE_AGENT_HEADERS_DIR:-/usr/src}
KREL=${NODE_AGENT_KERNEL_RELEASE:-$(uname -r)}

say() { echo "entrypoint: $*" >&2; }

# The node's headers dir for $1 (build|source) as seen in this container, or nothing.
node_headers() {
    local entry="$HOST_ROOT/lib/modules/$KREL/$1" target
    if [ -L "$entry" ]; then
        target=$(readlink "$entry")
        case "$target" in
            /*) target="$HOST_ROOT$target" ;;
            *) target="$HOST_ROOT/lib/modules/$KREL/$target" ;;
        esac
    else
        target="$entry"
    fi
    if [ -d "$target/include" ]; then
        echo "$target"
    fi
}

if [ -e "$MODULES/$KREL/build/include" ]; then
    say "kernel headers for $KREL already in place"
else
    mkdir -p "$MODULES/$KREL"
    build=$(node_headers build)
    if [ -n "$build" ]; then
        ln -sfn "$build" "$MODULES/$KREL/build"
        src=$(node_headers source)
        if [ -n "$src" ]; then
            ln -sfn "$src" "$MODULES/$KREL/source"
        fi
        say "using the node's kernel headers $build"
    else
        amd64=$(ls -d "$HEADERS"/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
        common=$(ls -d "$HEADERS"/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1 || true)
        if [ -n "$amd64" ] && [ -n "$common" ]; then
            ln -sfn "$amd64" "$MODULES/$KREL/build"
            ln -sfn "$common" "$MODULES/$KREL/source"
            say "no headers for kernel $KREL on the node; using the image's $amd64 (UAPI types only)"
        else
            # bcc can still use the kernel's own /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS).
            say "warning: no kernel headers for $KREL on the node or in the image; bcc will try kheaders"
        fi
    fi
fi

if [ $# -eq 0 ]; then
    set -- node-agent run --config /etc/node-agent/config.yaml
fi
exec "$@"
