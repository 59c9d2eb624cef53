"""Would one hop make `/v1/embeddings` faster? Measured before it is built (issue 29, item 2).

`python -m benchmarks.embeddings_one_hop` starts the graph as `serve_config.yaml` ships it (canary
off) with a second Serve application beside it: the same embedder deployment as its own HTTP
ingress (`EmbedderIngress`: the router's body parsing and response, no auth), so a request goes
proxy -> embedder instead of proxy -> router -> embedder. Both paths are measured in the same Ray,
in turn (graph, one hop, graph again), with embeddings_peer's scenarios; every request's status is
counted. Writes benchmarks/results/embeddings_one_hop.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import platform
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import Response
from ray import serve

from benchmarks.embeddings_peer import measure, scenario_table
from benchmarks.peers import GraphServer, graph_args
from deployments import api
from deployments.config import GraphConfig
from deployments.embedder import EmbedderDeployment
from deployments.protocol import EmbeddingRequest
from deployments.router import as_json, read_json

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "/one-hop"
one_hop = FastAPI()


@serve.deployment
@serve.ingress(one_hop)
class EmbedderIngress(EmbedderDeployment.func_or_class):
    @one_hop.post("/v1/embeddings")
    async def http_embeddings(self, request: Request) -> Response:
        body = await read_json(request, EmbeddingRequest, 4 << 20)
        vectors, tokens = await self.embed(body.texts())
        return as_json(api.embedding_list(body.model, vectors, tokens, body.encoding_format))


def app_builder(args: dict):
    config = GraphConfig.model_validate(args).embedder
    return EmbedderIngress.options(**config.deployment.serve_options("embedder_one_hop")).bind(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="embeddings_one_hop", help="results file stem")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # The one-hop embedder asks Ray for no CPU (its encoder threads as the graph's): the graph's
    # own embedder keeps the room it scales into, and both may scale to two replicas.
    one_hop_args = copy.deepcopy(graph_args())
    one_hop_args["embedder"]["deployment"]["num_cpus"] = 0
    server = GraphServer(18300, args.out, canary=False, applications=[{
        "name": "one_hop", "route_prefix": PREFIX, "args": one_hop_args,
        "import_path": "benchmarks.embeddings_one_hop:app_builder"}])
    results = {"machine": {"cpu": platform.processor() or platform.machine()},
               "cold_start_s": round(server.start(), 1), "runs": []}
    model = GraphConfig().embedder.model_id
    try:
        for path in ("graph", "one hop", "graph"):
            url = server.base + (PREFIX if path == "one hop" else "") + "/v1/embeddings"
            results["runs"].append({"path": path, **asyncio.run(measure(url, model))})
            print(json.dumps(results["runs"][-1]), flush=True)
    finally:
        server.stop()
    lines = scenario_table("path", [(run["path"], {k: v for k, v in run.items() if k != "path"})
                                    for run in results["runs"]])
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
