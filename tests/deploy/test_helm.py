"""The Helm chart, rendered by the real Helm engine (helm-python-sdk) for several value sets,
linted, and every manifest validated against Kubernetes' schemas (strict); custom resources,
which have no schema offline, are checked field by field."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from app.settings import Settings
from tests.deploy.conftest import CHART, DOCKER

KUBERNETES = "1.31.0"
RELEASE, NAMESPACE = "demo", "ml"
FULLNAME = "demo-onnx-serve"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Settings the chart sets itself, or passes through its Secret.
CHART_OWNED = {
    "host",
    "port",
    "grpc_port",
    "model_repository",
    "management_api_key",
    "inference_api_key",
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu": {"gpu": {"enabled": True, "nodeSelector": {"nvidia.com/gpu.present": "true"}}},
    "replicas-rwx": {
        "replicaCount": 3,
        "persistence": {"enabled": True, "accessModes": ["ReadWriteMany"], "storageClass": "nfs"},
    },
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "existing-secret": {"apiKeys": {"existingSecret": "onnx-serve-keys"}},
    "grpc-probes": {"grpc": {"enabled": True, "probes": True}},
    "no-grpc": {"grpc": {"enabled": False, "probes": False}},
    "keys": {"apiKeys": {"management": "m-key", "inference": "i-key"}},
    "memory-budget": {
        "memoryBudget": {"enabled": True, "gpu": "80%"},
        "settings": {"load_on_demand": True},
    },
    "autoscaling": {
        "autoscaling": {"enabled": True, "inflightRequests": {"enabled": True}},
        "persistence": {"enabled": True, "existingClaim": "models-rwx"},
        "settings": {"workers": 2, "max_request_bytes": 134217728},
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


Manifests = dict[str, list[dict[str, Any]]]


def render(chart: helm.Chart, values: dict[str, Any]) -> Manifests:
    """Rendered objects by kind (NOTES.txt left out)."""
    out: Manifests = {}
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.setdefault(doc["kind"], []).append(doc)
    return out


def one(manifests: Manifests, kind: str) -> dict[str, Any]:
    found = manifests.get(kind, [])
    assert len(found) == 1, f"{len(found)} {kind} rendered"
    return found[0]


def deployment_container(manifests: Manifests) -> dict[str, Any]:
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def settings_env(manifests: Manifests) -> dict[str, str]:
    (settings,) = [m for m in manifests["ConfigMap"] if m["metadata"]["name"] == FULLNAME]
    data: dict[str, str] = settings["data"]
    return data


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_renders_lints_and_validates(chart: helm.Chart, name: str) -> None:
    values = VALUE_SETS[name]
    chart.validate_schema(values)
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    manifests = render(chart, values)
    for kind, docs in manifests.items():
        for doc in docs:
            if kind in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{kind} {doc['metadata']['name']}: {exc.message}") from None
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= set(manifests)


def test_settings_configmap_is_valid_for_the_server(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    for values in VALUE_SETS.values():
        env = settings_env(render(chart, values))
        assert all(key.startswith("ONNX_SERVE_") for key in env), env
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = Settings()
        assert settings.host == "0.0.0.0" and settings.port == 8000
        assert str(settings.model_repository) == "/models"
    assert (
        settings_env(render(chart, VALUE_SETS["autoscaling"]))["ONNX_SERVE_MAX_REQUEST_BYTES"]
        == "134217728"
    ), "whole numbers must not turn into 1.34217728e+08"


def test_schema_covers_exactly_the_server_settings(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    documented = schema["properties"]["settings"]["properties"]
    expected = {
        name: prop
        for name, prop in Settings.model_json_schema()["properties"].items()
        if name not in CHART_OWNED
    }
    missing = sorted(set(expected) - set(documented))
    stale = sorted(set(documented) - set(expected))
    assert not missing, f"add {missing} to settings in helm/onnx-serve/values.schema.json"
    assert not stale, f"remove {stale} from settings in helm/onnx-serve/values.schema.json"
    for name, prop in expected.items():
        types = {t["type"] for t in prop.get("anyOf", [prop]) if t.get("type") != "null"}
        assert {documented[name]["type"]} == types, name
    with pytest.raises(helm.HelmValuesError, match="log_levl"):
        chart.validate_schema({"settings": {"log_levl": "debug"}})
    with pytest.raises(helm.HelmValuesError, match="log_level"):
        chart.validate_schema({"settings": {"log_level": "loud"}})


def test_defaults_run_non_root_on_a_read_only_root(chart: helm.Chart) -> None:
    manifests = render(chart, {})
    deployment = one(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = deployment_container(manifests)
    assert container["image"] == "onnx-serve:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "uploads and multi-worker metrics need /tmp"
    assert "/models" not in mounts, "without persistence the image's models are served"
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/v2/health/live", "http"),
        "livenessProbe": ("/v2/health/live", "http"),
        "readinessProbe": ("/v2/health/ready", "http"),
    }
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
    ]
    grace = float(settings_env(manifests)["ONNX_SERVE_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > grace + 5, "SIGKILL before the drain ends"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["resources"]["limits"]["cpu"], "the CPU limit sizes onnxruntime's threads"
    for kind in ("PersistentVolumeClaim", "HorizontalPodAutoscaler", "Secret", *CUSTOM_KINDS):
        assert kind not in manifests, kind
    service = one(manifests, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_gpu_asks_for_a_gpu_and_the_gpu_image(chart: helm.Chart) -> None:
    manifests = render(chart, VALUE_SETS["gpu"])
    container = deployment_container(manifests)
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert container["image"] == "onnx-serve:0.1.0-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["cpu"] == "2", "the other limits stay"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert settings_env(manifests)["ONNX_SERVE_REQUIRE_ACCELERATOR"] == "true"


def test_replicas_share_a_read_write_many_volume_and_poll_it(chart: helm.Chart) -> None:
    manifests = render(chart, VALUE_SETS["replicas-rwx"])
    deployment = one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    claim = one(manifests, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs"
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["mountPath"]: m["name"] for m in deployment_container(manifests)["volumeMounts"]}
    assert mounts["/models"] == "models"
    assert settings_env(manifests)["ONNX_SERVE_REPOSITORY_POLL_SECONDS"] == "10"


def test_replicas_refuse_a_read_write_once_volume(chart: helm.Chart) -> None:
    values = {"replicaCount": 2, "persistence": {"enabled": True}}
    with pytest.raises(helm.HelmError, match="ReadWriteMany"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_the_memory_budget_is_a_share_of_the_pod_memory_limit(chart: helm.Chart) -> None:
    env = settings_env(render(chart, VALUE_SETS["memory-budget"]))
    assert env["ONNX_SERVE_MEMORY_BUDGET"] == "75%"
    assert env["ONNX_SERVE_GPU_MEMORY_BUDGET"] == "80%"
    assert env["ONNX_SERVE_LOAD_ON_DEMAND"] == "true"
    assert "ONNX_SERVE_MEMORY_BUDGET" not in settings_env(render(chart, {}))
    fixed = {"memoryBudget": {"enabled": True, "bytes": "6Gi"}, "resources": {}}
    assert settings_env(render(chart, fixed))["ONNX_SERVE_MEMORY_BUDGET"] == "6Gi"
    # null removes the default limit (values merge into the defaults).
    unlimited = {"memoryBudget": {"enabled": True}, "resources": {"limits": {"memory": None}}}
    with pytest.raises(helm.HelmError, match="resources.limits.memory"):
        chart.render(unlimited, name=RELEASE, namespace=NAMESPACE)


def test_monitoring_resources_match_the_service_and_the_compose_stack(
    chart: helm.Chart,
) -> None:
    manifests = render(chart, VALUE_SETS["monitoring"])
    service = one(manifests, "Service")
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}

    rule = one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    compose_rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == compose_rules, "the chart's alerts drifted from docker/prometheus"

    dashboard = next(
        cm for cm in manifests["ConfigMap"] if cm["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    compose_dashboard = json.loads(
        (DOCKER / "grafana" / "dashboards" / "onnx-serve.json").read_text()
    )
    assert json.loads(dashboard["data"]["onnx-serve.json"]) == compose_dashboard


def test_api_keys_from_an_existing_secret(chart: helm.Chart) -> None:
    manifests = render(chart, VALUE_SETS["existing-secret"])
    assert "Secret" not in manifests
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in deployment_container(manifests)["env"]
    }
    assert env == {
        "ONNX_SERVE_MANAGEMENT_API_KEY": {
            "name": "onnx-serve-keys", "key": "management-api-key", "optional": True
        },
        "ONNX_SERVE_INFERENCE_API_KEY": {
            "name": "onnx-serve-keys", "key": "inference-api-key", "optional": True
        },
    }  # fmt: skip
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_api_keys_given_in_values_go_to_a_secret(chart: helm.Chart) -> None:
    manifests = render(chart, VALUE_SETS["keys"])
    secret = one(manifests, "Secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"management-api-key": "m-key", "inference-api-key": "i-key"}
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in deployment_container(manifests)["env"]}
    assert refs == {secret["metadata"]["name"]}
    assert "m-key" not in json.dumps(manifests["ConfigMap"]), "keys stay out of ConfigMaps"
    annotations = one(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations, "a key change must roll the pods"


def test_autoscaling_on_cpu_and_in_flight_requests(chart: helm.Chart) -> None:
    manifests = render(chart, VALUE_SETS["autoscaling"])
    deployment = one(manifests, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME
    }  # fmt: skip
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "onnx_serve_inflight_requests"
    assert "PersistentVolumeClaim" not in manifests, "an existing claim is used as it is"
    pod = deployment["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "models-rwx"
    assert settings_env(manifests)["ONNX_SERVE_REPOSITORY_POLL_SECONDS"] == "10"


def test_notes_tell_how_to_reach_the_service(chart: helm.Chart) -> None:
    rendered = chart.render(VALUE_SETS["keys"], name=RELEASE, namespace=NAMESPACE)
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    assert f"port-forward service/{FULLNAME} 8000:8000" in notes
    assert "get secret demo-onnx-serve" in notes


def test_grpc_port_is_served_exposed_and_can_carry_the_probes(chart: helm.Chart) -> None:
    manifests = render(chart, {})
    assert settings_env(manifests)["ONNX_SERVE_GRPC_PORT"] == "8001"
    ports = {p["name"]: p for p in one(manifests, "Service")["spec"]["ports"]}
    assert ports["grpc"]["port"] == 8001 and ports["grpc"]["targetPort"] == "grpc"
    assert ports["grpc"]["appProtocol"] == "grpc"

    probed = deployment_container(render(chart, VALUE_SETS["grpc-probes"]))
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert probed[kind]["grpc"] == {"port": 8001}, kind
        assert "httpGet" not in probed[kind]

    off = render(chart, VALUE_SETS["no-grpc"])
    assert settings_env(off)["ONNX_SERVE_GRPC_PORT"] == "0"
    assert [p["name"] for p in one(off, "Service")["spec"]["ports"]] == ["http"]
    assert [p["name"] for p in deployment_container(off)["ports"]] == ["http"]
