# node-agent image: Debian 12 with the distribution's bcc (python3-bpfcc) and a venv that sees it.
#   docker build -t ghcr.io/example/node-agent:0.1.0 .     (the image name in daemonset.yaml is a placeholder)
FROM debian:bookworm-slim

# python3-bpfcc: bcc imports only into the system Python (hence the venv below). iproute2 and bpftool for
# operators (`kubectl exec ... bpftool cgroup tree`). linux-headers-amd64: fallback kernel headers for nodes
# without headers for their kernel (deploy/entrypoint.sh); our BPF programs use only UAPI types.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3-bpfcc python3-venv iproute2 bpftool ca-certificates linux-headers-amd64 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/node-agent
COPY pyproject.toml /tmp/node-agent-src/
COPY node_agent /tmp/node-agent-src/node_agent
COPY bpf /tmp/node-agent-src/bpf

# The same venv recipe as scripts/setup.sh: system site-packages so `import bcc` works. A plain (not
# editable) install: the wheel carries bpf/ as package data (node_agent.kernel.bpf), so the sources are
# removed and the check imports from the venv alone, including the BPF sources the loader compiles.
RUN /usr/bin/python3 -m venv --system-site-packages /opt/node-agent/.venv \
    && /opt/node-agent/.venv/bin/pip install --no-cache-dir /tmp/node-agent-src \
    && rm -rf /tmp/node-agent-src \
    && /opt/node-agent/.venv/bin/python -c \
        'import bcc, dnslib, pyroute2, prometheus_client, node_agent.cli; from node_agent.kernel import maps; print(maps.SOURCE)'

COPY deploy/entrypoint.sh /usr/local/bin/node-agent-entrypoint
RUN chmod 0755 /usr/local/bin/node-agent-entrypoint

ENV PATH=/opt/node-agent/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
EXPOSE 9253
ENTRYPOINT ["/usr/local/bin/node-agent-entrypoint"]
CMD ["node-agent", "run", "--config", "/etc/node-agent/config.yaml"]
