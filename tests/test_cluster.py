"""The cluster files run the same serve config as `make serve` and are current."""

import yaml

from tests.helpers import generator


def test_rayservice_embeds_serve_config_yaml():
    with open("cluster/rayservice.yaml") as f:
        manifest = yaml.safe_load(f)
    with open("serve_config.yaml") as f:
        local = yaml.safe_load(f)
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert manifest["kind"] == "RayService" and manifest["apiVersion"] == "ray.io/v1"
    assert embedded["applications"] == local["applications"]  # same graph, same args
    assert embedded["http_options"] == {**local["http_options"], "host": "0.0.0.0"}
    assert manifest == generator().rayservice()  # else run `python cluster/generate.py`
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_serve_config_validates_and_builds_the_graph():
    import graph

    with open("serve_config.yaml") as f:
        args = yaml.safe_load(f)["applications"][0]["args"]
    app = graph.app_builder(args)
    assert app is not None


def test_ray_up_config_mounts_the_same_serve_config():
    with open("cluster/ray-cluster.yaml") as f:
        launcher = yaml.safe_load(f)
    assert launcher["file_mounts"]["/home/ubuntu/graphserve/serve_config.yaml"] == "./serve_config.yaml"
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--metrics-export-port=8080" in head
    assert launcher["available_node_types"]["gpu-worker"]["resources"] == {"llm": 1}
