"""Writes the generated files of cluster/ from their one source each:

- grafana-dashboard.json from PANELS below (tests check every metric it queries exists);
- the Kubernetes manifests (KubeRay), applied in this order (docs/cluster.md):
  - k8s/models.yaml: the model volume (a claim the Ray pods mount read-only) and the Job that fills
    it from the Hugging Face hub;
  - rayservice.yaml: the RayService, with the GPU profile (serve_config.gpu.yaml) embedded as its
    serveConfigV2 (tests check the copy is current; `ray up` mounts the same file);
  - k8s/network.yaml: a NetworkPolicy for the Ray pods and an example Ingress to Serve.
  Their requests fit the allocatable resources of NODE_TYPES, and tests/test_manifests.py validates
  them offline against Kubernetes' schemas and KubeRay's CRD.

Run `python cluster/generate.py` after changing serve_config.gpu.yaml or a panel. The committed
manifests name a placeholder registry; write your cluster's own copies elsewhere, e.g.
  python cluster/generate.py --image 123456789012.dkr.ecr.us-west-2.amazonaws.com/graphserve:0.1.0 \
      --storage-class efs-sc --host llm.example.org --out deploy/
(--redis-address host:port turns on GCS fault tolerance; --help lists the options).
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RAY_VERSION = "2.60.0"
# A placeholder registry (example.com never resolves to one): --image names yours. Built from
# cluster/Dockerfile, tagged with the project's version.
IMAGE = "registry.example.com/graphserve:0.1.0"

Q = "histogram_quantile({q}, sum by (le{by}) (rate({m}_bucket[$__rate_interval])))"


def quantiles(metric: str, by: str = "", qs=(0.5, 0.95)) -> list[dict]:
    extra = f", {by}" if by else ""
    legend = f"p{{q}} {{{{{by}}}}}" if by else "p{q}"
    return [{"expr": Q.format(q=q, by=extra, m=metric),
             "legendFormat": legend.format(q=int(q * 100))} for q in qs]


def rate(metric: str, by: str, legend: str | None = None) -> dict:
    return {"expr": f"sum by ({by}) (rate({metric}[$__rate_interval]))",
            "legendFormat": legend or "{{" + by.replace(", ", "}} {{") + "}}"}


def gauge(metric: str, by: str) -> dict:
    return {"expr": f"sum by ({by}) ({metric})", "legendFormat": "{{" + by + "}}"}


def recorded(name: str, legend: str) -> dict:
    """A series of cluster/prometheus-rules.yml's recording rules."""
    return {"expr": name, "legendFormat": legend}


PANELS = [
    # The objectives first (recording rules of cluster/prometheus-rules.yml; docs/operations.md).
    ("Availability: 5xx share (objective: under 1 %)", "percentunit", [
        recorded("graphserve:request_errors:ratio_rate5m", "5 min"),
        recorded("graphserve:request_errors:ratio_rate1h", "1 h"),
        {"expr": "vector(0.01)", "legendFormat": "objective"}]),
    ("Time to first token p95 (objective: 2 s)", "s", [
        recorded("graphserve:time_to_first_token_seconds:p95_5m", "{{model_name}}"),
        {"expr": "vector(2)", "legendFormat": "objective"}]),
    ("Canary: share of checks answered right (alert under 75 %)", "percentunit", [
        recorded("graphserve:canary_correct:ratio_30m", "{{tier}}")]),
    ("Canary: mean quality score of its answers", "percentunit", [
        recorded("graphserve:canary_score:mean_30m", "{{tier}}")]),
    ("Gate failures: share of scored answers (15 min and 1 day)", "percentunit", [
        recorded("graphserve:gate_failures:ratio_rate15m", "15 min {{tier}}"),
        recorded("graphserve:gate_failures:ratio_rate1d", "1 day {{tier}}")]),
    ("Escalations per scored answer (15 min and 1 day)", "percentunit", [
        recorded("graphserve:gate_escalations:ratio_rate15m", "15 min"),
        recorded("graphserve:gate_escalations:ratio_rate1d", "1 day")]),
    ("Requests / s by route and status", "reqps", [rate("ray_graphserve_requests_total", "route, status")]),
    ("HTTP latency (to last byte)", "s", quantiles("ray_graphserve_request_latency_seconds", "route")),
    ("Time to first token (vLLM)", "s", quantiles("ray_vllm_time_to_first_token_seconds", "model_name")),
    ("Inter-token latency (vLLM)", "s", quantiles("ray_vllm_inter_token_latency_seconds", "model_name")),
    ("Engine end-to-end latency (vLLM)", "s",
     quantiles("ray_vllm_e2e_request_latency_seconds", "model_name")),
    ("Tokens / s", "short", [rate("ray_vllm_generation_tokens_total", "model_name", "generated {{model_name}}"),
                             rate("ray_vllm_prompt_tokens_total", "model_name", "prompt {{model_name}}")]),
    ("Engine requests running / waiting", "short",
     [gauge("ray_vllm_num_requests_running", "model_name"),
      {**gauge("ray_vllm_num_requests_waiting", "model_name"), "legendFormat": "waiting {{model_name}}"}]),
    ("Quality score by tier", "percentunit", quantiles("ray_graphserve_quality_score", "tier", (0.1, 0.5))),
    ("Quality gate: failures, retries, escalations / s", "short", [
        rate("ray_graphserve_quality_gate_failures_total", "tier", "gate failures {{tier}}"),
        rate("ray_graphserve_quality_retries_total", "tier", "retries {{tier}}"),
        rate("ray_graphserve_quality_escalations_total", "tier", "escalations to {{tier}}")]),
    ("Degraded scoring / s", "short", [rate("ray_graphserve_quality_degraded_total", "component")]),
    ("Scoring latency", "s", quantiles("ray_graphserve_scoring_latency_seconds")),
    ("Embedder batch size", "short", quantiles("ray_graphserve_embedder_batch_size")),
    ("Embedder batch latency", "s", quantiles("ray_graphserve_embedder_batch_latency_seconds")),
    ("Health: tier unavailable, failed health checks / s", "short", [
        rate("ray_graphserve_tier_unavailable_total", "tier", "unavailable {{tier}}"),
        rate("ray_graphserve_health_check_failures_total", "reason", "health check {{reason}}")]),
    ("Model load seconds (mean per replica start)", "s", [{
        "expr": "sum by (deployment, model) (ray_graphserve_model_load_seconds_sum) / "
                "sum by (deployment, model) (ray_graphserve_model_load_seconds_count)",
        "legendFormat": "{{deployment}} {{model}}"}]),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{**t, "refId": chr(65 + j)} for j, t in enumerate(targets)],
        })
    return {
        "title": "graphserve", "uid": "graphserve", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "tags": ["graphserve", "ray"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


GPU_PROFILE = HERE / "serve_config.gpu.yaml"
APP = {"app.kubernetes.io/name": "graphserve"}  # on every Ray pod: the NetworkPolicy selects it

# The node types the pods are sized for, as the kubelet offers them to pods (allocatable), not the
# VMs' sizes. AWS EKS AMIs reserve for the kubelet: CPU 6 % of the first core + 1 % of the second +
# 0.5 % of the 3rd-4th + 0.25 % of the rest (8 vCPU: 90m); memory 255 MiB + 11 MiB x max pods, 58 for
# both types with the VPC CNI's defaults (awslabs/amazon-eks-ami templates/shared/runtime/
# eni-max-pods.txt), = 893 MiB, plus the 100 MiB hard-eviction threshold. The kernel reports less
# memory than the nominal size: taken as 97 % (62 of 64 GiB, 31 of 32), rounded down. Check yours
# with `kubectl get nodes -o custom-columns=N:.metadata.name,A:.status.allocatable`.
NODE_TYPES = {
    # GPU workers: AWS g6e.2xlarge, 1 NVIDIA L40S (48 GB), 8 vCPU, 64 GiB.
    "g6e.2xlarge": {"cpu": 7.91, "memory_gib": 61.0, "gpus": 1},
    # The head (and the model-filling Job): AWS m6i.2xlarge, 8 vCPU, 32 GiB; no GPU.
    "m6i.2xlarge": {"cpu": 7.91, "memory_gib": 30.0, "gpus": 0},
}
GPU_NODE, HEAD_NODE = "g6e.2xlarge", "m6i.2xlarge"
# Left on every node for daemonsets: VPC CNI, kube-proxy, NVIDIA device plugin and DCGM exporter,
# CSI node plugins, a log agent, a node exporter.
DAEMONSET_HEADROOM = {"cpu": 1.0, "memory_gib": 3.0}
# Worker pods: one GPU each; the profile's replicas at max_replicas need 8 GPUs (fast 8 x 0.45 +
# embedders, careful 4 x 1). Memory: vLLM's host-side buffers for up to three engines plus Ray's
# object store (30 % of the pod's memory by default).
GPU_WORKERS = {"min": 2, "max": 8, "cpu": 6, "memory": "52Gi"}
HEAD = {"cpu": 4, "memory": "16Gi"}
AUTOSCALER = {"cpu": "500m", "memory": "512Mi"}  # KubeRay's default for its sidecar, stated

# The model volume's folders (the profile's model_source: /models/<folder>) and where the Job
# fetches them. The Llama models are gated: the token's account must have accepted Meta's licence
# on each model's Hugging Face page, or the download answers 403.
MODELS = {
    "Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "bge-base-en-v1.5": "BAAI/bge-base-en-v1.5",
}
MODELS_CLAIM = "graphserve-models"


@dataclass(frozen=True)
class Options:
    """What differs between clusters: the committed files use these defaults (placeholders)."""
    image: str = IMAGE
    storage_class: str = "efs-sc"        # a ReadWriteMany-capable class: AWS EFS, GKE Filestore, NFS
    host: str = "graphserve.example.com"  # the Ingress example's host name
    ingress_class: str = "nginx"
    redis_address: str | None = None      # GCS fault tolerance: e.g. redis.example.internal:6379


def check_image(image: str) -> str:
    """A registry host, and a tag or digest other than `latest`: an image without a registry host
    is pulled from Docker Hub, and `:latest` (or no tag) is re-pulled and can differ between nodes."""
    repo, _, digest = image.partition("@")
    host, tag = repo.split("/")[0], repo.rsplit("/", 1)[-1].partition(":")[2]
    if "/" not in repo or not ("." in host or ":" in host or host == "localhost"):
        raise ValueError(f"{image}: name the registry, e.g. 123456789012.dkr.ecr.us-west-2.amazonaws.com/graphserve:0.1.0")
    if digest and not digest.startswith("sha256:"):
        raise ValueError(f"{image}: a digest is @sha256:<hex>")
    if not digest and tag in ("", "latest"):
        raise ValueError(f"{image}: pin a tag other than latest, or a digest (@sha256:...)")
    return image


def gpu_profile() -> dict:
    """The production serve config; its proxy listens on all interfaces, as a pod must (the
    Service and the KubeRay operator reach it through the pod IP). Its two applications share
    their args through a YAML alias; the copy here is plain (no anchors in a manifest)."""
    return json.loads(json.dumps(yaml.safe_load(GPU_PROFILE.read_text())))


IMAGE_ROOT = "/home/ray/graphserve"  # the repo in the image (Dockerfile's WORKDIR) and on `ray up` nodes


def serve_env(root: str | Path = IMAGE_ROOT) -> dict[str, str]:
    """Ray Serve's data path (cluster/serve.env), the same on every node as in `make serve`; the
    HAProxy binary's path, given from the repo's root there, made absolute under `root`."""
    pairs = (line.split("=", 1) for line in (HERE / "serve.env").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    env = {k.strip(): v.strip() for k, v in pairs}
    env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(Path(root) / env["RAY_SERVE_HAPROXY_BINARY_PATH"])
    return env


# Serve packs replicas (largest GPU share first, onto the fullest node that fits) instead of
# spreading them: spread, the two `fast` replicas (0.45 GPU each) land on two nodes and `careful`
# (a whole GPU) finds none; packed, GPU A holds both `fast` and the embedder, GPU B `careful`, as
# the profile plans. Read by Serve's controller (on the head); deployments that must span nodes
# say so (the router: `max_replicas_per_node: 1`).
PLACEMENT_ENV = {"RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY": "1"}


def ray_container(name: str, image: str, cpu: int, memory: str, gpus: int = 0) -> dict:
    """Requests = limits (Guaranteed QoS: the GPU pods are the last to be evicted). The API key is
    required: without the `graphserve` Secret the pod does not start (an unset key would serve an
    open API)."""
    limits = {"cpu": str(cpu), "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "name": name, "image": image,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                *({"name": k, "value": v} for k, v in {**serve_env(), **PLACEMENT_ENV}.items()),
                {"name": "GRAPHSERVE_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "graphserve", "key": "api-key"}}}],
        "resources": {"limits": limits, "requests": dict(limits)},
        "ports": [{"containerPort": 8080, "name": "metrics"}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }


def pod_template(container: dict, component: str, gpu: bool = False) -> dict:
    """GPU pods go to the named GPU node type only, and tolerate the taint GPU node pools carry
    (EKS: nvidia.com/gpu=true:NoSchedule as commonly set; GKE adds nvidia.com/gpu=present itself)."""
    spec = {"containers": [container],
            # readOnly on the claim itself: the Ray pods cannot write the weights.
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM,
                                                                    "readOnly": True}}]}
    if gpu:
        spec["nodeSelector"] = {"node.kubernetes.io/instance-type": GPU_NODE}
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {**APP, "app.kubernetes.io/component": component}}, "spec": spec}


def rayservice(opts: Options = Options()) -> dict:
    """A RayService: a head that schedules no replicas (`num-cpus: 0`, as KubeRay advises: it runs
    the GCS, the dashboard and Serve's controller) and a GPU worker group running every
    deployment, autoscaled by Ray's in-tree autoscaler from Serve's replica demand.

    upgradeStrategy NewCluster: a change to rayClusterConfig (image, resources) starts a second
    cluster and moves traffic once its Serve apps are healthy, so an upgrade needs room for the
    new cluster's head and minimum workers (2 more GPUs); a serveConfigV2-only change is applied in
    place. Ray's token auth is on (KubeRay makes the token Secret). With `redis_address`, the GCS
    keeps its state in an external Redis (password from the `graphserve-redis` Secret), so a head
    restart no longer restarts every worker and reloads every model."""
    image = check_image(opts.image)
    head = ray_container("ray-head", image, HEAD["cpu"], HEAD["memory"])
    head["ports"] += [{"containerPort": p, "name": n} for p, n in
                      ((6379, "gcs"), (8265, "dashboard"), (10001, "client"), (8000, "serve"))]
    cluster = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"idleTimeoutSeconds": 600,  # as ray-cluster.yaml: GPU nodes start slowly
                              "resources": {"limits": AUTOSCALER, "requests": dict(AUTOSCALER)}},
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "metrics-export-port": "8080",
                               "num-cpus": "0"},
            "template": pod_template(head, "ray-head"),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu", "replicas": GPU_WORKERS["min"],
            "minReplicas": GPU_WORKERS["min"], "maxReplicas": GPU_WORKERS["max"],
            "rayStartParams": {"metrics-export-port": "8080"},
            "template": pod_template(ray_container("ray-worker", image, GPU_WORKERS["cpu"],
                                                   GPU_WORKERS["memory"], 1), "ray-worker", gpu=True),
        }],
    }
    if opts.redis_address:
        cluster["gcsFaultToleranceOptions"] = {
            "redisAddress": opts.redis_address,
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "graphserve-redis", "key": "password"}}}}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "graphserve"},
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": yaml.safe_dump(gpu_profile(), sort_keys=False),
            "rayClusterConfig": cluster,
        },
    }


def models_claim(opts: Options = Options()) -> dict:
    """The model volume: read-only many for the Ray pods, written once by the Job. Block storage
    (EBS, PD) cannot be mounted on several nodes, so this needs a file store (EFS, Filestore, NFS).
    ReadWriteMany is listed first because the kubelet hands a CSI driver the first access mode, and
    the Job writes; the Ray pods mount the claim with readOnly: true."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": MODELS_CLAIM, "labels": APP},
        "spec": {"accessModes": ["ReadWriteMany", "ReadOnlyMany"],
                 "storageClassName": opts.storage_class,
                 "resources": {"requests": {"storage": "64Gi"}}},  # the three models: ~23 GB
    }


FILL = """\
import os
from huggingface_hub import snapshot_download
for folder, repo in {models!r}:
    # original/ holds Meta's own checkpoint format (16 GB more for the 8B); onnx/ is unused.
    snapshot_download(repo, local_dir="/models/" + folder, token=os.environ["HF_TOKEN"],
                      ignore_patterns=["original/*", "*.pth", "onnx/*"])
    print("filled /models/" + folder, flush=True)
"""


def fill_job(opts: Options = Options()) -> dict:
    """Fills the model volume from the Hugging Face hub, with the token from the `graphserve-hf-token`
    Secret (required). Re-running it resumes and skips files already there."""
    fill = FILL.format(models=sorted(MODELS.items()))
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "graphserve-models-fill", "labels": {"app.kubernetes.io/name": "graphserve-models"}},
        "spec": {
            "backoffLimit": 4, "activeDeadlineSeconds": 7200,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "graphserve-models"}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": {"fsGroup": 100},  # the image's user is ray (uid 1000, gid 100)
                    "containers": [{
                        "name": "fill", "image": check_image(opts.image),
                        "command": ["python", "-c", fill],
                        "env": [{"name": "HF_HUB_OFFLINE", "value": "0"},  # the image sets 1
                                {"name": "HF_HOME", "value": "/tmp/hf"},
                                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                                    "name": "graphserve-hf-token", "key": "token"}}}],
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                      "limits": {"cpu": "2", "memory": "4Gi"}},
                        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
                    }],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM}}],
                },
            },
        },
    }


def network_policy() -> dict:
    """Ingress to the Ray pods: from each other (GCS, raylets, object transfers, Serve's proxies to
    replicas), the KubeRay operator to the dashboard (it deploys serveConfigV2 and reads Serve's
    status there), the ingress controller's namespace to Serve (8000), the monitoring namespace to
    the metrics port (8080). Nothing else reaches the dashboard or the GCS, which run code for whoever
    reaches them. Egress is left open. Namespace names are placeholders: `ingress-nginx`, `monitoring`."""
    def ns(name):
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "graphserve-ray", "labels": APP},
        "spec": {
            "podSelector": {"matchLabels": APP},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": APP}}]},
                {"from": [{"namespaceSelector": {},
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}],
                 "ports": [{"protocol": "TCP", "port": 8265}]},
                {"from": [ns("ingress-nginx")], "ports": [{"protocol": "TCP", "port": 8000}]},
                {"from": [ns("monitoring")], "ports": [{"protocol": "TCP", "port": 8080}]},
            ],
        },
    }


def ingress(opts: Options = Options()) -> dict:
    """An example: TLS at the ingress controller in front of KubeRay's `graphserve-serve-svc` (the
    Service that follows the healthy cluster through an upgrade). Streams must not be buffered and
    may last the profile's request_timeout_s (300 s); the annotations say so to ingress-nginx,
    other controllers have their own."""
    timeout = str(gpu_profile()["http_options"]["request_timeout_s"])
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "graphserve", "labels": APP, "annotations": {
            "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
            "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
            "nginx.ingress.kubernetes.io/proxy-buffering": "off"}},
        "spec": {
            "ingressClassName": opts.ingress_class,
            "tls": [{"hosts": [opts.host], "secretName": "graphserve-tls"}],
            "rules": [{"host": opts.host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "graphserve-serve-svc", "port": {"number": 8000}}}}]}}],
        },
    }


def manifests(opts: Options = Options()) -> dict[str, list[dict]]:
    """Every generated Kubernetes file and its documents, in the order they are applied."""
    return {"k8s/models.yaml": [models_claim(opts), fill_job(opts)],
            "rayservice.yaml": [rayservice(opts)],
            "k8s/network.yaml": [network_policy(), ingress(opts)]}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded serve config) as readable `|` blocks; no anchors."""

    def ignore_aliases(self, data):
        return True


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))

HEADER = ("# Generated by cluster/generate.py from serve_config.gpu.yaml: edit those, not this.\n"
          "# Apply (docs/cluster.md): k8s/models.yaml, wait for the Job, rayservice.yaml, k8s/network.yaml\n"
          "# (KubeRay operator >= 1.6 installed).\n")


def write(opts: Options = Options(), out: Path = HERE) -> None:
    if out == HERE:
        (HERE / "grafana-dashboard.json").write_text(json.dumps(dashboard(), indent=2) + "\n")
    for name, docs in manifests(opts).items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + "---\n".join(yaml.dump(d, Dumper=_BlockDumper, sort_keys=False) for d in docs))
        print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=Options.image,
                        help="<registry>/<repository>:<tag> or @sha256:<digest> (not :latest)")
    parser.add_argument("--storage-class", default=Options.storage_class,
                        help="a ReadWriteMany/ReadOnlyMany-capable StorageClass for the model volume")
    parser.add_argument("--host", default=Options.host, help="the Ingress example's host name")
    parser.add_argument("--ingress-class", default=Options.ingress_class)
    parser.add_argument("--redis-address", default=None,
                        help="host:port of an external Redis: turns on GCS fault tolerance")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where to write the manifests (default: cluster/, the committed placeholders)")
    a = parser.parse_args(argv)
    try:
        opts = Options(check_image(a.image), a.storage_class, a.host, a.ingress_class, a.redis_address)
    except ValueError as e:
        parser.error(str(e))
    write(opts, a.out.resolve())


if __name__ == "__main__":
    main()
