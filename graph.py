"""Wiring only: validate the config once and bind the deployments into one application.

proxy -> router (HTTP + quality gate) -> LLM tiers / embedder. `serve run serve_config.yaml` /
`serve deploy serve_config.yaml` call `app_builder(args)` with the `args` of the YAML; `graph:app`
is the same graph with every default.
"""

from __future__ import annotations

from ray.serve import Application

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
    embedder = Downstream(config.embedder, EmbedderDeployment.options(
        **config.embedder.deployment.serve_options(config.embedder.name)).bind(config.embedder))
    return Router.options(
        **config.router.deployment.serve_options(config.router.name)
    ).bind(config.router, by_model(tiers), embedder)


def app_builder(args: dict) -> Application:
    return build(GraphConfig.model_validate(args or {}))


app = build(GraphConfig())
