"""cluster/k8s-monitoring.yaml (cluster/monitoring.py): the PodMonitor scrapes the pods KubeRay
creates for the RayService, and the PrometheusRule carries cluster/prometheus-rules.yml's groups
unchanged."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import cluster_script

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "cluster" / "k8s-monitoring.yaml"


def monitoring():
    return cluster_script("monitoring")


def shipped() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(GENERATED.read_text()) if d}


def test_the_file_is_the_generated_one(tmp_path):
    assert list(yaml.safe_load_all(GENERATED.read_text())) == monitoring().documents()
    out = tmp_path / "k8s-monitoring.yaml"
    monitoring().main(["--out", str(out)])  # what `python cluster/monitoring.py` runs
    assert out.read_text() == GENERATED.read_text()  # else run `python cluster/monitoring.py`


def test_the_prometheus_rule_has_the_rules_file_groups():
    rules = yaml.safe_load((ROOT / "cluster" / "prometheus-rules.yml").read_text())
    rule = shipped()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] and rule["metadata"]["labels"]["release"]
    assert rule["spec"]["groups"] == rules["groups"]
    for group in rule["spec"]["groups"]:  # the CRD's required fields, and one kind per rule
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert r["expr"] and ("record" in r) != ("alert" in r), r


def test_a_runbook_base_prefixes_only_the_runbook_urls():
    groups = monitoring().rule_groups("https://example.org/graphserve/blob/main/")
    urls = [r["annotations"]["runbook_url"] for g in groups for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith("https://example.org/graphserve/blob/main/docs/operations.md#")
                        for u in urls)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_the_prometheus_rule_groups_load_in_prometheus(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": shipped()["PrometheusRule"]["spec"]["groups"]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def kuberay_pod_labels(cluster: str, node_type: str, group: str) -> dict[str, str]:
    """The labels KubeRay gives a Ray pod (ray-operator/controllers/ray/common/pod.go, labelPod)."""
    return {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster, "ray.io/node-type": node_type,
            "ray.io/group": group, "ray.io/identifier": f"{cluster}-{node_type}",
            "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}


def selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e  # the only operator used
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def kept(endpoint: dict, labels: dict[str, str]) -> bool:
    """Prometheus's `keep` relabelings (anchored regexes) on the pod's label meta labels."""
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
            for k, v in labels.items()}
    return all(re.fullmatch(r["regex"], ";".join(meta.get(s, "") for s in r["sourceLabels"]))
               for r in endpoint["relabelings"] if r["action"] == "keep")


def test_the_pod_monitor_scrapes_the_rayservice_head_and_workers_only():
    pm = shipped()["PodMonitor"]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    assert pm["metadata"]["name"] and pm["metadata"]["labels"]["release"]
    selector, (endpoint,) = pm["spec"]["selector"], pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    name = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())["metadata"]["name"]
    # KubeRay names the RayService's cluster `<name>-<5>` (older releases: `<name>-raycluster-<5>`).
    for cluster in (f"{name}-x7k2p", f"{name}-raycluster-x7k2p"):
        for node_type, group in (("head", "headgroup"), ("worker", "gpu")):
            labels = kuberay_pod_labels(cluster, node_type, group)
            assert selects(selector, labels) and kept(endpoint, labels), labels
    # Another RayCluster in the namespace, and pods that are not Ray nodes, are left alone.
    assert not kept(endpoint, kuberay_pod_labels("other-x7k2p", "head", "headgroup"))
    assert not kept(endpoint, kuberay_pod_labels(f"{name}-canary-x7k2p", "head", "headgroup"))
    assert not selects(selector, {"app": "redis", "ray.io/cluster": f"{name}-x7k2p"})
    # Every target has the job the rules' up{job="ray"} and the ray up config use.
    job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert [r["replacement"] for r in job] == ["ray"]
    prom = yaml.safe_load((ROOT / "cluster" / "prometheus.yml").read_text())
    assert {c["job_name"] for c in prom["scrape_configs"]} == {"ray"}
    assert 'up{job="ray"}' in (ROOT / "cluster" / "prometheus-rules.yml").read_text()


def test_every_ray_container_of_the_rayservice_exposes_the_scraped_port():
    spec = yaml.safe_load((ROOT / "cluster" / "rayservice.yaml").read_text())["spec"]
    cluster = spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert group["rayStartParams"].get("metrics-export-port", "8080") == "8080"
        ray = group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first
        ports = {p["name"]: p["containerPort"] for p in ray.get("ports", [])}
        # KubeRay adds `metrics: 8080` when the container names no such port.
        assert ports.get("metrics", 8080) == 8080, ports
