"""The deployment artefacts, checked offline: daemonset.yaml against the Kubernetes schemas and the agent's
own config loader and CLI, the security posture, the image recipe and its entrypoint, the Vagrant VM and
the Grafana dashboard against the metrics the agent's collectors export. No root, no network, no Docker."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from node_agent.app import metrics
from node_agent.app.health import Readiness
from node_agent.resolve.cache import CacheStats
from node_agent.resolve.resolver import ResolverStats
from node_agent.serve.responder import ResponderStats
from node_agent.sources import kubernetes as kube
from node_agent.testing.fakes import FakeAnswerPath, FakeKernel, FakeVips
from node_agent.upstream.stats import ServerStats, UpstreamStats

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "daemonset.yaml"
PODMONITOR = ROOT / "deploy" / "podmonitor.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
VAGRANTFILE = ROOT / "vagrant" / "Vagrantfile"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"

NAMESPACE = "node-agent"
METRICS_PORT = 9253
# The oldest Kubernetes the manifest supports (securityContext.appArmorProfile is GA in 1.30) and the
# newest schema kubernetes-validate ships.
K8S_VERSIONS = sorted({"1.30", kubernetes_validate.latest_version()})


def load_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d]


def one(kind: str) -> dict[str, Any]:
    found = [d for d in load_docs() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in daemonset.yaml, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return one("DaemonSet")["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def config_text() -> str:
    return one("ConfigMap")["data"]["config.yaml"]


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's port, resolving a named container port."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


# ---- Kubernetes schemas ------------------------------------------------------------------------------


def test_manifest_holds_the_expected_objects() -> None:
    docs = load_docs()
    assert sorted(d["kind"] for d in docs) == sorted(
        [
            "Namespace",
            "ResourceQuota",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
        ]
    )
    for d in docs:
        if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_document_validates_strictly(version: str) -> None:
    for doc in load_docs():
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validator really checks the DaemonSet (a typo'd field is not silently accepted)."""
    ds = copy.deepcopy(one("DaemonSet"))
    ds["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[0], strict=True)


def test_namespace_admits_the_pod_under_pod_security() -> None:
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_quota_admits_node_critical_priority() -> None:
    spec = one("ResourceQuota")["spec"]
    exprs = spec["scopeSelector"]["matchExpressions"]
    assert exprs == [{"scopeName": "PriorityClass", "operator": "In", "values": ["system-node-critical"]}]
    assert pod_spec()["priorityClassName"] == "system-node-critical"


# ---- RBAC --------------------------------------------------------------------------------------------


def test_rbac_is_read_only_on_the_watched_resources() -> None:
    granted = set()
    for rule in one("ClusterRole")["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.add((group, resource))
    # Exactly what the Kubernetes source watches: a resource added there without its rule here would
    # never list (403) and keep the table unsynced.
    assert granted == {(r.group, r.plural) for r in kube.RESOURCES}
    assert ("", "namespaces") in granted


def test_binding_ties_the_role_to_the_pods_service_account() -> None:
    binding = one("ClusterRoleBinding")
    sa = one("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": one("ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert pod_spec()["serviceAccountName"] == sa["metadata"]["name"]
    assert pod_spec().get("automountServiceAccountToken", True) is True  # the API watch needs the token


# ---- the agent's configuration and command line ------------------------------------------------------


def test_configmap_loads_through_the_agents_loader(tmp_path: Path) -> None:
    from node_agent import config

    from_mapping = config.from_mapping(yaml.safe_load(config_text()))
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    from_file = config.from_file(str(path))
    assert from_file == from_mapping
    s = from_file
    assert (s.listen.address, s.listen.port) == ("169.254.20.10", 53)
    assert s.sources.kubernetes is True
    assert s.intercept.cgroup == "/"
    assert s.intercept.capture_all is False
    assert s.intercept.dns_services == ("10.96.0.10",)
    assert s.upstream.servers == (("10.96.0.10", 53),)
    assert (s.metrics.address, s.metrics.port) == ("0.0.0.0", METRICS_PORT)
    assert (s.log.level, s.log.format) == ("info", "json")
    assert s.no_bpf is False


def test_config_is_self_consistent() -> None:
    from node_agent import config

    s = config.from_mapping(yaml.safe_load(config_text()))
    # The kernel steers to where the responder listens (one setting: listen).
    assert not hasattr(s.intercept, "responder4")
    # Forwarding goes to the intercepted kube-dns service, never to the responder itself.
    assert {ip for ip, _ in s.upstream.servers} == set(s.intercept.dns_services)
    assert (s.listen.address, s.listen.port) not in s.upstream.servers
    # Pins live in the bpffs the pod mounts read-write.
    bpffs = next(m for m in container()["volumeMounts"] if m["name"] == "bpffs")["mountPath"]
    assert s.intercept.pin_root.startswith(bpffs.rstrip("/") + "/")


def test_container_command_parses_with_the_agents_cli(tmp_path: Path) -> None:
    from node_agent import cli

    c = container()
    argv = c["command"] + c["args"]
    assert argv[0] == dockerfile_entrypoint()
    assert argv[1] == "node-agent"  # exec'd by the entrypoint
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["node-agent"] == "node_agent.cli:main"

    args = cli.build_parser().parse_args(argv[2:])
    assert args.command == "run"
    # --config names the ConfigMap's key at the volume's mount path.
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert os.path.dirname(args.config) == mount["mountPath"]
    assert os.path.basename(args.config) in one("ConfigMap")["data"]

    # The same argv with the mount path substituted by a temp dir holding the ConfigMap's content.
    (tmp_path / "config.yaml").write_text(config_text())
    local = [a.replace(mount["mountPath"], str(tmp_path)) for a in argv[2:]]
    settings = cli.load_settings(cli.build_parser().parse_args(local), env={"NODE_NAME": "n1"})
    assert settings.sources.node_name == "n1"
    assert settings.sources.kubernetes is True
    assert settings.listen.address == "169.254.20.10"
    assert settings.upstream.servers == (("10.96.0.10", 53),)
    assert settings.no_bpf is False


def test_node_name_comes_from_the_downward_api() -> None:
    env = {e["name"]: e for e in container()["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


# ---- pod posture -------------------------------------------------------------------------------------


def test_pod_runs_on_every_node_in_the_nodes_network() -> None:
    spec = pod_spec()
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "Default"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    assert 10 <= spec["terminationGracePeriodSeconds"] <= 60
    assert "lifecycle" not in container()  # no preStop: SIGTERM fails the node open itself


def test_rolling_update_is_surge_free() -> None:
    strategy = one("DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}


def test_capabilities_instead_of_privileged() -> None:
    sc = container()["securityContext"]
    assert sc.get("privileged") is False
    assert "securityContext" not in pod_spec() or "privileged" not in pod_spec()["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(
        ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE", "NET_BIND_SERVICE", "SYS_NICE"]
    )
    # The API rejects allowPrivilegeEscalation=false together with SYS_ADMIN.
    assert sc.get("allowPrivilegeEscalation") is not False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_host_paths_are_mounted_as_intended() -> None:
    c, spec = container(), pod_spec()
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    seen = {
        host[name]: (m["mountPath"], m.get("readOnly", False), m.get("mountPropagation", "None"))
        for name, m in mounts.items()
        if name in host
    }
    assert seen == {
        "/sys/fs/cgroup": ("/sys/fs/cgroup", True, "None"),
        "/sys/fs/bpf": ("/sys/fs/bpf", False, "HostToContainer"),
        "/lib/modules": ("/host/lib/modules", True, "None"),
        "/usr/src": ("/host/usr/src", True, "None"),
    }
    # Every volume is mounted, every mount has a volume.
    assert set(mounts) == {v["name"] for v in spec["volumes"]}


def test_header_mounts_are_where_the_entrypoint_looks() -> None:
    text = ENTRYPOINT.read_text()
    host_root = re.search(r"HOST_ROOT=\$\{NODE_AGENT_HOST_ROOT:-([^}]+)\}", text)
    assert host_root
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    assert mounts["lib-modules"] == host_root.group(1) + "/lib/modules"
    assert mounts["usr-src"] == host_root.group(1) + "/usr/src"


def test_probes_and_scrape_use_the_metrics_port() -> None:
    c = container()
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(c, get["port"]) == METRICS_PORT, probe
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in c["ports"]
    annotations = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }


def test_resources() -> None:
    res = container()["resources"]
    assert res["requests"] == {"cpu": "50m", "memory": "100Mi"}
    assert res["limits"] == {"memory": "300Mi"}  # no CPU limit: throttled DNS is worse than a busy agent


def test_image_is_the_marked_placeholder() -> None:
    assert container()["image"] == "ghcr.io/example/node-agent:0.1.0"
    lines = DAEMONSET.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "image: ghcr.io/example/node-agent" in line)
    assert "PLACEHOLDER" in lines[at - 1]


# ---- PodMonitor (a CRD: shape only) ------------------------------------------------------------------


def test_podmonitor_selects_the_pods_metrics_port() -> None:
    pm = yaml.safe_load(PODMONITOR.read_text())
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["kind"] == "PodMonitor"
    assert pm["metadata"]["namespace"] == NAMESPACE
    labels = one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    selector = pm["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    port_names = {p["name"] for p in container()["ports"]}
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e["port"] in port_names and e["path"] == "/metrics" for e in endpoints)


# ---- image -------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def dockerfile_entrypoint() -> str:
    entry = [json.loads(a) for i, a in dockerfile_instructions() if i == "ENTRYPOINT"]
    assert len(entry) == 1 and len(entry[0]) == 1, "ENTRYPOINT in exec form, the entrypoint script alone"
    return entry[0][0]


def test_dockerfile_base_and_packages() -> None:
    ins = dockerfile_instructions()
    assert [a for i, a in ins if i == "FROM"] == ["debian:bookworm-slim"]
    runs = " ".join(a for i, a in ins if i == "RUN")
    install = re.search(r"apt-get install ([^&]+)", runs)
    assert install
    packages = set(install.group(1).split())
    assert {"python3-bpfcc", "python3-venv", "iproute2", "bpftool", "ca-certificates"} <= packages
    assert "linux-headers-amd64" in packages  # the entrypoint's fallback
    assert "--no-install-recommends" in packages


def test_dockerfile_uses_the_setup_scripts_venv_recipe_and_installs_the_package() -> None:
    recipe = "/usr/bin/python3 -m venv --system-site-packages"
    assert recipe in (ROOT / "scripts" / "setup.sh").read_text()
    runs = " ".join(a for i, a in dockerfile_instructions() if i == "RUN")
    venv = re.search(re.escape(recipe) + r" (\S+)", runs)
    assert venv
    # Not editable: the wheel carries bpf/ as package data, and the copied sources are removed.
    project = next(shlex.split(a)[1] for i, a in dockerfile_instructions() if i == "COPY" and a.startswith("pyproject"))
    install = re.search(rf"{re.escape(venv.group(1))}/bin/pip install ([^&]*)", runs)
    assert install and "-e" not in install.group(1).split() and project.rstrip("/") in install.group(1)
    assert f"rm -rf {project.rstrip('/')}" in runs
    env = " ".join(a for i, a in dockerfile_instructions() if i == "ENV")
    assert f"PATH={venv.group(1)}/bin:" in env  # `node-agent` on PATH for the entrypoint and kubectl exec


def test_dockerfile_copies_what_the_agent_needs() -> None:
    from node_agent.kernel import maps

    copies = [shlex.split(a) for i, a in dockerfile_instructions() if i == "COPY"]
    sources = {c[0] for c in copies}
    assert {"pyproject.toml", "node_agent", "bpf", "deploy/entrypoint.sh"} <= sources
    for src in sources:
        assert (ROOT / src).exists(), src
    # The tree's layout is kept (pyproject maps the package node_agent.kernel.bpf to bpf/), and the
    # loader finds the sources through that package.
    dest = {c[0]: PurePosixPath(c[1]) for c in copies}
    assert dest["node_agent"] == dest["pyproject.toml"] / "node_agent" and dest["bpf"] == dest["pyproject.toml"] / "bpf"
    assert maps.SOURCE.exists() and maps.SOURCE.read_bytes() == (ROOT / "bpf" / "dns_steer.c").read_bytes()
    # The entrypoint is copied to the path ENTRYPOINT and the DaemonSet's command name.
    entrypoint = next(c[1] for c in copies if c[0] == "deploy/entrypoint.sh")
    assert entrypoint == dockerfile_entrypoint() == container()["command"][0]
    cmd = next(json.loads(a) for i, a in dockerfile_instructions() if i == "CMD")
    assert cmd == container()["args"]
    # .dockerignore is an allow-list that lets every copied source in.
    ignore = [x.strip() for x in DOCKERIGNORE.read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert ignore[0] == "*"
    allowed = {x[1:].rstrip("/") for x in ignore if x.startswith("!")}
    assert sources <= allowed


def test_entrypoint_is_an_executable_valid_script() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)


# ---- entrypoint behaviour (temp dirs stand in for /host, /lib/modules and /usr/src) ------------------


KREL = "6.9.9-test"


def run_entrypoint(tmp: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_AGENT_HOST_ROOT": str(tmp / "host"),
        "NODE_AGENT_MODULES_DIR": str(tmp / "modules"),
        "NODE_AGENT_HEADERS_DIR": str(tmp / "image-src"),
        "NODE_AGENT_KERNEL_RELEASE": KREL,
    }
    return subprocess.run(["bash", str(ENTRYPOINT), *cmd], env=env, capture_output=True, text=True, timeout=30)


def make_headers(base: Path, *names: str) -> None:
    for name in names:
        (base / name / "include").mkdir(parents=True)


def test_entrypoint_maps_the_nodes_headers(tmp_path: Path) -> None:
    host = tmp_path / "host"
    make_headers(host / "usr/src", f"linux-headers-{KREL}", f"linux-headers-{KREL}-common")
    make_headers(tmp_path / "image-src", "linux-headers-6.1.0-1-amd64", "linux-headers-6.1.0-1-common")
    mod = host / "lib/modules" / KREL
    mod.mkdir(parents=True)
    (mod / "build").symlink_to(f"/usr/src/linux-headers-{KREL}")  # absolute, as on the node
    (mod / "source").symlink_to(f"../../../usr/src/linux-headers-{KREL}-common")  # relative
    r = run_entrypoint(tmp_path, "true")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "modules" / KREL
    assert os.readlink(out / "build") == str(host / f"usr/src/linux-headers-{KREL}")
    assert (out / "source" / "include").is_dir()
    assert Path(os.path.realpath(out / "source")) == host / f"usr/src/linux-headers-{KREL}-common"


def test_entrypoint_falls_back_to_the_images_headers(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "lib/modules" / KREL).mkdir(parents=True)
    (host / "lib/modules" / KREL / "build").symlink_to(f"/usr/src/linux-headers-{KREL}")  # dangling
    src = tmp_path / "image-src"
    make_headers(src, "linux-headers-6.1.0-9-amd64", "linux-headers-6.1.0-10-amd64")
    make_headers(src, "linux-headers-6.1.0-9-common", "linux-headers-6.1.0-10-common")
    r = run_entrypoint(tmp_path, "true")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "modules" / KREL
    assert os.readlink(out / "build") == str(src / "linux-headers-6.1.0-10-amd64")  # version sort
    assert os.readlink(out / "source") == str(src / "linux-headers-6.1.0-10-common")
    assert "no headers for kernel" in r.stderr


def test_entrypoint_without_headers_warns_and_still_execs_the_command(tmp_path: Path) -> None:
    r = run_entrypoint(tmp_path, "sh", "-c", "echo ran; exit 7")
    assert r.returncode == 7
    assert r.stdout == "ran\n"
    assert "warning: no kernel headers" in r.stderr
    assert not (tmp_path / "modules" / KREL / "build").exists()


# ---- Vagrant -----------------------------------------------------------------------------------------


def test_vagrantfile_syntax() -> None:
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed")
    subprocess.run([ruby, "-c", str(VAGRANTFILE)], check=True, capture_output=True)


def test_vagrantfile_provisions_setup_test_and_demo() -> None:
    text = VAGRANTFILE.read_text()
    assert re.search(r'config\.vm\.box = "debian/bookworm64"', text)
    assert re.search(r"provider :libvirt", text)
    assert re.search(r"\.cpus = 2\b", text) and re.search(r"\.memory = 4096\b", text)
    assert re.search(r'synced_folder "\.\.", "/vagrant", type: "rsync"', text)
    steps = [line.strip() for line in text.splitlines()]
    order = [
        steps.index("bash /vagrant/scripts/setup.sh"),
        steps.index("make -C /vagrant test"),
        steps.index("make -C /vagrant demo"),
    ]
    assert order == sorted(order)
    assert (ROOT / "scripts" / "setup.sh").exists()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:", makefile, re.M) and re.search(r"^demo:", makefile, re.M)


# ---- Grafana dashboard -------------------------------------------------------------------------------


def metric_collectors(registry: CollectorRegistry) -> list[Collector]:
    """Every collector of node_agent.app.metrics, built from fixture objects (fakes of the BPF readers
    for the kernel-side families) on `registry`."""
    readiness = Readiness()
    readiness.add("table", lambda: None)
    return [
        metrics.AnswerCollector(ResolverStats(), CacheStats(), ResponderStats(), registry=registry),
        metrics.UpstreamCollector(UpstreamStats(servers={"10.96.0.10:53": ServerStats()}),
                                  lambda: {"10.96.0.10:53": True}, registry=registry),
        metrics.TableCollector(lambda: {"services": 1}, {"static:/m.yaml": (True, 0.0)}, {("static:/m.yaml", "Pod"): 1},
                               registry=registry),
        metrics.KernelCollector(FakeKernel().pod(7, steered=1), {7: "a"}, registry=registry),
        metrics.VipCollector(FakeVips({"api.example.com": (1, 0)}), registry=registry),
        metrics.ReadyCollector(readiness, registry=registry),
        metrics.FeatureCollector({"set_retval": False, "link_update": True}, registry=registry),
        metrics.KernelAnswerCollector(FakeAnswerPath(), {"a": 1}, registry=registry),
    ]


def exported_metric_names() -> set[str]:
    """Series names the agent's collectors export, listed from their families (name and type), so a
    family counts even where the fixtures gave it no sample."""
    registry = CollectorRegistry()
    built = metric_collectors(registry)
    # By the MRO: issubclass() would ask the module's Protocols, which refuse class checks.
    defined = {c for c in vars(metrics).values()
               if isinstance(c, type) and c.__module__ == metrics.__name__ and Collector in c.__mro__
               and not c.__name__.startswith("_")}
    assert {type(c) for c in built} == defined, "a collector of app/metrics.py is not built here"
    names: set[str] = set()
    for family in registry.collect():
        assert family.name.startswith("nodeagent_"), family.name
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + "_bucket", family.name + "_sum", family.name + "_count"}
        else:
            names.add(family.name)
    return names


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        if var["type"] == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def test_metric_parser_sees_the_documented_metrics() -> None:
    names = exported_metric_names()
    assert {
        "nodeagent_cache_hits_total",
        "nodeagent_cache_misses_total",
        "nodeagent_forwarded_total",
        "nodeagent_table_answers_total",
        "nodeagent_requests_total",
        "nodeagent_upstream_requests_total",
        "nodeagent_upstream_failures_total",
        "nodeagent_upstream_request_duration_seconds_bucket",
        "nodeagent_upstream_tcp_connections_total",
        "nodeagent_namespace_requests_total",
        "nodeagent_bpf_steered_total",
        "nodeagent_bpf_failopen_total",
        "nodeagent_ready",
    } <= names
    assert "nodeagent_cache_hits" not in names  # counters only as _total


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exported = exported_metric_names()
    used = {m for e in dashboard_exprs(dash) for m in re.findall(r"\bnodeagent_\w+", e)}
    assert used, "the dashboard queries no nodeagent_ metric"
    assert used - exported == set()
    # The panels the issue asks for, by the series they rest on.
    assert {
        "nodeagent_cache_hits_total",
        "nodeagent_cache_misses_total",
        "nodeagent_forwarded_total",
        "nodeagent_upstream_request_duration_seconds_bucket",
        "nodeagent_upstream_failures_total",
        "nodeagent_namespace_requests_total",
        "nodeagent_bpf_steered_total",
        "nodeagent_bpf_failopen_total",
    } <= used
    # Kernel answers (issue 16): answers by namespace, their share of the cache hits, the answer map's
    # fill and the program's attach points (the map and attach families exist only while the path is on).
    assert {
        "nodeagent_kernel_answers_total",
        "nodeagent_kernel_answer_map_entries",
        "nodeagent_kernel_answer_map_capacity",
        "nodeagent_kernel_answer_attached",
        "nodeagent_kernel_answer_unattached",
    } <= used


def test_dashboard_queries_through_the_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
