"""k8s/: every render is valid Kubernetes (offline JSON schemas, strict) and keeps the invariants the server's
behaviour depends on: gRPC probes on the gRPC port, a grace period that covers the drain, non-root read-only
containers with resources, secrets only by reference outside dev, and names/labels that point at something."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.conftest import RENDERS, Manifest
from tests.deploy.keda import SCHEMAS as CRD_SCHEMAS
from tt_server.config import Settings

# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from 1.30) and
# the newest kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.30", "1.37")
GRPC_PORT = 50051
HTTP_PORT = 8501
OURS = ("tt-server", "tt-worker")
SECRET_NAME = "tt-secrets"
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}

Rendered = dict[str, list[Manifest]]


# --- helpers ---------------------------------------------------------------------------------------------------
def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(docs: list[Manifest]) -> list[Manifest]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def containers(workload: Manifest) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def settings_of(docs: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its envFrom ConfigMaps and literal env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= one(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return env


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels / matchExpressions, or a plain Service selector) matches."""
    if {"matchLabels", "matchExpressions"} & set(selector):
        match, expressions = selector.get("matchLabels", {}), selector.get("matchExpressions", [])
    else:  # a Service's plain label map
        match, expressions = selector, []
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in expressions:
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def pod_labels(docs: list[Manifest]) -> list[dict[str, str]]:
    return [w["spec"]["template"]["metadata"]["labels"] for w in workloads(docs)]


render_names = pytest.mark.parametrize("name", list(RENDERS))
overlays = pytest.mark.parametrize("name", ["dev", "prod"])
no_secret_values = pytest.mark.parametrize("name", ["base", "prod"])


# --- schemas -----------------------------------------------------------------------------------------------------
@render_names
def test_renders_to_manifests(rendered: Rendered, name: str) -> None:
    kinds = {d["kind"] for d in rendered[name]}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


@render_names
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_kinds_match_the_kubernetes_schemas(rendered: Rendered, name: str, version: str) -> None:
    """Strict: an unknown field (a typo, or a field newer than `version`) fails, where the API server would
    drop it or refuse the object. Custom resources are checked by test_custom_resources_match_our_schemas."""
    errors = []
    for doc in rendered[name]:
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{e.message} (a new custom resource needs a schema in tests/deploy/keda.py)")
    assert not errors, "\n".join(errors)


def test_strict_validation_rejects_an_unknown_field(rendered: Rendered) -> None:
    """The validator is not vacuous: a misspelt field in a real manifest fails."""
    deployment = copy.deepcopy(one(rendered["base"], "Deployment", "tt-server"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@render_names
def test_custom_resources_match_our_schemas(rendered: Rendered, name: str) -> None:
    for doc in rendered[name]:
        schema = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            jsonschema.validate(doc, schema)
        if doc["kind"] == "ScaledObject":
            # The HPA behaviour KEDA passes through is the core type: check it with the core schema.
            behavior = doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
            if behavior is not None:
                hpa = {
                    "apiVersion": "autoscaling/v2",
                    "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": "keda-behavior"},
                    "spec": {
                        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                        "maxReplicas": 1,
                        "behavior": behavior,
                    },
                }
                kubernetes_validate.validate(hpa, K8S_VERSIONS[0], strict=True)


def test_our_crd_schema_rejects_a_typo(rendered: Rendered) -> None:
    scaled = copy.deepcopy(one(rendered["base"], "ScaledObject", "tt-worker"))
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])


# --- the server's contract with the kubelet -----------------------------------------------------------------------
@render_names
def test_server_probes_are_grpc_health_on_the_grpc_port(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    server = one(docs, "Deployment", "tt-server")
    (container,) = server["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == GRPC_PORT
    assert settings_of(docs, container)["TT_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert container[probe]["grpc"]["port"] == GRPC_PORT, probe
        # No `service`: the overall status (""), the one the server sets NOT_SERVING when it drains.
        assert container[probe]["grpc"].get("service", "") == "", probe
    # The startup probe covers model preloading: minutes, not the liveness probe's seconds.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@render_names
def test_grace_period_covers_prestop_and_the_servers_drain(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    pod = one(docs, "Deployment", "tt-server")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = settings_of(docs, container)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(settings["TT_DRAIN_DELAY_SECONDS"])
    shutdown = float(settings["TT_SHUTDOWN_GRACE_SECONDS"])
    assert pre_stop > 0 and drain > 0, "both halves of the drain are on"
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + shutdown


@render_names
def test_worker_grace_period_covers_its_shutdown(rendered: Rendered, name: str) -> None:
    """tt-worker hands its jobs back and waits TT_SHUTDOWN_GRACE_SECONDS on SIGTERM before cancelling."""
    docs = rendered[name]
    pod = one(docs, "Deployment", "tt-worker")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["terminationGracePeriodSeconds"] > float(settings_of(docs, container)["TT_SHUTDOWN_GRACE_SECONDS"])


@render_names
def test_configmap_settings_are_known_and_parse(rendered: Rendered, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every TT_* key is a Settings field (pydantic-settings silently ignores unknown ones, so a typo would
    just not apply) and the values parse."""
    for config in find(rendered[name], "ConfigMap"):
        data = config.get("data", {})
        unknown = [k for k in data if k.startswith("TT_") and k[3:].lower() not in Settings.model_fields]
        assert not unknown, f"not settings fields: {unknown}"
        for key in [k for k in os.environ if k.startswith("TT_")]:
            monkeypatch.delenv(key)
        for key, value in data.items():
            monkeypatch.setenv(key, value)
        Settings()


# --- security ----------------------------------------------------------------------------------------------------
@render_names
def test_every_pod_is_non_root_and_locked_down(rendered: Rendered, name: str) -> None:
    for workload in workloads(rendered[name]):
        pod = workload["spec"]["template"]["spec"]
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        skips = " ".join(v for k, v in workload["metadata"].get("annotations", {}).items() if "checkov.io/skip" in k)
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            assert context.get("privileged", False) is False, where
            # Read-only root everywhere, except third-party dev images that say why (a checkov skip).
            assert context["readOnlyRootFilesystem"] is True or "CKV_K8S_22=" in skips, where


@render_names
def test_our_containers_are_read_only_with_scratch_volumes(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    for app in OURS:
        deployment = one(docs, "Deployment", app)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        data_dir = settings_of(docs, container)["TT_DATA_DIR"]
        assert mounts.get(data_dir) in empty_dirs, f"{app}: TT_DATA_DIR {data_dir} is not a writable emptyDir"
        assert mounts.get("/tmp") in empty_dirs, f"{app}: /tmp is not a writable emptyDir"
        assert all(v["emptyDir"].get("sizeLimit") for v in pod["volumes"] if "emptyDir" in v), app


@render_names
def test_every_container_has_requests_and_limits(rendered: Rendered, name: str) -> None:
    for workload in workloads(rendered[name]):
        for container in containers(workload):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(kind, {}))
                assert not missing, f"{workload['metadata']['name']}/{container['name']}: no {kind} for {missing}"
            # Memory cannot be throttled, only OOM-killed: reserve what the limit allows.
            assert resources["requests"]["memory"] == resources["limits"]["memory"], container["name"]


@render_names
def test_service_accounts_mount_no_token(rendered: Rendered, name: str) -> None:
    for account in find(rendered[name], "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False, account["metadata"]["name"]
    for app in OURS:
        pod = one(rendered[name], "Deployment", app)["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == app


@no_secret_values
def test_no_secret_values_outside_dev(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    assert not find(docs, "Secret"), "prod secrets come from outside the repository"
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY|CREDENTIAL|DATABASE_URL|AMQP_URL", re.IGNORECASE)
    for workload in workloads(docs):
        for container in containers(workload):
            literal = [
                e["name"]
                for e in container.get("env", [])
                if "value" in e and secretish.search(e["name"]) and not e["name"].endswith("_FILE")  # a path
            ]
            assert not literal, f"literal secret env values: {literal}"
    for config in find(docs, "ConfigMap"):
        assert not [k for k in config.get("data", {}) if secretish.search(k)], config["metadata"]["name"]
    # No credentials in any URL anywhere (scheme://user:password@host).
    text = repr(docs)
    assert not re.search(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^@\s'\"]+@", text), "a URL with credentials"


@render_names
def test_secret_references_use_tt_secrets(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    keys: set[str] = set()
    for app in OURS:
        (container,) = one(docs, "Deployment", app)["spec"]["template"]["spec"]["containers"]
        refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert {r["name"] for r in refs} == {SECRET_NAME}, app
        env = {e["name"] for e in container["env"]}
        assert {"TT_DATABASE_URL", "TT_AMQP_URL", "TT_PAGE_TOKEN_SECRET", "AWS_ACCESS_KEY_ID"} <= env, app
        keys |= {r["key"] for r in refs}
    for auth in find(docs, "TriggerAuthentication"):
        assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {SECRET_NAME}
        keys |= {r["key"] for r in auth["spec"]["secretTargetRef"]}
    if name == "dev":
        # Dev generates the Secret itself: it must hold every key something refers to, or pods won't start.
        (secret,) = find(docs, "Secret", SECRET_NAME)
        assert keys <= set(secret["data"]), f"missing in the dev Secret: {keys - set(secret['data'])}"


@render_names
def test_auth_tokens_come_from_a_mounted_secret_and_probes_stay_possible(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    pod = one(docs, "Deployment", "tt-server")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = settings_of(docs, container)
    tokens_file = settings["TT_AUTH_TOKENS_FILE"]
    mount = next(m for m in container["volumeMounts"] if tokens_file.startswith(m["mountPath"] + "/"))
    # A directory mount: a subPath mount never sees the Secret's updates, so rotation would need a restart.
    assert "subPath" not in mount and mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "tt-auth-tokens"
    # The kubelet's gRPC probe sends no token and speaks no TLS.
    assert settings["TT_AUTH_PUBLIC_HEALTH"] == "true"
    for app in OURS:
        (app_container,) = one(docs, "Deployment", app)["spec"]["template"]["spec"]["containers"]
        names = set(settings_of(docs, app_container)) | {e["name"] for e in app_container["env"]}
        assert not {n for n in names if n.startswith("TT_TLS_")}, "a TLS-only port fails the gRPC probes"
    if name == "dev":
        (secret,) = find(docs, "Secret", "tt-auth-tokens")
        assert "tokens" in secret["data"]


# --- images ------------------------------------------------------------------------------------------------------
def test_prod_images_are_pinned_by_digest(rendered: Rendered) -> None:
    for workload in workloads(rendered["prod"]):
        for container in containers(workload):
            assert re.fullmatch(r"[^@]+@sha256:[0-9a-f]{64}", container["image"]), container["image"]


@render_names
def test_no_floating_image_tags(rendered: Rendered, name: str) -> None:
    for workload in workloads(rendered[name]):
        for container in containers(workload):
            image = container["image"]
            assert "@sha256:" in image or re.search(r":[^/:]+$", image), f"untagged image {image}"
            assert not image.endswith(":latest"), image


# --- wiring: every name and selector points at something -------------------------------------------------------
@render_names
def test_selectors_match_pods(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    labels = pod_labels(docs)
    for kind, field in (("Service", "selector"), ("PodDisruptionBudget", "selector"), ("NetworkPolicy", "podSelector")):
        for doc in find(docs, kind):
            selector = doc["spec"][field]
            assert any(selects(selector, pod) for pod in labels), f"{kind}/{doc['metadata']['name']} selects no pod"
    for workload in workloads(docs):
        template = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"], template), workload["metadata"]["name"]
        for spread in workload["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert selects(spread["labelSelector"], template), workload["metadata"]["name"]


@render_names
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(rendered: Rendered, name: str) -> None:
    """A `replicas` in a Deployment that an HPA or KEDA scales would be reset by every `kubectl apply`."""
    docs = rendered[name]
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in find(docs, "HorizontalPodAutoscaler")}
    targets |= {s["spec"]["scaleTargetRef"]["name"] for s in find(docs, "ScaledObject")}
    assert "tt-server" in targets
    for deployment in find(docs, "Deployment"):
        scaled = deployment["metadata"]["name"] in targets
        assert ("replicas" in deployment["spec"]) != scaled, deployment["metadata"]["name"]
    for target in targets:
        one(docs, "Deployment", target)


@render_names
def test_worker_scaling_watches_the_jobs_queue(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    (worker,) = one(docs, "Deployment", "tt-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["command"] == ["tt-worker"]
    settings = settings_of(docs, worker)
    for scaled in find(docs, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == settings["TT_AMQP_JOBS_QUEUE"] == "tt.jobs"
        # Target backlog per worker = the jobs one worker takes at once.
        assert trigger["metadata"]["value"] == settings["TT_WORKER_PREFETCH"]
        # Counts unacked (running) jobs too, so busy workers are not scaled away.
        assert trigger["metadata"]["protocol"] == "http"
        one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    if name == "dev":
        assert not find(docs, "ScaledObject"), "dev runs without KEDA"


@render_names
def test_services_speak_grpc(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    plain, headless = one(docs, "Service", "tt-server"), one(docs, "Service", "tt-server-headless")
    assert headless["spec"]["clusterIP"] == "None" and not headless["spec"]["publishNotReadyAddresses"]
    assert plain["spec"].get("clusterIP") != "None"
    for service in (plain, headless):
        grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (GRPC_PORT, "grpc", "grpc")


@render_names
def test_the_http_front_listens_where_the_service_and_the_pod_point(rendered: Rendered, name: str) -> None:
    """TT_HTTP_ADDRESS, the container's `http` port and the Service's `http` port are one port: a mismatch would
    publish a port nothing listens on."""
    docs = rendered[name]
    (container,) = one(docs, "Deployment", "tt-server")["spec"]["template"]["spec"]["containers"]
    assert settings_of(docs, container)["TT_HTTP_ADDRESS"] == f"0.0.0.0:{HTTP_PORT}"
    assert {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"} in container["ports"]
    http = next(p for p in one(docs, "Service", "tt-server")["spec"]["ports"] if p["name"] == "http")
    assert (http["port"], http["targetPort"], http["appProtocol"]) == (HTTP_PORT, "http", "http")


@render_names
def test_network_policies_allow_exactly_the_needed_ports(rendered: Rendered, name: str) -> None:
    def ports(rules: list[dict[str, Any]]) -> set[tuple[int, str]]:
        return {(p["port"], p.get("protocol", "TCP")) for rule in rules for p in rule.get("ports", [])}

    server = one(rendered[name], "NetworkPolicy", "tt-server")["spec"]
    assert set(server["policyTypes"]) == {"Ingress", "Egress"}
    assert ports(server["ingress"]) == {(GRPC_PORT, "TCP"), (HTTP_PORT, "TCP"), (9090, "TCP")}
    # DNS, PostgreSQL, RabbitMQ, S3 (HTTPS); prod (and gpu, built on it) adds AMQPS for managed brokers.
    egress = {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (5672, "TCP"), (443, "TCP")}
    if name in ("prod", "gpu"):
        egress.add((5671, "TCP"))
    assert ports(server["egress"]) == egress
    worker = one(rendered[name], "NetworkPolicy", "tt-worker")["spec"]
    assert ports(worker["ingress"]) == {(9090, "TCP")}
    assert ports(worker["egress"]) == egress


@render_names
def test_disruption_budgets_and_spread_keep_the_server_up(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    assert one(docs, "PodDisruptionBudget", "tt-server")["spec"]["maxUnavailable"] == 1
    pod = one(docs, "Deployment", "tt-server")["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    hpa = one(docs, "HorizontalPodAutoscaler", "tt-server")["spec"]
    assert hpa["minReplicas"] >= (1 if name == "dev" else 2)
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_gpu_overlay_puts_the_server_on_one_gpu(rendered: Rendered) -> None:
    server = one(rendered["gpu"], "Deployment", "tt-server")["spec"]["template"]["spec"]
    (container,) = [c for c in server["containers"] if c["name"] == "tt-server"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert server["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in server["tolerations"]
    # The worker (batch jobs) stays on CPU nodes.
    worker = one(rendered["gpu"], "Deployment", "tt-worker")["spec"]["template"]["spec"]
    assert "nodeSelector" not in worker and "nvidia.com/gpu" not in str(worker)
