"""An inference engine on vLLM (the `gpu` extra): batched label scoring and generation, with LoRA
adapters served per request.

Prompts are tokenised by the same PromptEncoder as the student, and vLLM is given token ids, so
both score exactly the same tokens. A label read is one generated token with the full-vocabulary
log-probabilities of the two label tokens (`logprob_token_ids`, vLLM >= 0.30); an older vLLM
falls back to the top-k log-probabilities, where a label outside the top k is given the k-th
log-probability, an upper bound. vllm is imported only here, inside the engine.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from aar_ray.engines.base import BINARY_LABELS, Item, encode_items, two_way_probability
from aar_ray.models.causal_lm import (CausalLMConfig, EncodedPrompt, PromptEncoder, fetch_adapter,
                                      load_tokenizer, resolve_model_path)

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank
TOP_K_FALLBACK = 20


def max_lora_rank_for(rank: int) -> int:
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


class VLLMEngine:
    def __init__(self, config: CausalLMConfig, tensor_parallel: int = 1, gpu_memory_utilization: float = 0.85,
                 max_loras: int = 4, seed: int = 0, enforce_eager: bool = False):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as err:  # raised in a replica actor: say which setting to change
            raise ImportError(f"engine_pool.engine: vllm needs vllm on the GPU nodes (pip install -e "
                              f"'.[gpu]'), or set engine_pool.engine: transformers ({err})") from err

        self._SamplingParams, self._LoRARequest = SamplingParams, LoRARequest
        self.config = config
        self.prompts = PromptEncoder(load_tokenizer(config), config)
        path = resolve_model_path(config.model)
        self.llm = LLM(
            model=path, tokenizer=path, seed=seed,
            dtype="bfloat16", max_model_len=config.max_length + 16,  # room for the label token
            enable_lora=True, max_lora_rank=max_lora_rank_for(config.lora_r), max_loras=max_loras,
            tensor_parallel_size=tensor_parallel,
            # tp > 1: workers are Ray actors placed in the placement group this engine runs in
            distributed_executor_backend="ray" if tensor_parallel > 1 else None,
            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
            enable_prefix_caching=True,  # rows of one question share their prefix
        )
        self.adapters: dict[str, object] = {}  # name -> LoRARequest
        self._lora_ids = itertools.count(1)

    # -- adapters

    def load_adapter(self, name: str, path: str) -> None:
        # A fresh integer id on every load: vLLM caches adapter weights by id, so reusing an id
        # for new weights under the same name would keep serving the old ones.
        self.adapters[name] = self._LoRARequest(name, next(self._lora_ids), fetch_adapter(path))

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        if adapter not in self.adapters:
            raise KeyError(f"no adapter {adapter!r} is loaded (have {sorted(self.adapters)})")
        return self.adapters[adapter]

    # -- scoring

    def label_params(self, encoded: EncodedPrompt):
        one_greedy_token = dict(max_tokens=1, temperature=0.0, detokenize=False)
        labels = [encoded.negative, encoded.positive]
        try:
            return self._SamplingParams(**one_greedy_token, logprob_token_ids=labels)
        except TypeError:  # vLLM without logprob_token_ids
            return self._SamplingParams(**one_greedy_token, logprobs=TOP_K_FALLBACK)

    def score_labels(self, items: Sequence[Item], adapter: str | None = None,
                     labels: tuple[str, str] = BINARY_LABELS, zero_shot: bool = False) -> np.ndarray:
        encoded = encode_items(self.prompts, items, labels, zero_shot)
        outputs = self.llm.generate([{"prompt_token_ids": e.ids} for e in encoded],
                                    [self.label_params(e) for e in encoded],
                                    lora_request=self._lora(adapter), use_tqdm=False)
        pairs = np.array([label_logprobs(out, e) for out, e in zip(outputs, encoded)], dtype=np.float64)
        return two_way_probability(pairs[:, 0], pairs[:, 1])

    def generate(self, prompts: Sequence[str], max_tokens: int, adapter: str | None = None) -> list[str]:
        params = self._SamplingParams(max_tokens=max_tokens, temperature=0.0)
        outputs = self.llm.generate(list(prompts), params, lora_request=self._lora(adapter), use_tqdm=False)
        return [out.outputs[0].text for out in outputs]


def label_logprobs(output, encoded: EncodedPrompt) -> tuple[float, float]:
    """(log P(negative), log P(positive)) of the first generated position of a vLLM RequestOutput."""
    step = output.outputs[0].logprobs[0]  # token id -> Logprob
    floor = min(lp.logprob for lp in step.values())

    def read(token: int) -> float:
        return step[token].logprob if token in step else floor

    return read(encoded.negative), read(encoded.positive)
