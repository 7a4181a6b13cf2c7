"""A causal LM that answers with a label token, fit by LoRA (peft).

The model's next-token logits of the two label tokens at the prompt's last position give the
label probability: a softmax over the two, i.e. sigmoid(logit(True) - logit(False)). That
difference, the "2-way logit", is what a loss trains: any loss(logits, targets, progress) -> per-row
loss, such as the students' (aar_ray.models.student.LOSSES). Only the two rows of the output matrix
that belong to the label tokens are ever multiplied, so an 8192-token prompt never materialises a
151k-wide logit vector.

Weights load from local files only (aar_ray.lm.weights): the hub is never contacted.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from aar_ray.lm.adapters import fetch_adapter, put_adapter
from aar_ray.lm.config import CausalLMConfig
from aar_ray.lm.prompts import EncodedPrompt, PromptEncoder
from aar_ray.lm.weights import hub_unreachable, resolve_model_path


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_tokenizer(config: CausalLMConfig):
    from transformers import AutoTokenizer

    path = resolve_model_path(config.model)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise hub_unreachable(config.model, err) from None


def load_model(config: CausalLMConfig):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(config.model)
    device = _device()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=_dtype(config.dtype, device))
    except (OSError, ValueError) as err:
        raise hub_unreachable(config.model, err) from None
    return model.to(device).eval()


def _linear_schedule(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class LabelLM:
    """A causal LM and its prompt encoder that reads the 2-way label logit, with LoRA adapters.

    Adapters are held by name (peft); `adapter=None` everywhere means the base model.
    """

    def __init__(self, config: CausalLMConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        self.prompts = PromptEncoder(load_tokenizer(config), config)
        self.model = load_model(config)
        self.device = next(self.model.parameters()).device
        self.peft = None  # the PeftModel once an adapter exists; LoRA layers live inside self.model

    # -- adapters

    def add_adapter(self, name: str = "default") -> None:
        from peft import LoraConfig, get_peft_model

        cfg = self.config
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.target_modules), use_rslora=cfg.use_rslora,
                          bias="none", task_type="CAUSAL_LM")
        torch.manual_seed(self.seed)  # LoRA's A matrices are drawn at random
        if self.peft is None:
            self.peft = get_peft_model(self.model, lora, adapter_name=name)
        else:
            self.peft.add_adapter(name, lora)

    def has_adapter(self, name: str) -> bool:
        return self.peft is not None and name in self.peft.peft_config

    def load_adapter(self, path: str, name: str = "default", trainable: bool = False) -> None:
        """Load (or replace) adapter `name` from a saved adapter folder or URI."""
        from peft import PeftModel, load_peft_weights, set_peft_model_state_dict

        local = fetch_adapter(path)
        if self.has_adapter(name):
            set_peft_model_state_dict(self.peft, load_peft_weights(local), adapter_name=name)
        elif self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, local, adapter_name=name,
                                                  is_trainable=trainable)
        else:
            self.peft.load_adapter(local, adapter_name=name, is_trainable=trainable)

    def save_adapter(self, uri: str, name: str = "default") -> str:
        """Write adapter `name` to `uri` (a folder or a remote URI); returns `uri`."""
        with tempfile.TemporaryDirectory() as tmp:
            self.peft.save_pretrained(tmp, selected_adapters=[name])
            # peft writes a non-default adapter into a subfolder named after it
            src = Path(tmp) if name == "default" else Path(tmp) / name
            put_adapter(src, uri)
        return uri

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[None]:
        """Run the block with `adapter` active, or with no adapter (the base model)."""
        if self.peft is None:
            if adapter is not None:
                raise KeyError(f"no adapter {adapter!r} is loaded")
            yield
        elif adapter is None:
            with self.peft.disable_adapter():
                yield
        else:
            if not self.has_adapter(adapter):
                raise KeyError(f"no adapter {adapter!r} is loaded (have {sorted(self.peft.peft_config)})")
            self.peft.set_adapter(adapter)
            yield

    # -- the label logit

    def label_logits(self, batch: Sequence[EncodedPrompt]) -> torch.Tensor:
        """(n, 2) logits of the (negative, positive) label tokens after each prompt."""
        lengths = [len(p.ids) for p in batch]
        ids = torch.zeros(len(batch), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(batch):  # right padding: a causal model never sees the pads
            ids[i, : len(p.ids)] = torch.tensor(p.ids)
            mask[i, : len(p.ids)] = 1
        out = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    use_cache=False)
        last = out.last_hidden_state[torch.arange(len(batch)), torch.tensor(lengths) - 1]
        head = self.model.get_output_embeddings()
        label_ids = torch.tensor([[p.negative, p.positive] for p in batch], device=self.device)
        logits = torch.einsum("nh,nkh->nk", last.float(), head.weight[label_ids].float())
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[label_ids].float()
        return logits

    def label_logit(self, batch: Sequence[EncodedPrompt]) -> torch.Tensor:
        """logit(positive) - logit(negative): log P(True)/P(False), or log P(A)/P(B)."""
        logits = self.label_logits(batch)
        return logits[:, 1] - logits[:, 0]

    @torch.no_grad()
    def predict_logit(self, prompts: Sequence[EncodedPrompt], adapter: str | None = None) -> np.ndarray:
        """The 2-way logit of every prompt, in batches of similar length (less padding)."""
        self.model.eval()
        order = np.argsort([len(p.ids) for p in prompts], kind="stable")
        out = np.zeros(len(prompts), dtype=np.float32)
        step = self.config.eval_batch_size
        with self.using(adapter):
            for start in range(0, len(order), step):
                idx = order[start : start + step]
                out[idx] = self.label_logit([prompts[i] for i in idx]).cpu().numpy()
        return out

    # -- training

    def train(self, prompts: Sequence[EncodedPrompt], targets: np.ndarray,
              loss_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
              weights: np.ndarray | None = None, adapter: str = "default") -> list[float]:
        """Fit LoRA adapter `adapter` (created if missing) on `targets`; returns each step's loss."""
        cfg = self.config
        if not self.has_adapter(adapter):
            self.add_adapter(adapter)
        self.peft.set_adapter(adapter)
        y = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=self.device)
        w = torch.ones_like(y) if weights is None else torch.as_tensor(
            np.asarray(weights, dtype=np.float32), device=self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, math.ceil(len(prompts) / cfg.batch_size))
        total = cfg.epochs * steps_per_epoch
        factor = (_linear_schedule(total, int(cfg.warmup_ratio * total)) if cfg.schedule == "linear"
                  else (lambda step: 1.0))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        generator = torch.Generator().manual_seed(self.seed)
        self._train_mode(True)
        losses = []
        try:
            for epoch in range(cfg.epochs):
                perm = torch.randperm(len(prompts), generator=generator).tolist()
                for i in range(steps_per_epoch):
                    batch = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                    progress = (epoch * steps_per_epoch + i) / total
                    losses.append(self._step(prompts, batch, y, w, loss_fn, progress, params, opt))
                    sched.step()
        finally:
            self._train_mode(False)
        return losses

    def _step(self, prompts, batch, y, w, loss_fn, progress, params, opt) -> float:
        """One optimizer step over `batch`, in micro-batches of similar length."""
        batch = sorted(batch, key=lambda j: len(prompts[j].ids))
        total_weight = w[batch].sum().clamp(min=1e-8)
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for start in range(0, len(batch), self.config.micro_batch_size):
            idx = batch[start : start + self.config.micro_batch_size]
            logit = self.label_logit([prompts[j] for j in idx])
            loss = (loss_fn(logit, y[idx], progress) * w[idx]).sum() / total_weight
            loss.backward()
            step_loss += float(loss.detach())
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        opt.step()
        return step_loss

    def _train_mode(self, on: bool) -> None:
        if on and self.config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif not on and self.model.is_gradient_checkpointing:
            self.model.gradient_checkpointing_disable()
        self.model.train(on)
