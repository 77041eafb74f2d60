"""Packaging: the Dockerfile and the Helm chart, checked without Docker or a cluster.

* The Dockerfile is parsed into instructions (a small parser below): multi-stage, the final stage
  runs as a non-root user, the entrypoint is the ``nextbest`` console script of ``pyproject.toml``,
  its default command is a real subcommand; the wheel it builds carries every package and data
  file (a module or YAML file left out of ``[tool.setuptools]`` breaks the image, not the tests).
* The chart (``helm/nextbest``) is rendered with Helm's own library (``helm-python-sdk``: no helm
  binary) for the default values and several value sets, linted, and every rendered manifest is
  validated against the bundled Kubernetes JSON schemas (``kubernetes-validate``, strict). The
  Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) are not Kubernetes schemas: they are
  checked by hand (apiVersion, kind, required fields) and skipped in kubernetes-validate.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from nextbest.cli import build_parser
from nextbest.delivery.config import parse_webhooks

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "nextbest"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", word):
            raise ValueError(f"not an instruction: {line!r}")
        out.append((word.upper(), rest.strip()))
    if pending:
        raise ValueError("the Dockerfile ends with a line continuation")
    return out


def cli_commands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("nextbest's parser has no subcommands")


KNOWN_INSTRUCTIONS = {
    "FROM",
    "ARG",
    "ENV",
    "RUN",
    "COPY",
    "ADD",
    "WORKDIR",
    "USER",
    "EXPOSE",
    "ENTRYPOINT",
    "CMD",
    "LABEL",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "VOLUME",
    "SHELL",
    "ONBUILD",
}


def test_dockerfile() -> None:
    instructions = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    unknown = {word for word, _ in instructions} - KNOWN_INSTRUCTIONS
    assert not unknown, f"unknown Dockerfile instructions: {unknown}"
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(stages) >= 2, "the Dockerfile must be multi-stage (a builder and a runtime stage)"
    final = instructions[stages[-1] :]
    # every COPY --from names an earlier stage
    names = {args.split()[-1] for word, args in instructions if word == "FROM" and " AS " in args}
    for word, args in final:
        if word == "COPY" and "--from=" in args:
            assert re.search(r"--from=(\S+)", args)[1] in names  # type: ignore[index]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage must set a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the final stage runs as {user!r}"
    entrypoints = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1] == ["nextbest"], "ENTRYPOINT must be exec form nextbest"
    assert PYPROJECT["project"]["scripts"]["nextbest"] == "nextbest.cli:main"
    cmds = [json.loads(args) for word, args in final if word == "CMD"]
    assert cmds and cmds[-1][0] in cli_commands()
    exposed = {port for word, args in final if word == "EXPOSE" for port in args.split()}
    assert {"8000", "9464"} <= exposed
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".git", ".nextbest", ".pytest_cache", ".mypy_cache"):
        assert path in ignored, f".dockerignore must leave out {path}"


def test_dockerfile_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not an instruction"):
        dockerfile_instructions('FROM x\n"oops"\n')
    assert dockerfile_instructions("# c\nRUN a \\\n  b\n") == [("RUN", "a  b")]


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_wheel_carries_every_package_and_data_file() -> None:
    """The image installs the wheel: every package dir and shipped file must be declared."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    packages: list[str] = setuptools["packages"]
    tops = sorted({p.split(".")[0] for p in packages})
    inits = {str(Path(f).parent).replace("/", ".") for f in tracked(*tops) if f.endswith(".py")}
    missing = sorted(p for p in inits if Path(ROOT, *p.split("."), "__init__.py").exists())
    missing = [p for p in missing if p not in packages]
    assert not missing, f"packages missing from [tool.setuptools] packages: {missing}"
    data: dict[str, list[str]] = setuptools["package-data"]
    for f in tracked(*tops):
        if f.endswith(".py"):
            continue
        path = Path(f)
        owners = [p for p in packages if path.is_relative_to(Path(*p.split(".")))]
        owner = max(owners, key=len)
        relative = str(path.relative_to(Path(*owner.split("."))))
        patterns = data.get(owner, [])
        assert any(fnmatch.fnmatch(relative, g) for g in patterns), (
            f"{f} is not in [tool.setuptools.package-data] {owner!r}: the image would lack it"
        )


def test_chart_commands_exist() -> None:
    """Every ``nextbest <command>`` a chart template runs is a real subcommand."""
    commands = cli_commands()
    used: set[str] = set()
    for template in (CHART / "templates").glob("*.yaml"):
        for match in re.finditer(r"args:\s*\[\s*\"?([a-z-]+)", template.read_text()):
            used.add(match[1])
    assert used >= {"serve", "run", "deliver"}, used
    assert used <= commands, used - commands


# --- the chart ------------------------------------------------------------------------------------

#: Kubernetes version the manifests are validated against (the chart's kubeVersion is >= 1.28).
KUBE_VERSION = "1.33.0"
#: Prometheus Operator kinds: no Kubernetes schema; checked by hand in check_crd.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

WEBHOOKS = """\
destinations:
  - name: crm
    url: https://crm.example/hooks/nextbest
    secret_env: CRM_WEBHOOK_SECRET
    segments: [cart_abandoned]
"""

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "scale-out": {
        "dataflow": {"replicas": 3, "workersPerProcess": 2, "recovery": {"partitions": 2}}
    },
    "redis-cluster": {
        "redis": {"existingSecret": "redis-cluster", "urlKey": "seed-url", "cluster": True}
    },
    "auth-on": {
        "auth": "on",
        "apiKeys": {"existingSecret": "nextbest-api-keys", "key": "keys.yaml"},
        "corsOrigins": "https://shop.example",
    },
    "everything": {
        "imagePullSecrets": [{"name": "registry"}],
        "image": {"repository": "registry.example/nextbest", "tag": "1.2.3"},
        "apiKeys": {"existingSecret": "nextbest-api-keys"},
        "env": {"NEXTBEST_BATCH_SIZE": 500, "NEXTBEST_PRODUCTS": "on"},
        "config": {
            "segments": (ROOT / "features/segments/builtin.yaml").read_text(),
            "actions": (ROOT / "decisions/actions.yaml").read_text(),
            "traits": (ROOT / "features/traits.yaml").read_text(),
            "recommendations": (ROOT / "decisions/recommendations.yaml").read_text(),
        },
        "serve": {"autoscaling": {"enabled": True}, "env": {"NEXTBEST_PORT": "8000"}},
        "dataflow": {"replicas": 2, "recovery": {"storageClassName": "fast", "size": "50Gi"}},
        "deliver": {"enabled": True, "webhooks": WEBHOOKS, "secretEnvFrom": "webhook-secrets"},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
        },
    },
}


@cache
def render(name: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(template, manifest) for every object the value set renders (NOTES excluded)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(VALUE_SETS[name], name="shop", namespace="prod", is_install=True)
    out = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out.append((template, doc))
    return tuple(out)


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in render(name) if doc["kind"] == kind]


def one(name: str, kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in objects(name, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {len(found)} rendered"
    return found[0]


def container_env(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def check_crd(doc: dict[str, Any]) -> None:
    """The Prometheus Operator objects, by hand: kind, metadata and the fields the CRD requires."""
    assert doc["metadata"]["name"] and set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert spec["selector"]["matchLabels"]
        assert spec["endpoints"] and all(
            e["port"] and e["path"] == "/metrics" for e in spec["endpoints"]
        )
    else:
        assert spec["groups"], "a PrometheusRule needs groups"
        for group in spec["groups"]:
            assert group["name"] and group["rules"], group
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str | int) and str(rule["expr"]).strip(), rule


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_renders_valid_manifests(name: str) -> None:
    docs = render(name)
    assert docs
    for template, doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            check_crd(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            pytest.fail(f"{template}: {doc['kind']} {doc['metadata']['name']}: {path}: {e.message}")
    kinds = {doc["kind"] for _, doc in docs}
    assert "Secret" not in kinds, "the chart references Secrets, it never creates them"
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget"} <= kinds
    # every ConfigMap a pod mounts is rendered; every Secret it reads is a reference
    config_maps = {d["metadata"]["name"] for d in objects(name, "ConfigMap")}
    for _, doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            for volume in doc["spec"]["template"]["spec"]["volumes"]:
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps, volume


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_lints(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace="prod")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_serve() -> None:
    serve = one("default", "Deployment", "-serve")
    (container,) = serve["spec"]["template"]["spec"]["containers"]
    assert container["args"][:3] == ["serve", "--host", "0.0.0.0"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        container["resources"]["requests"]
        and container["securityContext"]["readOnlyRootFilesystem"]
    )
    env = container_env(serve)
    assert env["NEXTBEST_AUTH"] == "auto" and "NEXTBEST_API_KEYS" not in env
    assert env["NEXTBEST_REDIS_URL"]["secretKeyRef"] == {"name": "nextbest-redis", "key": "url"}
    assert env["NEXTBEST_KAFKA_BROKERS"]["secretKeyRef"]["name"] == "nextbest-kafka"
    assert env["NEXTBEST_IDENTITY_SALT"]["secretKeyRef"]["name"] == "nextbest-identity-salt"
    assert not objects("default", "HorizontalPodAutoscaler")
    assert not objects("default", "ServiceMonitor") and not objects("default", "PrometheusRule")
    assert not [
        d for d in objects("default", "Deployment") if d["metadata"]["name"].endswith("-deliver")
    ]
    # auth on with keys: the keys file is mounted from the Secret, NEXTBEST_API_KEYS points at it
    serve = one("auth-on", "Deployment", "-serve")
    env = container_env(serve)
    assert env["NEXTBEST_AUTH"] == "on" and env["NEXTBEST_CORS_ORIGINS"] == "https://shop.example"
    spec = serve["spec"]["template"]["spec"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "api-keys"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"]["secretName"] == "nextbest-api-keys"
    assert env["NEXTBEST_API_KEYS"] == mount["mountPath"] + "/keys.yaml"
    hpa = one("everything", "HorizontalPodAutoscaler", "-serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert "replicas" not in one("everything", "Deployment", "-serve")["spec"]


@pytest.mark.parametrize("name", ["default", "scale-out"])
def test_dataflow_statefulset(name: str) -> None:
    replicas = VALUE_SETS[name].get("dataflow", {}).get("replicas", 1)
    flow = one(name, "StatefulSet", "-dataflow")
    assert flow["spec"]["replicas"] == replicas
    (container,) = flow["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "run"
    env = container_env(flow)
    headless = one(name, "Service", "-dataflow")
    assert (
        headless["spec"]["clusterIP"] == "None"
        and flow["spec"]["serviceName"] == headless["metadata"]["name"]
    )
    addresses = env["NEXTBEST_ADDRESSES"].split(",")
    assert addresses == [
        f"shop-nextbest-dataflow-{i}.shop-nextbest-dataflow.prod.svc:2101" for i in range(replicas)
    ]
    assert env["NEXTBEST_PROCESS_ID"]["fieldRef"]["fieldPath"].endswith(
        "['apps.kubernetes.io/pod-index']"
    )
    assert env["NEXTBEST_METRICS_PORT"] == "9464"
    # what each pod's `nextbest run` makes of it (its ordinal in, the salt from its Secret)
    from nextbest.cluster import cluster_of
    from nextbest.settings import Settings

    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    for i in range(replicas):
        pod = {**plain, "NEXTBEST_PROCESS_ID": str(i), "NEXTBEST_IDENTITY_SALT": "x" * 32}
        cluster = cluster_of(Settings.from_env(pod))
        assert (cluster.process_id, cluster.processes) == (i, replicas)
        assert cluster.workers == VALUE_SETS[name].get("dataflow", {}).get("workersPerProcess", 1)
        partitions = VALUE_SETS[name].get("dataflow", {}).get("recovery", {}).get("partitions")
        assert cluster.partitions == (partitions or replicas)
    (claim,) = flow["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert env["NEXTBEST_RECOVERY_DIR"].startswith(mount["mountPath"] + "/")


def test_redis_cluster() -> None:
    env = container_env(one("redis-cluster", "StatefulSet", "-dataflow"))
    assert env["NEXTBEST_REDIS_URL"]["secretKeyRef"] == {"name": "redis-cluster", "key": "seed-url"}
    assert env["NEXTBEST_REDIS_CLUSTER"] == "1"
    assert "NEXTBEST_REDIS_CLUSTER" not in container_env(one("default", "StatefulSet", "-dataflow"))


def test_everything_optional() -> None:
    name = "everything"
    data = {d["metadata"]["name"]: d["data"] for d in objects(name, "ConfigMap")}
    settings = {
        "segments": "NEXTBEST_SEGMENTS",
        "actions": "NEXTBEST_ACTIONS",
        "traits": "NEXTBEST_TRAITS",
    }
    settings["recommendations"] = "NEXTBEST_RECOMMENDATIONS"
    for workload in [*objects(name, "Deployment"), *objects(name, "StatefulSet")]:
        env = container_env(workload)
        assert env["NEXTBEST_BATCH_SIZE"] == "500"
        spec = workload["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for key, setting in settings.items():
            directory, file = env[setting].rsplit("/", 1)
            (volume,) = [v for v, path in mounts.items() if path == directory]
            content = data[volumes[volume]["configMap"]["name"]][file]
            assert content == VALUE_SETS[name]["config"][key].rstrip("\n")
    deliver = one(name, "Deployment", "-deliver")
    (container,) = deliver["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["deliver"]
    assert container["envFrom"] == [{"secretRef": {"name": "webhook-secrets"}}]
    webhooks = container_env(deliver)["NEXTBEST_WEBHOOKS"]
    assert data["shop-nextbest-webhooks"][webhooks.rsplit("/", 1)[1]] == WEBHOOKS.rstrip("\n")
    # what deliver will read is a valid webhooks file (the project's own loader)
    config = parse_webhooks(yaml.safe_load(WEBHOOKS), "webhooks.yaml", {"CRM_WEBHOOK_SECRET": "s"})
    assert [d.name for d in config.destinations] == ["crm"]
    monitors = {d["metadata"]["name"]: d for d in objects(name, "ServiceMonitor")}
    assert set(monitors) == {f"shop-nextbest-{c}" for c in ("serve", "dataflow", "deliver")}
    services = objects(name, "Service")
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        (service,) = [
            s
            for s in services
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert monitor["spec"]["endpoints"][0]["port"] in {
            p["name"] for p in service["spec"]["ports"]
        }
    (rule,) = objects(name, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(
        (CHART / "files/prometheus-rules.yaml").read_text()
    )
    dashboard = one(name, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    board = json.loads(dashboard["data"]["nextbest.json"])
    assert board == json.loads((CHART / "files/grafana-dashboard.json").read_text())
    assert board["title"] and isinstance(board["panels"], list)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dataflow": {"replicas": "3"}}, "at '/dataflow/replicas': got string, want integer"),
        ({"serve": {"replica": 2}}, "additional properties 'replica' not allowed"),
        ({"auth": "off"}, "/auth"),
        ({"redis": {"existingSecret": ""}}, "/redis/existingSecret"),
        ({"deliver": {"enabled": True}}, "/deliver/webhooks"),
    ],
)
def test_values_schema_rejects(values: dict[str, Any], message: str) -> None:
    with (
        helm.Chart.load(CHART) as chart,
        pytest.raises(helm.HelmValuesError, match=re.escape(message)),
    ):
        chart.validate_schema(values)
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.render(values, name="shop", namespace="prod")


def test_a_broken_template_fails(tmp_path: Path) -> None:
    """The checks above catch a template that no longer renders, lints or validates."""
    broken = tmp_path / "nextbest"
    shutil.copytree(CHART, broken)
    template = broken / "templates" / "serve-deployment.yaml"
    original = template.read_text()
    template.write_text(
        original.replace("{{ .Values.serve.port }}", "{{ .Values.serve.port.bad }}", 1)
    )
    with helm.Chart.load(broken) as chart, pytest.raises(helm.HelmRenderError):
        chart.render({}, name="shop", namespace="prod")
    assert helm.lint(broken, strict=True)["errors"]
    # renders and lints, but is not a valid Deployment: kubernetes-validate (strict) says so
    template.write_text(original.replace("readinessProbe:", "readinessProbes:", 1))
    with helm.Chart.load(broken) as chart:
        manifest = yaml.safe_load(
            chart.render({}, name="shop")["nextbest/templates/serve-deployment.yaml"]
        )
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
