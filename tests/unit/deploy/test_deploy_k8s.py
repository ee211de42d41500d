"""The Kubernetes overlays render, validate against a pinned Kubernetes, and stay apart.

Every overlay is rendered with ``kubectl kustomize`` and every object is validated with
kubernetes-validate (strict: unknown fields are errors) against ``K8S_VERSION``. Only the CRD
kinds in ``CRD_KINDS`` are exempt from the schemas, and those are checked structurally here.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from compression.profiles import DeviceProfile

pytestmark = pytest.mark.unit

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
OVERLAYS = ("gpu", "cpu", "edge")
K8S_VERSION = "1.30"  # a version kubernetes-validate ships schemas for
PROFILE_LABEL = "slimserve.io/profile"

# The only kinds without an upstream Kubernetes schema: checked by check_servicemonitor().
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

EXPECTED_KINDS = {
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ServiceMonitor",
}

# Keys a profile YAML in the ConfigMap may use: the engine's own (it rejects unknown keys).
PROFILE_KEYS = set(DeviceProfile.model_fields)


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    return exe


def render(path: Path) -> list[dict]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs, f"{path} rendered no objects"
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_labels(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]


def container(docs: list[dict]) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (plain map, or matchLabels/matchExpressions) matches labels."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        match_labels = selector.get("matchLabels") or {}
        exprs = selector.get("matchExpressions") or []
    else:
        match_labels, exprs = selector, []
    assert match_labels or exprs, "an empty selector matches every pod"
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in exprs:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_SUFFIX = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(value) -> float:
    """A Kubernetes quantity ("250m", "2", "768Mi") as a number."""
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    m = re.fullmatch(r"([0-9.]+)([kMG]i?)?", text)
    assert m, f"unexpected quantity {value!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2) or ""]


def check_servicemonitor(obj: dict) -> None:
    """Structural check of a monitoring.coreos.com/v1 ServiceMonitor (the CRD's required shape)."""
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}, set(obj)
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    allowed = {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
        "scrapeProtocols",
    }
    assert set(spec) <= allowed, f"unknown ServiceMonitor spec keys: {set(spec) - allowed}"
    assert isinstance(spec["selector"], dict) and spec["selector"].get("matchLabels")
    assert all(isinstance(v, str) for v in spec["selector"]["matchLabels"].values())
    assert all(isinstance(v, str) for v in spec.get("podTargetLabels", []))
    endpoints = spec["endpoints"]
    assert isinstance(endpoints, list) and endpoints
    endpoint_keys = {
        "port",
        "targetPort",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "honorLabels",
        "relabelings",
        "metricRelabelings",
    }
    duration = re.compile(r"^(\d+(ms|s|m|h))+$")
    for ep in endpoints:
        assert set(ep) <= endpoint_keys, f"unknown endpoint keys: {set(ep) - endpoint_keys}"
        assert isinstance(ep.get("port"), str), "endpoints scrape a named Service port"
        for key in ("interval", "scrapeTimeout"):
            if key in ep:
                assert duration.match(ep[key]), f"{key}={ep[key]!r} is not a duration"
        assert ep.get("path", "/metrics").startswith("/")


# --- rendering and schema validation ----------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_expected_kinds(rendered, overlay):
    kinds = [d["kind"] for d in rendered[overlay]]
    assert set(kinds) == EXPECTED_KINDS
    for kind in EXPECTED_KINDS - {"ConfigMap"}:
        assert kinds.count(kind) == 1, kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(rendered, overlay):
    for obj in rendered[overlay]:
        key = (obj["apiVersion"], obj["kind"])
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        if key in CRD_KINDS:
            check_servicemonitor(obj)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{where} does not validate against {K8S_VERSION}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            pytest.fail(f"{where}: {err.message} (only {sorted(CRD_KINDS)} are allow-listed)")


def test_validator_rejects_broken_objects(rendered):
    """The schema check is not vacuous: an unknown field and a wrong type both fail."""
    deployment = one(rendered["cpu"], "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbes"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    broken_sm = copy.deepcopy(one(rendered["cpu"], "ServiceMonitor"))
    broken_sm["spec"]["endpoints"][0]["prot"] = "http"
    with pytest.raises(AssertionError):
        check_servicemonitor(broken_sm)


# --- selectors: each overlay picks only its own pods ------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_pick_only_own_pods(rendered, overlay):
    docs = rendered[overlay]
    own = pod_labels(docs)
    assert own.get(PROFILE_LABEL) == overlay
    others = [pod_labels(rendered[o]) for o in OVERLAYS if o != overlay]
    other_services = [one(rendered[o], "Service")["metadata"]["labels"] for o in OVERLAYS]
    other_services.remove(one(docs, "Service")["metadata"]["labels"])

    selectors = {
        "Deployment": one(docs, "Deployment")["spec"]["selector"],
        "Service": one(docs, "Service")["spec"]["selector"],
        "PodDisruptionBudget": one(docs, "PodDisruptionBudget")["spec"]["selector"],
    }
    for kind, selector in selectors.items():
        assert selects(selector, own), f"{overlay} {kind} does not select its own pods"
        for labels in others:
            assert not selects(selector, labels), f"{overlay} {kind} selects {labels}"

    # The ServiceMonitor selects Services: its own one only.
    sm_selector = one(docs, "ServiceMonitor")["spec"]["selector"]
    assert selects(sm_selector, one(docs, "Service")["metadata"]["labels"])
    for labels in other_services:
        assert not selects(sm_selector, labels), f"{overlay} ServiceMonitor selects {labels}"

    # The HPA scales this overlay's Deployment.
    deployment = one(docs, "Deployment")
    target = one(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]


def test_overlays_can_share_a_namespace(rendered):
    names = [(d["kind"], d["metadata"]["name"]) for o in OVERLAYS for d in rendered[o]]
    assert len(names) == len(set(names)), "two overlays render an object of the same name"


# --- pod spec: probes, ports, resources, security ---------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports(rendered, overlay):
    docs = rendered[overlay]
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 3000, "grpc": 8001}
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] in ("/livez", "/readyz")
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 600, f"startup probe allows only {budget} s for the first start"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ("http", 3000)

    service_ports = one(docs, "Service")["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in service_ports] == [("http", 3000), ("grpc", 8001)]
    endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["port"] == "http"
    assert endpoint.get("path", "/metrics") == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources(rendered, overlay):
    res = container(rendered[overlay])["resources"]
    for key in ("cpu", "memory"):
        assert quantity(res["requests"][key]) <= quantity(res["limits"][key]), key
    spec = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    if overlay == "gpu":
        assert int(res["limits"]["nvidia.com/gpu"]) == 1
        assert spec.get("nodeSelector"), "gpu pods need a node selector"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    else:
        assert "nvidia.com/gpu" not in res.get("limits", {})
        assert "nvidia.com/gpu" not in res.get("requests", {})


def test_edge_is_smaller_than_cpu(rendered):
    edge = container(rendered["edge"])["resources"]
    cpu = container(rendered["cpu"])["resources"]
    for part in ("requests", "limits"):
        for key in ("cpu", "memory"):
            assert quantity(edge[part][key]) < quantity(cpu[part][key]), (part, key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(rendered, overlay):
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1000) != 0
    sc = container(rendered[overlay])["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    if sc.get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"] for m in container(rendered[overlay])["volumeMounts"]}
        assert {"/data", "/tmp"} <= mounts, "a read-only root needs writable /data and /tmp"


# --- configuration: profile, data directory, admin token --------------------------------------


def _config(docs: list[dict]) -> tuple[dict, dict]:
    c = container(docs)
    names = [e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e]
    assert len(names) == 1
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == names[0]
    )
    return c, settings["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_profile_and_settings(rendered, overlay):
    docs = rendered[overlay]
    c, env = _config(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}

    # SLIMSERVE_PROFILE names this overlay's profile file, in the mounted profiles ConfigMap.
    profiles_dir = env["SLIMSERVE_PROFILES_DIR"]
    profile_path = Path(env["SLIMSERVE_PROFILE"])
    assert str(profile_path.parent) == profiles_dir
    assert profile_path.name == f"{overlay}.yaml"
    profiles_cm = volumes[mounts[profiles_dir]]["configMap"]["name"]
    profiles = next(d for d in docs if d["metadata"]["name"] == profiles_cm)["data"]
    assert yaml.safe_load(profiles[profile_path.name])["name"] == overlay

    # Data directory on a volume; BentoML's home inside it.
    assert env["SLIMSERVE_HOME"] == "/data"
    assert "/data" in mounts
    assert env["BENTOML_HOME"].startswith("/data/")
    assert int(env["SLIMSERVE_WORKERS"]) >= 1
    assert int(env["SLIMSERVE_THREADS"]) <= max(1, int(quantity(c["resources"]["limits"]["cpu"])))
    assert env["SLIMSERVE_MODELS"]

    # The admin token comes from a Secret, never from the ConfigMap.
    assert not any("TOKEN" in k for k in env)
    token = next(e for e in c.get("env", []) if e["name"] == "SLIMSERVE_ADMIN_TOKEN")
    assert "secretKeyRef" in token["valueFrom"]


def test_profile_yamls_use_known_keys():
    files = sorted((K8S / "base" / "profiles").glob("*.yaml"))
    assert {f.stem for f in files} == set(OVERLAYS)
    for f in files:
        data = yaml.safe_load(f.read_text())
        assert set(data) <= PROFILE_KEYS, f"{f.name}: unknown keys {set(data) - PROFILE_KEYS}"
        assert data["name"] == f.stem
        assert data["device"] in ("cpu", "cuda")
        assert 0 <= data["max_drop"] <= 1
        assert data["time_limit_s"] > 0
    assert yaml.safe_load((K8S / "base" / "profiles" / "gpu.yaml").read_text())["device"] == "cuda"


def test_profile_yamls_load_in_the_engine():
    profiles = pytest.importorskip("compression.profiles")
    for f in sorted((K8S / "base" / "profiles").glob("*.yaml")):
        profile = profiles.load_profile_file(f)
        assert profile.name == f.stem


def test_hpa_scales_on_inflight_requests(rendered):
    for overlay in OVERLAYS:
        hpa = one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        (metric,) = hpa["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] == "slimserve_inflight_requests"
        assert quantity(metric["pods"]["target"]["averageValue"]) > 0


def _cpu_with_component(tmp_path, component: str) -> list[dict]:
    """The cpu overlay with ``k8s/components/<component>`` added, rendered by kustomize and
    validated offline (strict); its documents."""
    overlay = tmp_path / f"with-{component}"
    overlay.mkdir()
    rel = os.path.relpath(K8S, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}/overlays/cpu\ncomponents:\n  - {rel}/components/{component}\n"
    )
    out = subprocess.run(
        [_kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for obj in docs:
        if obj["kind"] != "ServiceMonitor":  # a CRD: checked by check_servicemonitor
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return docs


def test_variant_cache_component_shares_a_claim_across_replicas(tmp_path):
    """The optional component: a ReadWriteMany claim mounted where SLIMSERVE_VARIANT_CACHE points."""
    docs = _cpu_with_component(tmp_path, "variant-cache")
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and "SLIMSERVE_HOME" in d.get("data", {})
    )
    mount = settings["data"]["SLIMSERVE_VARIANT_CACHE"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container(docs)["volumeMounts"]}
    assert mounts[volume["name"]] == mount


def test_fleet_worker_component_compresses_off_the_serving_pods(tmp_path):
    """The optional component: a worker Deployment compresses for the fleet; serving pods run
    with jobs off and read the same store, and no Service or budget selects the worker."""
    docs = _cpu_with_component(tmp_path, "fleet-worker")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    worker = deployments.pop("slimserve-worker")
    (serving,) = deployments.values()
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and "SLIMSERVE_HOME" in d.get("data", {})
    )
    assert settings["data"]["SLIMSERVE_JOBS"] == "false"
    assert settings["data"]["SLIMSERVE_VARIANT_CACHE"].startswith("s3://")
    pods = [d["spec"]["template"]["spec"] for d in (serving, worker)]
    for pod in pods:  # the same settings and the store's credentials in both
        env_from = pod["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": settings["metadata"]["name"]}} in env_from
        assert {"secretRef": {"name": "slimserve-store", "optional": True}} in env_from
    main = pods[1]["containers"][0]
    assert main["args"][0] == "worker" and "--metrics-port" in main["args"]
    port = int(main["args"][main["args"].index("--metrics-port") + 1])
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in main["ports"]
    assert main["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert {"name": "SLIMSERVE_JOBS", "value": "true"} in main["env"]
    assert quantity(main["resources"]["requests"]["cpu"]) >= 1
    # Nothing that routes traffic or budgets disruption selects the worker's pods.
    labels = worker["spec"]["template"]["metadata"]["labels"]
    for obj in docs:
        if obj["kind"] in ("Service", "PodDisruptionBudget"):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert not all(labels.get(k) == v for k, v in selector.items()), obj["kind"]
    # On the serving pods' hardware: variants are keyed by it.
    (term,) = pods[1]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "node.kubernetes.io/instance-type"
    serving_labels = serving["spec"]["template"]["metadata"]["labels"]
    assert all(serving_labels.get(k) == v for k, v in term["labelSelector"]["matchLabels"].items())
