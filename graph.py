"""Wiring only: validate the config once and bind the deployments into two applications.

The graph, at `/`: proxy -> router (HTTP + quality gate) -> LLM tiers, and the router's scoring
calls -> embedder. Embeddings, at `/v1/embeddings`: proxy -> embedder, one hop (its own
application, so the data path reaches its replicas directly). `serve run serve_config.yaml` /
`serve deploy serve_config.yaml` call `app_builder(args)` and `embeddings_builder(args)` with the
same `args`; `graph:app` and `graph:embeddings` are the two with every default.
"""

from __future__ import annotations

from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from deployments.config import GraphConfig
from deployments.embedder import EmbedderDeployment
from deployments.llm import LLMDeployment
from deployments.router import Router
from deployments.tier import Downstream, Tier, by_model


def build(config: GraphConfig) -> Application:
    in_turn = config.tier_load_order == "in_turn"
    tiers = [  # rank: the escalation order, and with in_turn the order the engines load in
        Tier(tier, LLMDeployment.options(**tier.deployment.serve_options(tier.name)).bind(
            tier, rank if in_turn else None), rank=rank)
        for rank, tier in enumerate(config.tiers)
    ]
    # The embedder lives in its own application: reached by name, not bound into this one.
    embedder = Downstream(config.embedder,
                          DeploymentHandle(config.embedder.name, config.embedder.app_name))
    return Router.options(
        **config.router.deployment.serve_options(config.router.name)
    ).bind(config.router, by_model(tiers), embedder)


def build_embeddings(config: GraphConfig) -> Application:
    return EmbedderDeployment.options(
        **config.embedder.deployment.serve_options(config.embedder.name)
    ).bind(config.embedder, config.router)


def app_builder(args: dict) -> Application:
    return build(GraphConfig.model_validate(args or {}))


def embeddings_builder(args: dict) -> Application:
    return build_embeddings(GraphConfig.model_validate(args or {}))


app = build(GraphConfig())
embeddings = build_embeddings(GraphConfig())
