"""Writes the generated files of cluster/ from their one source each:

- grafana-dashboard.json from PANELS below (tests check every metric it queries exists);
- rayservice.yaml (KubeRay) with the GPU profile (serve_config.gpu.yaml) embedded as its
  serveConfigV2 (tests check the copy is current; `ray up` mounts the same file).

Run `python cluster/generate.py` after changing serve_config.gpu.yaml or a panel.
"""

import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RAY_VERSION = "2.60.0"
IMAGE = "graphserve:latest"  # build it with cluster/Dockerfile and push it to your registry

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
# Worker pods: one GPU each (sized for AWS g6e.2xlarge: 1 L40S, 8 vCPU, 64 GiB); the profile's
# replicas at max_replicas need 8 GPUs (fast 8 x 0.45 + embedders, careful 4 x 1).
GPU_WORKERS = {"min": 2, "max": 8, "cpu": 8, "memory": "56Gi"}


def gpu_profile() -> dict:
    """The production serve config; its proxy listens on all interfaces, as a pod must (the
    Service and the KubeRay operator reach it through the pod IP)."""
    return yaml.safe_load(GPU_PROFILE.read_text())


def serve_env() -> dict[str, str]:
    """Ray Serve's data path (cluster/serve.env), the same on every node as in `make serve`."""
    pairs = (line.split("=", 1) for line in (HERE / "serve.env").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def ray_container(name: str, cpu: int, memory: str, gpus: int = 0) -> dict:
    limits = {"cpu": str(cpu), "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "name": name, "image": IMAGE,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"},
                *({"name": k, "value": v} for k, v in serve_env().items()),
                {"name": "GRAPHSERVE_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "graphserve", "key": "api-key",
                                                "optional": True}}}],
        "resources": {"limits": limits, "requests": limits},
        "ports": [{"containerPort": 8080, "name": "metrics"}],
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }


def rayservice() -> dict:
    """A RayService: a head that schedules no replicas (`num-cpus: 0`, as KubeRay advises: it runs
    the GCS, the dashboard and Serve's controller) and a GPU worker group running every
    deployment, autoscaled by Ray's in-tree autoscaler from Serve's replica demand."""
    models = {"name": "models", "persistentVolumeClaim": {"claimName": "graphserve-models"}}
    head = ray_container("ray-head", 4, "16Gi")
    head["ports"] += [{"containerPort": p, "name": n} for p, n in
                      ((6379, "gcs"), (8265, "dashboard"), (10001, "client"), (8000, "serve"))]
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": "graphserve"},
        "spec": {
            "serveConfigV2": yaml.safe_dump(gpu_profile(), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "metrics-export-port": "8080",
                                       "num-cpus": "0"},
                    "template": {"spec": {"containers": [head], "volumes": [models]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu", "replicas": GPU_WORKERS["min"],
                    "minReplicas": GPU_WORKERS["min"], "maxReplicas": GPU_WORKERS["max"],
                    "rayStartParams": {"metrics-export-port": "8080"},
                    "template": {"spec": {"containers": [ray_container(
                        "ray-worker", GPU_WORKERS["cpu"], GPU_WORKERS["memory"], 1)],
                                          "volumes": [models]}},
                }],
            },
        },
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded serve config) as readable `|` blocks; no anchors."""

    def ignore_aliases(self, data):
        return True


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def write() -> None:
    (HERE / "grafana-dashboard.json").write_text(json.dumps(dashboard(), indent=2) + "\n")
    header = ("# Generated by cluster/generate.py from serve_config.gpu.yaml: edit those, not this.\n"
              "# kubectl apply -f cluster/rayservice.yaml  (KubeRay operator >= 1.1 installed)\n")
    (HERE / "rayservice.yaml").write_text(header + yaml.dump(rayservice(), Dumper=_BlockDumper, sort_keys=False))
    print("wrote cluster/grafana-dashboard.json and cluster/rayservice.yaml")


if __name__ == "__main__":
    write()
