"""The Kubernetes manifests (cluster/generate.py), checked offline as a platform team would before
applying them: each document against Kubernetes' own schemas (kubernetes-validate, strict: unknown
fields rejected), the RayService against KubeRay's CRD of a stated release (tests/data/kuberay), every
pod's requests against the allocatable resources of its node type, and the points of issue 28
(image pinned, Secrets required, the model volume defined and filled, NetworkPolicy, Ingress). Each
validator is also shown to reject a broken manifest."""

import copy
import functools
import hashlib
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helpers import generator

K8S_VERSION = "1.34.0"  # the Kubernetes release whose schemas the manifests are validated against
KUBERAY = "v1.6.1"
CRD = Path(f"tests/data/kuberay/ray.io_rayservices-{KUBERAY}.yaml")
CRD_BLOB = "631308373b83fbd537dd6bfbb391bd82e48ff083"  # git blob of that path at the tag
GEN = generator()
FILES = {name: Path("cluster") / name for name in GEN.manifests()}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(FILES[name].read_text()) if d]


def every_doc() -> list[dict]:
    return [d for name in FILES for d in documents(name)]


def by_kind(kind: str) -> dict:
    (doc,) = [d for d in every_doc() if d["kind"] == kind]
    return doc


def k8s_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _closed(schema):
    """The CRD's structural schema as the API server applies it: an object with `properties` and no
    `x-kubernetes-preserve-unknown-fields` takes no other fields (kubectl's default field validation
    is Strict, so an unknown field is an error, not silently pruned)."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    return schema


@functools.cache
def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return jsonschema.Draft7Validator(_closed(v1["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator().iter_errors(doc)]


# --- schemas ------------------------------------------------------------------------------------

def test_the_kuberay_crd_is_the_stated_release_unchanged():
    data = CRD.read_bytes()
    assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == CRD_BLOB


@pytest.mark.parametrize("name", [n for n in FILES if n != "rayservice.yaml"])
def test_every_kubernetes_document_validates_strictly(name):
    docs = documents(name)
    assert docs
    for doc in docs:
        k8s_validate(doc)


def test_the_rayservice_validates_against_kuberays_crd():
    rayservice = by_kind("RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert crd_errors(rayservice) == []
    # The GCS fault-tolerance variant (--redis-address) too.
    with_redis = GEN.rayservice(GEN.Options(redis_address="redis.example.internal:6379"))
    assert crd_errors(with_redis) == []
    assert with_redis["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisAddress"]


def test_the_rayservices_pods_validate_as_kubernetes_pods():
    """KubeRay's CRD embeds the pod spec's schema; Kubernetes' own (strict) checks it again."""
    cluster = by_kind("RayService")["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        k8s_validate({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "x", **template["metadata"]}, "spec": template["spec"]})


def test_the_validators_reject_broken_manifests():
    """Both checks can fail: a misspelt field, a wrong type, a missing required field."""
    job = copy.deepcopy(by_kind("Job"))
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(job)
    claim = copy.deepcopy(by_kind("PersistentVolumeClaim"))
    claim["spec"]["accessModes"] = "ReadOnlyMany"  # not a list
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(claim)

    rayservice = by_kind("RayService")
    typo = copy.deepcopy(rayservice)
    typo["spec"]["rayClusterConfig"]["workerGroupSpec"] = typo["spec"]["rayClusterConfig"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in crd_errors(typo))
    wrong_type = copy.deepcopy(rayservice)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "two"
    assert any("minReplicas" in e for e in crd_errors(wrong_type))
    no_head = copy.deepcopy(rayservice)
    del no_head["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert crd_errors(no_head)
    bad_pod = copy.deepcopy(rayservice)
    bad_pod["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert crd_errors(bad_pod)


def test_the_committed_manifests_are_current():
    for name, docs in GEN.manifests().items():
        assert documents(name) == docs, f"{name} is stale: run `python cluster/generate.py`"


# --- resources ----------------------------------------------------------------------------------

def quantity(value) -> float:
    """A Kubernetes quantity in cores or GiB (the suffixes the manifests use)."""
    value = str(value)
    units = {"m": 1e-3, "Ki": 2 ** -20, "Mi": 2 ** -10, "Gi": 1, "Ti": 2 ** 10}
    for suffix, scale in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def pod_requests(containers: list[dict]) -> dict[str, float]:
    total = {"cpu": 0.0, "memory_gib": 0.0, "gpus": 0.0}
    for c in containers:
        requests = c["resources"].get("requests") or c["resources"]["limits"]
        total["cpu"] += quantity(requests.get("cpu", 0))
        total["memory_gib"] += quantity(requests.get("memory", "0Gi"))
        total["gpus"] += quantity(requests.get("nvidia.com/gpu", 0))
    return total


def shortfall(containers: list[dict], node_type: str) -> dict[str, float]:
    """What the pod asks beyond what its node type leaves it (allocatable less daemonsets)."""
    node, headroom = GEN.NODE_TYPES[node_type], GEN.DAEMONSET_HEADROOM
    room = {k: node[k] - headroom.get(k, 0) for k in node}
    return {k: v - room[k] for k, v in pod_requests(containers).items() if v > room[k] + 1e-9}


def pods() -> list[tuple[str, list[dict], str]]:
    """(what, containers, node type) for every pod the manifests make: the head with KubeRay's
    autoscaler sidecar, the GPU workers, the model-filling Job."""
    cluster = by_kind("RayService")["spec"]["rayClusterConfig"]
    autoscaler = {"resources": cluster["autoscalerOptions"]["resources"]}
    out = [("head", cluster["headGroupSpec"]["template"]["spec"]["containers"] + [autoscaler], GEN.HEAD_NODE)]
    for group in cluster["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        out.append((group["groupName"], spec["containers"], spec["nodeSelector"]["node.kubernetes.io/instance-type"]))
    out.append(("fill job", by_kind("Job")["spec"]["template"]["spec"]["containers"], GEN.HEAD_NODE))
    return out


def test_every_pod_fits_its_node_types_allocatable_resources():
    for what, containers, node_type in pods():
        assert node_type in GEN.NODE_TYPES
        assert shortfall(containers, node_type) == {}, what
    (gpu,) = [p for p in pods() if p[0] == "gpu"]
    assert gpu[2] == GEN.GPU_NODE and pod_requests(gpu[1])["gpus"] == 1


def test_the_fit_check_refuses_the_old_worker():
    """The shipped worker asked 8 CPUs and 56 GiB of an 8-vCPU node: Pending forever."""
    old = [{"resources": {"requests": {"cpu": "8", "memory": "56Gi", "nvidia.com/gpu": "1"}}}]
    assert set(shortfall(old, GEN.GPU_NODE)) == {"cpu"}
    two_gpus = [{"resources": {"requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "2"}}}]
    assert set(shortfall(two_gpus, GEN.GPU_NODE)) == {"gpus"}


def test_gpu_workers_select_the_gpu_node_type_and_tolerate_its_taint():
    cluster = by_kind("RayService")["spec"]["rayClusterConfig"]
    spec = cluster["workerGroupSpecs"][0]["template"]["spec"]
    assert spec["nodeSelector"] == {"node.kubernetes.io/instance-type": GEN.GPU_NODE}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert "nodeSelector" not in cluster["headGroupSpec"]["template"]["spec"]  # the head: any CPU node


# --- issue 28's points --------------------------------------------------------------------------

def containers_of(doc) -> list[dict]:
    found = []
    if isinstance(doc, dict):
        if "containers" in doc:
            found += doc["containers"]
        for v in doc.values():
            found += containers_of(v)
    elif isinstance(doc, list):
        for v in doc:
            found += containers_of(v)
    return found


def secret_refs(doc) -> list[dict]:
    if isinstance(doc, dict):
        return ([doc["secretKeyRef"]] if "secretKeyRef" in doc else []) + \
            [r for v in doc.values() for r in secret_refs(v)]
    if isinstance(doc, list):
        return [r for v in doc for r in secret_refs(v)]
    return []


def test_images_are_pinned_in_a_named_registry():
    images = {c["image"] for d in every_doc() for c in containers_of(d)}
    assert images == {GEN.IMAGE}
    assert GEN.check_image("123456789012.dkr.ecr.us-west-2.amazonaws.com/graphserve:0.1.0")
    assert GEN.check_image("ghcr.io/acme/graphserve@sha256:" + "0" * 64)
    assert GEN.check_image("localhost:5000/graphserve:1")
    for bad in ("graphserve:latest", "graphserve:0.1.0", "acme/graphserve:0.1.0",
                "ghcr.io/acme/graphserve", "ghcr.io/acme/graphserve:latest", "ghcr.io/acme/graphserve@md5:x"):
        with pytest.raises(ValueError):
            GEN.check_image(bad)


def test_secrets_are_required_and_every_ray_container_has_the_api_key():
    refs = [r for d in every_doc() for r in secret_refs(d)]
    assert refs and not any(r.get("optional") for r in refs)
    assert {r["name"] for r in refs} == {"graphserve", "graphserve-hf-token"}
    for c in containers_of(by_kind("RayService")):
        (key,) = [e for e in c["env"] if e["name"] == "GRAPHSERVE_API_KEY"]
        assert key["valueFrom"]["secretKeyRef"] == {"name": "graphserve", "key": "api-key"}
    # and the router itself refuses to start without it (a Secret emptied later, a renamed var)
    profile = yaml.safe_load(by_kind("RayService")["spec"]["serveConfigV2"])
    router = profile["applications"][0]["args"]["router"]
    assert router["require_api_key"] is True and router["api_key_env"] == "GRAPHSERVE_API_KEY"


def test_the_model_volume_is_defined_read_only_for_ray_and_filled_by_the_job():
    claim = by_kind("PersistentVolumeClaim")
    assert "ReadOnlyMany" in claim["spec"]["accessModes"]
    rayservice, job = by_kind("RayService"), by_kind("Job")
    cluster = rayservice["spec"]["rayClusterConfig"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        (volume,) = template["spec"]["volumes"]
        assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
        assert all(m["readOnly"] for c in template["spec"]["containers"] for m in c["volumeMounts"])
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # The Job fills exactly the folders the profile reads, from the stated repositories.
    profile = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]["args"]
    sources = {t["model_source"] for t in profile["tiers"]} | {profile["embedder"]["model_source"]}
    assert sources == {f"/models/{folder}" for folder in GEN.MODELS}
    fill = job["spec"]["template"]["spec"]["containers"][0]
    for folder, repo in GEN.MODELS.items():
        assert repr((folder, repo)) in fill["command"][-1]
    compile(fill["command"][-1], "fill", "exec")  # the script at least parses
    env = {e["name"]: e for e in fill["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "0"  # the image sets 1
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "graphserve-hf-token"


def test_upgrade_strategy_and_token_auth():
    spec = by_kind("RayService")["spec"]
    # KubeRay's Go constants (the CRD leaves the field a plain string).
    assert spec["upgradeStrategy"]["type"] == "NewCluster"
    assert spec["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    major, minor, _ = map(int, spec["rayClusterConfig"]["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)  # KubeRay refuses token auth below Ray 2.52
    assert "gcsFaultToleranceOptions" not in spec["rayClusterConfig"]  # an option, off by default
    name = by_kind("RayService")["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 53  # + "-serve-svc"


def test_network_policy_covers_the_ray_pods_and_lets_serve_and_metrics_in():
    policy, cluster = by_kind("NetworkPolicy"), by_kind("RayService")["spec"]["rayClusterConfig"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        assert selector.items() <= template["metadata"]["labels"].items()
    job_labels = by_kind("Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])}
    assert ports == {8000, 8080, 8265}
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_the_ingress_reaches_kuberays_serve_service():
    ingress, rayservice = by_kind("Ingress"), by_kind("RayService")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == rayservice["metadata"]["name"] + "-serve-svc"
    profile = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert backend["port"]["number"] == profile["http_options"]["port"]
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]


def test_replicas_are_packed_as_the_profile_plans_and_the_router_still_spans_nodes():
    """Issue 28 item 3: Serve's controller packs replicas on both launchers (spread, the two
    half-GPU `fast` replicas take a GPU each and `careful` finds no whole one); the router keeps
    one replica per node, so a node loss never leaves none."""
    for c in containers_of(by_kind("RayService")):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY"] == "1", c["name"]
    with open("cluster/ray-cluster.yaml") as f:
        head = " ".join(yaml.safe_load(f)["head_start_ray_commands"])
    exported = head.split("ray start --head")[0]
    assert "set -a" in exported and "RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1" in exported
    args = yaml.safe_load(by_kind("RayService")["spec"]["serveConfigV2"])["applications"][0]["args"]
    router = args["router"]["deployment"]
    assert router["max_replicas_per_node"] == 1 and router["autoscaling"]["min_replicas"] >= 2
    # What packing then does with the profile's GPU shares (largest first, onto the fullest GPU
    # that fits, as Serve's pack scheduler orders them): two GPUs, none split across.
    shares = sorted([t["deployment"]["num_gpus"] for t in args["tiers"]
                     for _ in range(t["deployment"].get("autoscaling", {}).get(
                         "min_replicas", t["deployment"].get("num_replicas", 1)))]
                    + [args["embedder"]["deployment"]["num_gpus"]], reverse=True)
    gpus: list[float] = []
    for share in shares:
        fitting = [i for i, used in enumerate(gpus) if used + share <= 1 + 1e-9]
        if fitting:
            fullest = max(fitting, key=lambda i: gpus[i])
            gpus[fullest] += share
        else:
            gpus.append(share)
    assert len(gpus) == 2 and all(abs(used - 1) < 1e-9 for used in gpus), gpus
