"""Wiring only: validate the config once and bind the deployments into one application.

`serve run serve_config.yaml` / `serve deploy serve_config.yaml` call `app_builder(args)` with the
`args` of the YAML; `graph:app` is the same graph with every default.
"""

from __future__ import annotations

from ray.serve import Application

from deployments.config import GraphConfig
from deployments.embedder import EmbedderDeployment
from deployments.ingress import Ingress
from deployments.llm import LLMDeployment
from deployments.router import QualityRouter


def build(config: GraphConfig) -> Application:
    tiers = [
        LLMDeployment.options(**tier.deployment.serve_options(tier.name)).bind(tier)
        for tier in config.tiers
    ]
    embedder = EmbedderDeployment.options(
        **config.embedder.deployment.serve_options(config.embedder.name)
    ).bind(config.embedder)
    router = QualityRouter.options(
        **config.router.deployment.serve_options(config.router.name)
    ).bind(config.router, config.tiers, tiers, embedder, config.embedder.name)
    return Ingress.options(
        **config.ingress.deployment.serve_options(config.ingress.name)
    ).bind(config.ingress, config.embedder, router, embedder, config.tiers, config.router.name)


def app_builder(args: dict) -> Application:
    return build(GraphConfig.model_validate(args or {}))


app = build(GraphConfig())
