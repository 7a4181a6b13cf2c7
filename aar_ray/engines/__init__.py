"""Inference engines: one interface (score_labels / generate / load_adapter), implemented on
transformers and on vLLM (its CUDA build on GPU nodes, its CPU build elsewhere), and a Ray actor
pool that serves either.

The engine classes are imported on first use, so importing the pool pulls in neither torch
models nor vllm.
"""

from aar_ray.engines.base import BINARY_LABELS, Engine, encode_items, log_odds, two_way_probability
from aar_ray.engines.pool import (EnginePool, PoolConfig, desired_replicas, make_engine, shared_pool_name,
                                  start_shared_pool, stop_shared_pool)

__all__ = ["BINARY_LABELS", "Engine", "EnginePool", "PoolConfig", "TransformersEngine", "VLLMEngine",
           "desired_replicas", "encode_items", "log_odds", "make_engine", "shared_pool_name",
           "start_shared_pool", "stop_shared_pool", "two_way_probability"]


def __getattr__(name: str):
    if name == "TransformersEngine":
        from aar_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine
    if name == "VLLMEngine":
        from aar_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)
