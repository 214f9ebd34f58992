"""The image, the compose stack and the Kubernetes manifests agree with the code.

Settings are read through the gateway's own ``load_settings`` from the very
file and variables each container gets, so a port, path, variable name, probe
service or drain time that drifts from what the gateway reads fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.config import Settings
from gateway.server import INFERENCE_SERVICE
from tests.deploy.manifests import (
    CONFIG_VARIABLE,
    DEPLOY,
    K8S,
    OVERLAYS,
    PENDING_SETTINGS,
    REPO,
    SHUTDOWN_MARGIN_S,
    Manifests,
    command_flag,
    compose_config,
    cpu_cores,
    dockerfile,
    effective_settings,
    env_values,
    has_setting,
    port_number,
    setting_name,
    workers_for,
)

GATEWAY = "inference-gateway"
TRITON = "triton"
#: How long after a Triton pod leaves DNS a gateway may still know it, on top
#: of dns_interval_s: endpoint propagation plus the DNS answer's TTL (5 s).
DNS_STALENESS_S = 10
HEALTH_SERVICES = {"", INFERENCE_SERVICE}


def _gateway_settings(manifests: Manifests, workdir: Path) -> Settings:
    container = manifests.container(GATEWAY, "gateway")
    env = env_values(container)
    toml_text = manifests.config_map_file(GATEWAY, "gateway", env[CONFIG_VARIABLE])
    return effective_settings(toml_text, env, workdir / manifests.name)


def _gateway_variables(rendered: dict[str, Manifests]) -> dict[str, set[str]]:
    """Every GATEWAY_* variable set anywhere, and where."""
    found: dict[str, set[str]] = {}
    for name in dockerfile()["ENV"]:
        found.setdefault(name, set()).add("Dockerfile")
    for name in compose_config(None)["services"]["gateway"].get("environment", {}):
        found.setdefault(name, set()).add("compose")
    for overlay, manifests in rendered.items():
        for deployment in manifests.of_kind("Deployment"):
            for container in deployment["spec"]["template"]["spec"]["containers"]:
                for name in env_values(container):
                    found.setdefault(name, set()).add(f"k8s {overlay}")
    return {k: v for k, v in found.items() if k.startswith("GATEWAY_")}


# -- names -----------------------------------------------------------------------


def test_every_gateway_variable_is_a_setting(rendered: dict[str, Manifests]) -> None:
    variables = _gateway_variables(rendered)
    assert CONFIG_VARIABLE in variables
    unknown = {
        name: where
        for name, where in variables.items()
        if name != CONFIG_VARIABLE
        and not has_setting(name)
        and setting_name(name) not in PENDING_SETTINGS
    }
    assert not unknown, f"not settings of gateway.config.Settings: {unknown}"


@pytest.mark.parametrize("setting", sorted(PENDING_SETTINGS))
def test_pending_settings_exist(setting: str) -> None:
    if setting not in Settings.model_fields:
        pytest.skip(
            f"the {setting!r} setting is not in gateway.config.Settings yet: the manifests set "
            f"{PENDING_SETTINGS[setting]}, which the gateway ignores until it exists"
        )


def test_tracing_variables_are_standard_opentelemetry_ones(rendered: dict[str, Manifests]) -> None:
    known = {
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_PROPAGATORS",
    }
    names = set(compose_config(None)["services"]["gateway"].get("environment", {}))
    for manifests in rendered.values():
        names |= set(env_values(manifests.container(GATEWAY, "gateway")))
    otel = {n for n in names if n.startswith("OTEL_")}
    assert otel, "tracing is not configured"
    assert {n for n in otel if not n.startswith("OTEL_BSP_")} <= known


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_variable_references_come_after_their_definitions(
    rendered: dict[str, Manifests], overlay: str
) -> None:
    # Kubernetes expands $(NAME) only from variables defined earlier in the list.
    for deployment in (GATEWAY, TRITON):
        for container in rendered[overlay].pod_spec(deployment)["containers"]:
            defined: set[str] = set()
            for entry in container.get("env", []):
                for ref in re.findall(r"\$\(([A-Z0-9_]+)\)", str(entry.get("value", ""))):
                    assert ref in defined, f"{entry['name']} uses $({ref}) before it is defined"
                defined.add(entry["name"])


# -- Kubernetes: the gateway ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_loads_and_ports_agree(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    manifests = rendered[overlay]
    settings = _gateway_settings(manifests, tmp_path)
    container = manifests.container(GATEWAY, "gateway")
    assert settings.host == "0.0.0.0"
    assert port_number(container, "grpc") == settings.port
    assert settings.metrics_port is not None
    assert port_number(container, "metrics") == settings.metrics_port
    # Admin: on the pod's loopback, declared nowhere, open to no one.
    assert settings.admin_host == "127.0.0.1"
    declared = {p["containerPort"] for p in container["ports"]}
    assert settings.admin_port not in declared
    assert settings.admin_token is not None, "the admin token comes from the Secret"
    service = manifests.get("Service", GATEWAY)
    for port in service["spec"]["ports"]:
        assert port_number(container, port["targetPort"]) in (settings.port, settings.metrics_port)
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_health_service(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    manifests = rendered[overlay]
    settings = _gateway_settings(manifests, tmp_path)
    container = manifests.container(GATEWAY, "gateway")
    services = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        grpc = container[probe]["grpc"]
        assert port_number(container, grpc["port"]) == settings.port, probe
        services[probe] = grpc.get("service", "")
    assert set(services.values()) <= HEALTH_SERVICES
    # Ready only while a model is: and NOT_SERVING from the first moment of a drain.
    assert services["readinessProbe"] == INFERENCE_SERVICE
    assert services["livenessProbe"] == "" and services["startupProbe"] == ""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    manifests = rendered[overlay]
    settings = _gateway_settings(manifests, tmp_path)
    pod = manifests.pod_spec(GATEWAY)
    pre_stop = manifests.container(GATEWAY, "gateway")["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_delay_s = float(getattr(settings, "drain_delay_s", 0.0))  # a setting to come
    needed = pre_stop + drain_delay_s + settings.grace_period_s + SHUTDOWN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop "
        f"{pre_stop} + drain_delay_s {drain_delay_s} + grace_period_s {settings.grace_period_s}"
        f" + {SHUTDOWN_MARGIN_S} s margin"
    )
    strategy = manifests.get("Deployment", GATEWAY)["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0, "a rollout must not drop capacity"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_match_the_cpu_request(rendered: dict[str, Manifests], overlay: str) -> None:
    container = rendered[overlay].container(GATEWAY, "gateway")
    env = env_values(container)
    assert "GATEWAY_WORKERS" in env, "the manifests set the worker count explicitly"
    resources = container["resources"]
    request = resources["requests"]["cpu"]
    assert int(env["GATEWAY_WORKERS"]) == workers_for(request), (
        f"GATEWAY_WORKERS={env['GATEWAY_WORKERS']} but the CPU request is {request}: "
        "one worker process per requested CPU, rounded up"
    )
    assert cpu_cores(resources["limits"]["cpu"]) == cpu_cores(request)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_finds_every_triton_pod_through_the_headless_service(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    manifests = rendered[overlay]
    settings = _gateway_settings(manifests, tmp_path)
    [endpoint] = settings.triton_endpoints
    match = re.fullmatch(r"dns:///([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", endpoint)
    assert match, f"{endpoint} is not a dns:/// endpoint"
    service = manifests.get("Service", match.group(1))
    assert service["spec"]["clusterIP"] == "None", "a headless Service lists every pod"
    triton = manifests.container(TRITON, "triton")
    by_port = {p["port"]: p for p in service["spec"]["ports"]}
    grpc = by_port[int(match.group(2))]
    assert port_number(triton, grpc["targetPort"]) == command_flag(triton["args"], "--grpc-port")
    assert settings.triton_metrics_port == port_number(triton, "metrics")
    assert settings.triton_metrics_port == command_flag(triton["args"], "--metrics-port")
    selector = service["spec"]["selector"]
    labels = manifests.get("Deployment", TRITON)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_leaves_dns_before_it_stops(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    manifests = rendered[overlay]
    settings = _gateway_settings(manifests, tmp_path)
    triton = manifests.container(TRITON, "triton")
    pre_stop = triton["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= settings.dns_interval_s + DNS_STALENESS_S
    exit_timeout = command_flag(triton["args"], "--exit-timeout-secs")
    grace = manifests.pod_spec(TRITON)["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + exit_timeout + SHUTDOWN_MARGIN_S


def test_triton_gets_a_gpu_in_prod_and_none_in_dev(rendered: dict[str, Manifests]) -> None:
    prod = rendered["prod"]
    limits = prod.container(TRITON, "triton")["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    pod = prod.pod_spec(TRITON)
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    dev = rendered["dev"]
    assert "nvidia.com/gpu" not in dev.container(TRITON, "triton")["resources"]["limits"]
    assert "nodeSelector" not in dev.pod_spec(TRITON)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered: dict[str, Manifests], overlay: str) -> None:
    manifests = rendered[overlay]
    for account in manifests.of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    assert not manifests.of_kind("RoleBinding") and not manifests.of_kind("ClusterRoleBinding")
    for deployment in (GATEWAY, TRITON):
        pod = manifests.pod_spec(deployment)
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
    namespace = manifests.of_kind("Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_open_only_the_listed_paths(
    rendered: dict[str, Manifests], overlay: str, tmp_path: Path
) -> None:
    manifests = rendered[overlay]
    settings = _gateway_settings(manifests, tmp_path)
    gateway = manifests.container(GATEWAY, "gateway")
    triton = manifests.container(TRITON, "triton")
    gateway_labels = _pod_labels(manifests, GATEWAY)
    triton_labels = _pod_labels(manifests, TRITON)

    policy = manifests.get("NetworkPolicy", GATEWAY)["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    opened = {port_number(gateway, p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert opened == {settings.port, settings.metrics_port}
    assert settings.admin_port not in opened
    to_triton = [
        rule
        for rule in policy["egress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels", {}).items() <= triton_labels.items()
            and "namespaceSelector" not in peer
            for peer in rule["to"]
        )
    ]
    assert {p["port"] for rule in to_triton for p in rule["ports"]} == {
        port_number(triton, "grpc"),
        port_number(triton, "metrics"),
    }

    policy = manifests.get("NetworkPolicy", TRITON)["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= triton_labels.items()
    from_gateway = [
        rule
        for rule in policy["ingress"]
        if any(
            peer.get("podSelector", {}).get("matchLabels", {}).items() <= gateway_labels.items()
            for peer in rule["from"]
        )
    ]
    assert {port_number(triton, p["port"]) for r in from_gateway for p in r["ports"]} == {
        port_number(triton, "grpc"),
        port_number(triton, "metrics"),
    }


def _pod_labels(manifests: Manifests, deployment: str) -> dict[str, str]:
    return dict(manifests.get("Deployment", deployment)["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_autoscaler_select_their_deployments(
    rendered: dict[str, Manifests], overlay: str
) -> None:
    manifests = rendered[overlay]
    for budget in manifests.of_kind("PodDisruptionBudget"):
        name = budget["metadata"]["name"]
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= _pod_labels(manifests, name).items()
    for hpa in manifests.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and manifests.has("Deployment", target["name"])
        assert "replicas" not in manifests.get("Deployment", target["name"])["spec"], (
            "the autoscaler owns the replica count"
        )


def test_autoscaler_metric_is_exported_and_served_by_the_adapter_rule(
    rendered: dict[str, Manifests],
) -> None:
    hpa = rendered["prod"].get("HorizontalPodAutoscaler", GATEWAY)
    pod_metrics = {
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    }
    assert pod_metrics == {"gateway_queue_depth"}
    source = (REPO / "gateway" / "metrics.py").read_text()
    exported = set(re.findall(r'"(gateway_[a-z_]+)"', source))
    assert pod_metrics <= exported, f"gateway/metrics.py exports no {pod_metrics - exported}"
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {}
    for rule in values["rules"]["custom"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        series = re.match(r"([a-z_]+)\{", rule["seriesQuery"])
        assert series and series.group(1) in exported
        served[rule["name"]["as"]] = series.group(1)
    assert pod_metrics <= set(served)


def test_pod_monitors_scrape_the_metrics_ports(with_operator: Manifests) -> None:
    monitors = with_operator.of_kind("PodMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {GATEWAY, TRITON}
    for monitor in monitors:
        name = monitor["metadata"]["name"]
        labels = _pod_labels(with_operator, name)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        containers = with_operator.pod_spec(name)["containers"]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert any(port_number(c, endpoint["port"]) for c in containers)


def test_example_models_component_ships_every_file() -> None:
    component = yaml.safe_load((DEPLOY / "models" / "kustomization.yaml").read_text())
    [generator] = component["configMapGenerator"]
    keys = dict(entry.split("=", 1) for entry in generator["files"])
    repository = DEPLOY / "models" / "repository"
    files = {str(p.relative_to(DEPLOY / "models")) for p in repository.rglob("*") if p.is_file()}
    files = {f for f in files if "__pycache__" not in f}
    assert set(keys.values()) == files
    patch = yaml.safe_load(component["patches"][0]["patch"])
    [volume] = patch["spec"]["template"]["spec"]["volumes"]
    paths = {item["key"]: item["path"] for item in volume["configMap"]["items"]}
    assert {k: "repository/" + p for k, p in paths.items()} == keys
