"""Writes cluster/k8s-monitoring.yaml, Kubernetes-native monitoring of the RayService of
cluster/rayservice.yaml for a Prometheus run by the prometheus-operator (kube-prometheus-stack):

- a PodMonitor that scrapes Ray's metrics port (8080, named `metrics`) on every pod of the
  RayService's RayCluster, head and workers, as KubeRay's own example does
  (ray-project/kuberay config/prometheus/podMonitor.yaml, and Ray's "KubeRay: Prometheus and
  Grafana" guide: select by `ray.io/node-type`, copy `ray.io/cluster` into `ray_io_cluster`);
- a PrometheusRule whose groups are cluster/prometheus-rules.yml's, unchanged: one source for
  `ray up` (cluster/prometheus.yml loads the file) and for Kubernetes.

KubeRay names a RayService's RayCluster `<rayservice>-<5 random characters>` (older releases:
`<rayservice>-raycluster-<5>`) and creates a new one on each upgrade, so the PodMonitor selects
Ray pods by KubeRay's labels and keeps those whose `ray.io/cluster` has that form. Scraped
targets get `job="ray"`, the job cluster/prometheus.yml uses, so one set of rules serves both.

Run `python cluster/monitoring.py` after changing cluster/prometheus-rules.yml (tests check the
file is current), then `kubectl apply -n <the RayService's namespace> -f cluster/k8s-monitoring.yaml`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "prometheus-rules.yml"
RAYSERVICE = HERE / "rayservice.yaml"
OUT = HERE / "k8s-monitoring.yaml"

# kube-prometheus-stack's Prometheus picks PodMonitors and PrometheusRules labelled
# `release: <its Helm release>` (podMonitorSelector / ruleSelector); pass yours with --release.
RELEASE = "prometheus"
JOB = "ray"  # the scrape job the rules' `up{job="ray"}` expects (cluster/prometheus.yml's too)
METRICS_PORT = "metrics"  # the container port KubeRay names (and adds when missing): 8080
SCRAPE_INTERVAL = "10s"  # as cluster/prometheus.yml


def rayservice_name() -> str:
    """The RayService's name, from the generated manifest (cluster/generate.py)."""
    return yaml.safe_load(RAYSERVICE.read_text())["metadata"]["name"]


def cluster_regex(name: str) -> str:
    """The names KubeRay gives a RayService's RayClusters (utils.GenerateRayClusterName)."""
    return re.escape(name) + "-(raycluster-)?[a-z0-9]{5}"


def rule_groups(runbook_base: str = "") -> list[dict]:
    """cluster/prometheus-rules.yml's groups; `runbook_base` prefixes each runbook_url."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    if runbook_base:
        for group in groups:
            for rule in group["rules"]:
                notes = rule.get("annotations", {})
                if "runbook_url" in notes:
                    notes["runbook_url"] = runbook_base.rstrip("/") + "/" + notes["runbook_url"]
    return groups


def pod_monitor(name: str, release: str = RELEASE) -> dict:
    pod_label = "__meta_kubernetes_pod_label_"
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{name}-ray", "labels": {"release": release,
                                                         "app.kubernetes.io/part-of": name}},
        "spec": {
            # No namespaceSelector: the pods in the PodMonitor's own namespace (the RayService's).
            "selector": {
                "matchLabels": {"ray.io/is-ray-node": "yes"},
                "matchExpressions": [{"key": "ray.io/node-type", "operator": "In",
                                      "values": ["head", "worker"]}],
            },
            "podMetricsEndpoints": [{
                "port": METRICS_PORT,
                "path": "/metrics",
                "interval": SCRAPE_INTERVAL,
                "relabelings": [
                    # Only this RayService's clusters (the current one and, during an upgrade,
                    # the next), not other RayClusters in the namespace.
                    {"action": "keep", "sourceLabels": [pod_label + "ray_io_cluster"],
                     "regex": cluster_regex(name)},
                    {"action": "replace", "sourceLabels": [pod_label + "ray_io_cluster"],
                     "targetLabel": "ray_io_cluster"},
                    {"action": "replace", "sourceLabels": [pod_label + "ray_io_node_type"],
                     "targetLabel": "ray_io_node_type"},
                    {"action": "replace", "targetLabel": "job", "replacement": JOB},
                ],
            }],
        },
    }


def prometheus_rule(name: str, release: str = RELEASE, runbook_base: str = "") -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "labels": {"release": release,
                                              "app.kubernetes.io/part-of": name}},
        "spec": {"groups": rule_groups(runbook_base)},
    }


def documents(release: str = RELEASE, runbook_base: str = "") -> list[dict]:
    name = rayservice_name()
    return [pod_monitor(name, release), prometheus_rule(name, release, runbook_base)]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the rules' expressions) as readable `|` blocks; no anchors."""

    def ignore_aliases(self, data):
        return True


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def render(release: str = RELEASE, runbook_base: str = "") -> str:
    header = ("# Generated by cluster/monitoring.py from cluster/prometheus-rules.yml and the\n"
              "# RayService's name in cluster/rayservice.yaml: edit those, not this.\n"
              "# kubectl apply -n <the RayService's namespace> -f cluster/k8s-monitoring.yaml\n"
              "# (the prometheus-operator's CRDs installed, e.g. by kube-prometheus-stack)\n")
    return header + yaml.dump_all(documents(release, runbook_base), Dumper=_BlockDumper,
                                  sort_keys=False, explicit_start=True, width=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release", default=RELEASE,
                        help="the `release` label your Prometheus selects (default %(default)s)")
    parser.add_argument("--runbook-base", default="",
                        help="URL prefixed to each runbook_url, e.g. your repository's web "
                             "address; default: leave them relative (docs/operations.md#...)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.write_text(render(args.release, args.runbook_base))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
