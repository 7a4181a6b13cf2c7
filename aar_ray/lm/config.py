"""The settings of a label-reading causal LM (teacher or student): which weights, how prompts are
cut, the LoRA fit, the precision and where a student reads its base model. Importing this module
loads no torch, so configs can be checked before anything heavy starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Optional

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]



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
    # a folder (relative: under the aar home), or a URI pyarrow.fs can write (s3://, gs://)
    adapter_uri: str = "adapters"
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

