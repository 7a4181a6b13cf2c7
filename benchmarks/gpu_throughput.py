"""Label-scoring and LoRA-training throughput of the causal-LM path: one JSON line.

    .venv/bin/python benchmarks/gpu_throughput.py [--model PATH] [--rows 256]

GPU part (needs CUDA, the `gpu` extra and local weights of a Qwen3-4B-Base-shaped model given as
--model): prompt tokens/s of label scoring through the vLLM engine versus transformers batched
scoring on the same model, and LoRA training tokens/s with model FLOPs utilisation
(6 x parameters x tokens / seconds / peak FLOPs), against the study's chat ceiling run of about
6,300 s per run. Without a GPU that part is reported as skipped, and the CPU part runs: the same
transformers scoring and LoRA measurements on a tiny Qwen3 built from a config.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from aar_ray.models.causal_lm import CausalLMConfig, CausalLMStudent, materialize_tiny_model

H100_BF16_PEAK_FLOPS = 989e12  # dense bf16, SXM (vendor datasheet)


def rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    words = "the cat dog red blue big small river tree stone light dark".split()
    return [{"question": " ".join(rng.choice(words, 12)), "choice": " ".join(rng.choice(words, 6))} for _ in range(n)]


def prompt_tokens(student: CausalLMStudent, split: str) -> int:
    return sum(len(p.ids) for p in student._prompts(split, None))


def measure_transformers(config: CausalLMConfig, n: int) -> dict:
    data = {"train": rows(n)}
    student = CausalLMStudent(data, config, seed=0)
    tokens = prompt_tokens(student, "train")
    start = time.perf_counter()
    student.predict_proba("train")
    scoring_seconds = time.perf_counter() - start
    start = time.perf_counter()
    student.fit("train", np.random.default_rng(1).random(n), loss="soft")
    train_seconds = time.perf_counter() - start
    params = sum(p.numel() for p in student.lm.model.parameters())
    return {"prompt_tokens": tokens, "scoring_tokens_per_s": round(tokens / scoring_seconds, 1),
            "lora_train_tokens_per_s": round(tokens * config.epochs / train_seconds, 1),
            "parameters": params, "train_seconds": round(train_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="local weights of the GPU model (Qwen3-4B-Base shape)")
    parser.add_argument("--rows", type=int, default=256)
    args = parser.parse_args()
    out = {"benchmark": "gpu_throughput", "machine": platform.machine(), "cuda": torch.cuda.is_available()}
    tiny = CausalLMConfig(model=str(materialize_tiny_model("qwen3")), epochs=1, batch_size=32,
                          micro_batch_size=32, gradient_checkpointing=False, max_length=256, lora_r=8)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out["cpu_tiny_qwen3_transformers"] = measure_transformers(tiny, args.rows)
    if not torch.cuda.is_available() or args.model is None:
        out["gpu"] = "skipped: " + ("no CUDA device" if not torch.cuda.is_available() else "no --model weights")
    else:
        gpu = CausalLMConfig(model=args.model, epochs=1, max_length=2048)
        measured = measure_transformers(gpu, args.rows)
        flops = 6 * measured["parameters"] * measured["lora_train_tokens_per_s"]
        measured["mfu_vs_h100_bf16"] = round(flops / H100_BF16_PEAK_FLOPS, 4)
        out["gpu_transformers"] = measured
        out["gpu_vllm"] = measure_vllm(gpu, args.rows)
        out["vllm_over_transformers_scoring"] = round(
            out["gpu_vllm"]["scoring_tokens_per_s"] / measured["scoring_tokens_per_s"], 2)
    print(json.dumps(out))


def measure_vllm(config: CausalLMConfig, n: int) -> dict:
    from aar_ray.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(config)
    items = rows(n)
    engine.score_labels(items[:8])  # warm-up: compile and allocate before timing
    student = CausalLMStudent({"train": items}, config, seed=0)
    tokens = prompt_tokens(student, "train")
    start = time.perf_counter()
    engine.score_labels(items)
    return {"prompt_tokens": tokens, "scoring_tokens_per_s": round(tokens / (time.perf_counter() - start), 1)}


if __name__ == "__main__":
    main()
