"""The GPU-scale models: a causal LM that answers with a label token, fit by LoRA.

Every row becomes a prompt in the released sandbox's shape,

    binary:      Question: {question}\\nAnswer: {choice}\\nLabel:                 -> False / True
    comparison:  Question: {prompt}\\nAnswer A: {first}\\nAnswer B: {second}\\nLabel:  -> B / A

wrapped in the tokenizer's chat template for chat models (the weak teacher, Qwen1.5-0.5B-Chat)
and left as plain text for base models (the strong student, Qwen3-4B-Base). The model's
next-token logits of the two label tokens at the prompt's last position give the label
probability: a softmax over the two, i.e. sigmoid(logit(True) - logit(False)). That difference,
the "2-way logit", is what a loss (aar_ray.models.student.LOSSES or any LossFn) trains. Only
the two rows of the output matrix that belong to the label tokens are ever multiplied, so
an 8192-token prompt never materialises a 151k-wide logit vector.

LoRA adapters (peft) are the only trained weights; they are saved to `<adapter_uri>/<name>`
and can be loaded back by the student, the teacher or an inference engine.

A student's reads of its base model -- the zero-shot prior (the sandbox's `ue_zeroshot`) and
predictions before any fit -- run in its own process (`inference: local`) or through the shared
engine pool of its model (`inference: pool`, the preset's `engine_pool`), where many researchers'
requests share a few vLLM engines instead of each loading the weights.

Weights load from local files only: the hub is never contacted. `model:` is a local folder, a
hub id already in the local cache, or `tiny:<kind>`, a few-kilobyte model with random weights
built from a config (plumbing tests and CPU smoke runs, see TINY_MODELS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Iterator, Optional, Self, Sequence, Union

import numpy as np

# Nothing here may reach for a hub; set before transformers is imported anywhere downstream.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from aar_ray.engines.base import BINARY_LABELS, log_odds  # noqa: E402
from aar_ray.engines.pool import PoolConfig  # noqa: E402
from aar_ray.models.student import LOSSES, LossFn  # noqa: E402

BINARY_TEMPLATE = "Question: {question}\nAnswer: {choice}\nLabel:"
COMPARISON_TEMPLATE = "Question: {prompt}\nAnswer A: {first}\nAnswer B: {second}\nLabel:"
# The sandbox's zero-shot prompts (its ue_zeroshot): a claim the base model judges True/False.
BINARY_ZERO_SHOT_TEMPLATE = ("Question: {question}\nProposed Answer: {choice}\n"
                             "Claim: This answer is correct.\nI think this claim is (True or False):")
COMPARISON_ZERO_SHOT_TEMPLATE = ("Question: {prompt}\nAnswer A: {first}\nAnswer B: {second}\n"
                                 "Claim: Answer A is more helpful than Answer B.\n"
                                 "I think this Claim is (True or False):")

TEXT_FIELDS = ("question", "choice", "prompt", "first", "second")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Qwen3 chat templates may insert an empty thinking block; the sandbox strips it too.
_EMPTY_THINK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class PromptStyle:
    """A prompt template and its two label strings; `positive` is the one whose probability
    is reported (True for binary rows, A for comparison rows)."""

    template: str
    negative: str
    positive: str


# Label strings carry no leading space, as in the sandbox: in chat models they follow
# "assistant\n", in base models they follow "Label:" directly.
STYLES = {
    ("binary", False): PromptStyle(BINARY_TEMPLATE, "False", "True"),
    ("comparison", False): PromptStyle(COMPARISON_TEMPLATE, "B", "A"),
    ("binary", True): PromptStyle(BINARY_ZERO_SHOT_TEMPLATE, "False", "True"),
    ("comparison", True): PromptStyle(COMPARISON_ZERO_SHOT_TEMPLATE, " False", " True"),
}


class Inference(StrEnum):
    """Where a student reads its base model (zero-shot scores, predictions before any fit)."""

    local = "local"  # in the student's own process, on its own GPU (or CPU)
    pool = "pool"  # through the shared engine pool of its model (a preset's engine_pool)


@dataclass
class CausalLMConfig:
    model: str = "Qwen/Qwen3-4B-Base"  # a local folder, a cached hub id, or tiny:<kind>
    chat_template: Optional[bool] = None  # None: use the tokenizer's, unless the model is a base model
    max_length: int = 8192  # prompt tokens; longer rows are cut in the middle of their longest texts
    lora_r: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    use_rslora: bool = True  # the sandbox's setting: scale alpha / sqrt(r)
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    lr: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    epochs: int = 5
    batch_size: int = 32  # rows per optimizer step
    micro_batch_size: int = 8  # rows per forward pass; gradients accumulate up to batch_size
    eval_batch_size: int = 32
    schedule: str = "linear"  # linear decay to zero, or "constant"
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = True
    num_gpus: float = 1  # GPUs a fit task asks Ray for
    adapter_uri: str = ".aar/adapters"  # a local folder, or a URI pyarrow.fs can write (s3://, gs://)
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    # Students only: `pool` sends base-model reads to the shared engine pool; fitted adapters still
    # predict in the student's process. A config file's value is checked by OmegaConf (the enum).
    inference: Inference = Inference.local

    def __post_init__(self):
        # Python callers may pass a plain string: check it here, with the allowed values.
        if self.inference not in tuple(Inference):
            raise ValueError(f"inference={self.inference!r} is not allowed; allowed: "
                             f"{', '.join(m.value for m in Inference)}")
        self.inference = Inference(self.inference)


class WeightsNotFoundError(FileNotFoundError):
    """The configured model is neither a local folder nor in the local hub cache."""


# --------------------------------------------------------------------------- loading

def _hub_unreachable(model: str, cause: Exception | None = None) -> WeightsNotFoundError:
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause else ""
    return WeightsNotFoundError(
        f"model {model!r} is not available locally and the Hugging Face hub is unreachable "
        f"(offline: HF_HUB_OFFLINE=1, nothing is downloaded){detail}. Copy the weights to this "
        f"machine (e.g. `huggingface-cli download {model} --local-dir /models/{model.split('/')[-1]}` "
        "where the hub can be reached) and point the config key `model: /path/to/weights` at "
        "that folder (conf/models/*.yaml: teacher.model / student.model)."
    )


def resolve_model_path(model: str) -> str:
    """A folder or cached hub id that transformers can load offline."""
    if model.startswith("tiny:"):
        return str(materialize_tiny_model(model.removeprefix("tiny:")))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise _hub_unreachable(model, FileNotFoundError(f"{path} has no config.json"))
        return str(path)
    if model.startswith(("/", ".", "~")):
        raise _hub_unreachable(model, FileNotFoundError(f"no folder {path}"))
    return model  # a hub id: only the local cache is consulted


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
        raise _hub_unreachable(config.model, err) from None


def load_model(config: CausalLMConfig):
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(config.model)
    device = _device()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=_dtype(config.dtype, device))
    except (OSError, ValueError) as err:
        raise _hub_unreachable(config.model, err) from None
    return model.to(device).eval()


# --------------------------------------------------------------------------- prompts

def row_kind(row: dict) -> str:
    return "binary" if isinstance(row.get("choice"), str) else "comparison"


def as_records(rows) -> list[dict]:
    """Rows as a list of dicts, whether given as dicts or as a pandas DataFrame."""
    return rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)


@dataclass(frozen=True)
class EncodedPrompt:
    ids: list[int]
    negative: int  # token id of the negative label (False / B)
    positive: int  # token id of the positive label (True / A)


def _is_base_model(name: str) -> bool:
    return "base" in Path(name.rstrip("/")).name.lower()


class PromptEncoder:
    """Rows -> token ids ending where the label token would come, plus the label token ids.

    The same encoder feeds training, prediction and every inference engine, so all of them see
    identical tokens for a row.
    """

    def __init__(self, tokenizer, config: CausalLMConfig):
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        has_template = bool(getattr(tokenizer, "chat_template", None))
        wanted = config.chat_template
        self.chat = has_template and (not _is_base_model(config.model) if wanted is None else wanted)
        self._label_ids: dict[str, int] = {}

    def label_id(self, label: str) -> int:
        if label not in self._label_ids:
            # The first token of the label string, as the sandbox reads it.
            self._label_ids[label] = self.tokenizer.encode(label, add_special_tokens=False)[0]
        return self._label_ids[label]

    def text(self, row: dict, zero_shot: bool = False) -> str:
        style = STYLES[(row_kind(row), zero_shot)]
        return self.wrap(style.template.format(**row), zero_shot)

    def wrap(self, user_text: str, zero_shot: bool = False) -> str:
        """The chat template around a user turn, ending at the assistant's first token.
        Zero-shot prompts are plain text, as the sandbox scores them."""
        if not self.chat or zero_shot:
            return user_text
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True)
        return text.replace(_EMPTY_THINK, "")

    def encode(self, row: dict, zero_shot: bool = False) -> EncodedPrompt:
        style = STYLES[(row_kind(row), zero_shot)]
        ids = self.token_ids(self.text(row, zero_shot))
        if len(ids) > self.max_length:
            ids = self._truncated(row, zero_shot)
        return EncodedPrompt(ids, self.label_id(style.negative), self.label_id(style.positive))

    def encode_text(self, prompt: str, labels: tuple[str, str]) -> EncodedPrompt:
        """An already formatted prompt and its (negative, positive) label strings."""
        ids = self.token_ids(prompt)[-self.max_length:]
        return EncodedPrompt(ids, self.label_id(labels[0]), self.label_id(labels[1]))

    def token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None and not self.chat and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _truncated(self, row: dict, zero_shot: bool) -> list[int]:
        """Fit a long row into max_length: cut the longest text fields from their middle, to a
        common length, so short answers stay whole; the template lines ("Label:") always remain."""
        fields = [f for f in TEXT_FIELDS if isinstance(row.get(f), str)]
        tokens = {f: self.tokenizer.encode(row[f], add_special_tokens=False) for f in fields}
        template_only = self.text({**row, **dict.fromkeys(fields, "")}, zero_shot)
        budget = self.max_length - len(self.token_ids(template_only))
        for _ in range(3):  # decoding and re-encoding a cut can shift a few tokens: retry tighter
            cap = water_level([len(t) for t in tokens.values()], budget)
            cut = {f: self._cut_middle(t, cap) if len(t) > cap else row[f] for f, t in tokens.items()}
            ids = self.token_ids(self.text({**row, **cut}, zero_shot))
            if len(ids) <= self.max_length:
                return ids
            budget -= len(ids) - self.max_length
        return ids[-self.max_length:]

    def _cut_middle(self, ids: list[int], keep: int) -> str:
        head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2):]
        return f"{self.tokenizer.decode(head)} ... {self.tokenizer.decode(tail)}"


def water_level(lengths: list[int], budget: int) -> int:
    """The largest cap c with sum(min(length, c)) <= budget: long fields are cut to c, short
    ones are kept whole."""
    remaining, count = max(0, budget), len(lengths)
    for i, length in enumerate(sorted(lengths)):
        share = remaining // (count - i)
        if length > share:
            return share
        remaining -= length
    return max(lengths, default=0)


# --------------------------------------------------------------------------- the model

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

    def train(self, prompts: Sequence[EncodedPrompt], targets: np.ndarray, loss_fn: LossFn,
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


# --------------------------------------------------------------------------- adapter storage

def _is_uri(location: str) -> bool:
    return "://" in location


def adapter_location(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if _is_uri(root) else str(Path(root).expanduser() / name)


def put_adapter(local_dir: Path, location: str) -> None:
    """Copy a saved adapter folder to a local folder or a URI (replacing what was there)."""
    if _is_uri(location):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(location)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        pafs.copy_files(str(local_dir), path, destination_filesystem=fs)
        return
    dest = Path(location)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
    shutil.copytree(local_dir, staging)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)  # readers never see a half-written adapter


def fetch_adapter(location: str) -> str:
    """A local folder holding the adapter at `location` (URIs are copied to a local cache)."""
    if not _is_uri(location):
        return str(Path(location).expanduser())
    import pyarrow.fs as pafs

    key = hashlib.sha1(location.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "aar_ray_adapters" / key
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    pafs.copy_files(location, str(local))
    return str(local)


# --------------------------------------------------------------------------- student and teacher

def _loss_fn(loss: Union[str, LossFn]) -> LossFn:
    return LOSSES[loss] if isinstance(loss, str) else loss


class _AdapterFiles:
    """Saving and loading the one LoRA adapter ("default") of a student or a teacher, which
    both hold `config`, `name`, `lm` and `adapter_path`."""

    def save_adapter(self, name: str | None = None) -> str:
        """Save the adapter to `<adapter_uri>/<name>` (default: this model's name)."""
        location = adapter_location(self.config.adapter_uri, name or self.name)
        self.adapter_path = self.lm.save_adapter(location)
        return self.adapter_path

    def load_adapter(self, location: str) -> Self:
        self.lm.load_adapter(location, "default", trainable=True)
        self.adapter_path = location
        return self


class CausalLMStudent(_AdapterFiles):
    """The strong student: fit(split, targets, loss) / predict_proba(split) on a testbed's
    public rows, with the same contract as EncoderStudent. Repeated fits keep training the
    same adapter, as the encoder student keeps training its head.

    With `config.inference == "pool"` the base model's reads go to the shared engine pool of
    `pool_config` (started on first use, then reused by every student of the same model) and the
    weights are loaded into this process only for a fit. Where no Ray is running (a sandboxed
    idea) the same reads run locally."""

    def __init__(self, rows: dict[str, object], config: CausalLMConfig, seed: int = 0,
                 name: str | None = None, pool_config: PoolConfig | None = None):
        self.rows = {split: as_records(r) for split, r in rows.items()}
        self.config = config
        self.seed = seed
        self.name = name or f"student-seed{seed}-{uuid.uuid4().hex[:8]}"
        self.pool_config = pool_config
        self._pool = None  # the shared pool's actor handle, once reached
        # A pool student may never need the weights here (a zero-shot prior): load them on demand.
        self._lm = LabelLM(config, seed) if config.inference == Inference.local else None
        self.losses: list[float] = []
        self.adapter_path: str | None = None
        self._encoded: dict[tuple[str, bool], list[EncodedPrompt]] = {}

    @property
    def lm(self) -> LabelLM:
        if self._lm is None:
            self._lm = LabelLM(self.config, self.seed)
        return self._lm

    def _prompts(self, split: str, rows: np.ndarray | None, zero_shot: bool = False) -> list[EncodedPrompt]:
        if (split, zero_shot) not in self._encoded:  # tokenise a split once
            encode = self.lm.prompts.encode
            self._encoded[(split, zero_shot)] = [encode(r, zero_shot) for r in self.rows[split]]
        encoded = self._encoded[(split, zero_shot)]
        return encoded if rows is None else [encoded[i] for i in np.asarray(rows)]

    def fit(self, split: str, targets: np.ndarray, loss: Union[str, LossFn] = "soft",
            weights: np.ndarray | None = None, rows: np.ndarray | None = None) -> "CausalLMStudent":
        """Train the LoRA adapter on `targets` (P(True) or P(A), soft or hard) for `rows` of `split`."""
        prompts = self._prompts(split, rows)
        if len(targets) != len(prompts):
            raise ValueError(f"{len(targets)} targets for {len(prompts)} rows of {split!r}")
        self.losses += self.lm.train(prompts, targets, _loss_fn(loss), weights)
        return self

    def predict_proba(self, split: str, rows: np.ndarray | None = None) -> np.ndarray:
        fitted = self._lm is not None and self._lm.has_adapter("default")
        if not fitted and self._engine_pool() is not None:  # the base model: the pool serves it
            return self._pool_scores(split, rows, zero_shot=False).astype(np.float32)
        adapter = "default" if fitted else None
        return _sigmoid(self.lm.predict_logit(self._prompts(split, rows), adapter))

    def zero_shot_scores(self, split: str) -> np.ndarray:
        """The base model's prior, no training and no adapter: log P(True) - log P(False) on
        the sandbox's zero-shot claim prompt (for comparison rows: the claim "A is more
        helpful than B"). Higher means more likely True / more likely A."""
        if self._engine_pool() is not None:
            return log_odds(self._pool_scores(split, None, zero_shot=True)).astype(np.float32)
        return self.lm.predict_logit(self._prompts(split, None, zero_shot=True), adapter=None)

    # -- the shared engine pool (inference: pool)

    def _engine_pool(self):
        """The shared pool's actor handle, or None to read the base model in this process."""
        if self.config.inference != Inference.pool:
            return None
        if self._pool is None:
            import ray

            if not ray.is_initialized():
                # No Ray here (a sandboxed idea, a plain script): a pool cannot be reached, and
                # starting a private Ray for one would load the weights anyway.
                warnings.warn("inference: pool, but Ray is not running in this process; the "
                              "base model is read locally", stacklevel=3)
                return None
            self._pool = self._start_pool()
        return self._pool

    def _start_pool(self):
        from aar_ray.engines.pool import shared_pool_name, start_shared_pool

        # Detached: the pool, and the engines it has loaded, outlive the experiment that started it.
        return start_shared_pool(shared_pool_name(self.config), self.config, self.pool_config,
                                 detached=True)

    def _pool_scores(self, split: str, rows: np.ndarray | None, zero_shot: bool) -> np.ndarray:
        """P(True) / P(A) from the pool; the pool formats each row as this student would."""
        import ray

        items = self.rows[split] if rows is None else [self.rows[split][i] for i in np.asarray(rows)]
        try:
            return ray.get(self._pool.score_labels.remote(items, None, BINARY_LABELS, zero_shot))
        except ray.exceptions.RayActorError as err:
            if isinstance(err, ray.exceptions.RayTaskError):
                raise  # the pool answered with an error (e.g. its replicas kept dying): not ours to retry
            # The pool actor itself died (its node was lost, someone stopped it): start or find a
            # new one under the same name and ask once more.
            self._pool = self._start_pool()
            return ray.get(self._pool.score_labels.remote(items, None, BINARY_LABELS, zero_shot))


class CausalLMTeacher(_AdapterFiles):
    """The weak teacher at GPU scale: the same label-token model fine-tuned by LoRA on
    train_label; fit(rows, labels) / predict_proba(rows) as BowTeacher."""

    def __init__(self, config: CausalLMConfig, seed: int = 0, name: str | None = None):
        self.config = config
        self.seed = seed
        self.name = name or f"teacher-seed{seed}-{uuid.uuid4().hex[:8]}"
        self.lm = LabelLM(config, seed)
        self.losses: list[float] = []
        self.adapter_path: str | None = None

    def fit(self, rows, labels: np.ndarray) -> "CausalLMTeacher":
        prompts = [self.lm.prompts.encode(r) for r in as_records(rows)]
        self.losses += self.lm.train(prompts, np.asarray(labels, dtype=np.float32), LOSSES["soft"])
        return self

    def predict_proba(self, rows) -> np.ndarray:
        prompts = [self.lm.prompts.encode(r) for r in as_records(rows)]
        adapter = "default" if self.lm.has_adapter("default") else None
        return _sigmoid(self.lm.predict_logit(prompts, adapter))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


# --------------------------------------------------------------------------- tiny models

# Words of the prompt templates, the labels, and a small world of content words. The tokenizer is
# a byte-level BPE, like Qwen's, trained here on these words, so each becomes one token (with and
# without a leading space) and any other text still encodes, byte by byte.
_TINY_WORDS = (
    "Question Answer Label False True A B Proposed Claim This answer is correct I think this claim "
    "more helpful than or ( ) ): : . ... , ? ! user assistant system "
    "red blue green yellow black white cat dog cow horse bird fish apple pear plum bread milk rice "
    "one two three four five six seven eight nine ten yes no the a of and to in it big small"
).split()
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# kind -> (transformers config class name, chat template or None)
TINY_MODELS = {"qwen3": ("Qwen3Config", None), "qwen2-chat": ("Qwen2Config", _CHATML)}
_TINY_VERSION = 3  # bump when the recipe changes, so cached folders are rebuilt


def materialize_tiny_model(kind: str, root: str | Path | None = None) -> Path:
    """Build (once) a tiny model of family `kind` with random weights and a locally trained
    tokenizer in a folder, and return the folder. Deterministic: a kind always gets the same model."""
    if kind not in TINY_MODELS:
        raise WeightsNotFoundError(f"unknown tiny model {kind!r}; known: {sorted(TINY_MODELS)}")
    root = Path(root or os.environ.get("AAR_TINY_MODELS", Path(tempfile.gettempdir()) / "aar_ray_tiny"))
    folder = root / f"{kind}-v{_TINY_VERSION}"
    if (folder / "config.json").exists():
        return folder
    staging = root / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    _write_tiny_model(kind, staging)
    try:
        staging.rename(folder)  # atomic: concurrent builders (Ray workers) never see half a model
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return folder


def _tiny_tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [form for w in _TINY_WORDS for form in (w, " " + w, ":" + w)] * 3
    corpus += [style.template for style in STYLES.values()]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=2000, min_frequency=1, special_tokens=_SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"])
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def _write_tiny_model(kind: str, folder: Path) -> None:
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, chat_template = TINY_MODELS[kind]
    tokenizer = _tiny_tokenizer(chat_template)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng():  # fixed weights, and the caller's random state left alone
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "aar_tiny.json").write_text(json.dumps({"kind": kind, "version": _TINY_VERSION}))
