"""An inference engine on plain transformers + peft: the CPU engine for tests and laptops, and
the reference the vLLM engine is checked against. Adapters are held by name inside one model."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from aar_ray.engines.base import BINARY_LABELS, Item, encode_items, two_way_probability
from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.label_lm import LabelLM
from aar_ray.lm.prompts import EncodedPrompt


class TransformersEngine:
    def __init__(self, config: CausalLMConfig, seed: int = 0):
        self.config = config
        self.lm = LabelLM(config, seed)
        self.adapters: dict[str, str] = {}

    def encode(self, items: Sequence[Item], labels: tuple[str, str],
               zero_shot: bool = False) -> list[EncodedPrompt]:
        return encode_items(self.lm.prompts, items, labels, zero_shot)

    def score_labels(self, items: Sequence[Item], adapter: str | None = None,
                     labels: tuple[str, str] = BINARY_LABELS, zero_shot: bool = False) -> np.ndarray:
        logit = self.lm.predict_logit(self.encode(items, labels, zero_shot), adapter)
        return two_way_probability(np.zeros_like(logit), logit)

    def generate(self, prompts: Sequence[str], max_tokens: int, adapter: str | None = None) -> list[str]:
        import torch

        tok = self.lm.prompts.tokenizer
        outputs = []
        with torch.no_grad(), self.lm.using(adapter):
            for prompt in prompts:  # one at a time: no padding, so no position shifts
                ids = torch.tensor([self.lm.prompts.token_ids(prompt)], device=self.lm.device)
                out = self.lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                             max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id or 0)
                outputs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return outputs

    def load_adapter(self, name: str, path: str) -> None:
        self.lm.load_adapter(path, name)
        self.adapters[name] = path
