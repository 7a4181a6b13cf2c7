"""One command for the day a GPU is lent: is the causal-LM path healthy there, and how fast is it?
Prints one JSON line.

    .venv/bin/python benchmarks/gpu_check.py                      # a GPU: Qwen3-4B-shaped, random weights
    .venv/bin/python benchmarks/gpu_check.py --model /models/Qwen3-4B-Base   # real weights
    .venv/bin/python benchmarks/gpu_check.py --model tiny:qwen3   # CPU, seconds (what CI runs)

Steps, each reported with `ok` and its figures (or the error), so one failure does not hide the
others:
  - model: the weights -- `--model` (a folder, a cached hub id, gguf:..., tiny:...), else on a GPU
    a Qwen3-4B-shaped model with random weights built here (no network), else tiny:qwen3;
  - transformers_scoring: label-scoring prompt tokens/s of the transformers engine;
  - vllm_scoring: the same rows through the vLLM engine, tokens/s, and the largest difference in
    P(label) from transformers (same dtype on both sides);
  - lora_training: LoRA training tokens/s of the student, and MFU on a GPU
    (6 x parameters x tokens/s over the GPU's dense bf16 peak);
  - engine_pool: an EnginePool of one vLLM replica (on the GPU, or the CPU) in a private local Ray,
    answering the same rows as the in-process engine.
`vllm_over_transformers_scoring` is the ratio of the two scoring rates; `ok` is true when every
step passed. Built to finish in under 8 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from aar_ray import environment

BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, vendor datasheets
# Qwen3-4B-Base's shape (its config.json): built with random weights when no --model is given.
QWEN3_4B = dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=32768,
                rope_theta=1_000_000, tie_word_embeddings=True, rms_norm_eps=1e-6)
GPU_SHARE = 0.3  # each vLLM engine's share of the GPU: the in-process one and the pool's replica


def rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    words = "the cat dog red blue big small river tree stone light dark".split()
    return [{"question": " ".join(rng.choice(words, 24)), "choice": " ".join(rng.choice(words, 8))}
            for _ in range(n)]


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_flops() -> float | None:
    import torch

    name = torch.cuda.get_device_name(0)
    return next((flops for key, flops in BF16_PEAK_FLOPS.items() if key in name), None)


def build_random_qwen3_4b(folder: Path) -> str:
    """A Qwen3-4B-shaped model with random weights (bf16 safetensors) and the tiny models'
    tokenizer: the real compute shape with nothing downloaded."""
    import torch
    import transformers

    from aar_ray.lm.weights import _tiny_tokenizer

    if (folder / "config.json").exists():
        return str(folder)
    tokenizer = _tiny_tokenizer(None)
    config = transformers.Qwen3Config(**QWEN3_4B, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return str(folder)


def model_config(model: str, max_length: int):
    from aar_ray.lm.config import CausalLMConfig

    gpu = on_gpu()
    # One dtype for both engines, so that their answers can be compared: bf16 on a GPU, float32 on a CPU.
    return CausalLMConfig(model=model, dtype="bfloat16" if gpu else "float32", max_length=max_length,
                          lora_r=16 if gpu else 4, lora_alpha=16 if gpu else 8, epochs=1,
                          batch_size=16 if gpu else 8, micro_batch_size=16 if gpu else 8, eval_batch_size=64,
                          gradient_checkpointing=gpu, adapter_uri=tempfile.mkdtemp(prefix="gpu-check-"))


def prompt_tokens(engine, items) -> int:
    return sum(len(p.ids) for p in engine.encode(items, ("False", "True")))


def timed(fn: Callable) -> tuple[object, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def free_memory() -> None:
    gc.collect()
    if on_gpu():
        import torch

        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- steps

def step_transformers(config, items, state) -> dict:
    from aar_ray.engines import TransformersEngine

    engine = TransformersEngine(config)
    engine.score_labels(items[:4])  # warm-up
    tokens = prompt_tokens(engine, items)
    state["tokens"] = tokens
    state["transformers_p"], seconds = timed(lambda: engine.score_labels(items))
    del engine
    free_memory()
    return {"prompt_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2)}


def step_vllm(config, items, state) -> dict:
    from aar_ray.engines.vllm_engine import VLLMEngine

    (engine, start_seconds) = timed(lambda: VLLMEngine(config, gpu_memory_utilization=GPU_SHARE, max_loras=1,
                                                       cpu_kv_cache_gib=1.0))
    engine.score_labels(items[:4])  # warm-up
    p, seconds = timed(lambda: engine.score_labels(items))
    state["vllm_p"] = p
    diff = float(np.abs(p - state["transformers_p"]).max()) if "transformers_p" in state else None
    # bf16 rounding on a GPU moves P(label) by up to a few hundredths; float32 agrees to ~1e-5
    limit = 0.05 if on_gpu() else 1e-4
    result = {"engine_start_seconds": round(start_seconds, 1), "dtype": engine.dtype,
              "tokens_per_s": round(state["tokens"] / seconds, 1), "seconds": round(seconds, 2),
              "max_abs_diff_vs_transformers": diff}
    del engine
    free_memory()
    if diff is None or diff > limit:
        raise AssertionError(f"vLLM and transformers disagree: max |dP| {diff} > {limit} ({result})")
    return result


def step_lora(config, items, state) -> dict:
    from aar_ray.models.causal_lm import CausalLMStudent

    student = CausalLMStudent({"train": items}, config, seed=0)
    tokens = sum(len(p.ids) for p in student._prompts("train", None))
    targets = np.random.default_rng(1).random(len(items))
    _, seconds = timed(lambda: student.fit("train", targets, loss="soft"))
    params = sum(p.numel() for p in student.lm.model.parameters())
    result = {"rows": len(items), "tokens_per_s": round(tokens * config.epochs / seconds, 1),
              "seconds": round(seconds, 2), "parameters": params}
    if on_gpu():
        peak = peak_flops()
        result["mfu"] = round(6 * params * result["tokens_per_s"] / peak, 4) if peak else None
    del student
    free_memory()
    return result


def step_pool(config, items, state) -> dict:
    import ray

    from aar_ray.engines import EnginePool, PoolConfig

    gpu = on_gpu()
    ray.init(address="local", num_cpus=2, num_gpus=1 if gpu else 0, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        pool = EnginePool(config, PoolConfig(engine="vllm", num_gpus=1 if gpu else 0, num_cpus=1,
                                             gpu_memory_utilization=GPU_SHARE, cpu_kv_cache_gib=1.0,
                                             batch_size=64, scale_down_after_s=600))
        try:
            p, seconds = timed(lambda: pool.score_labels(items))  # includes the replica's start
            diff = float(np.abs(p - state["vllm_p"]).max()) if "vllm_p" in state else None
            result = {"replicas": pool.replicas, "seconds_with_start": round(seconds, 1),
                      "max_abs_diff_vs_in_process_vllm": diff}
        finally:
            pool.shutdown()
    finally:
        ray.shutdown()
    if diff is not None and diff > 1e-3:
        raise AssertionError(f"the pool's replica and the in-process engine disagree: {result}")
    return result


def run_step(report: dict, name: str, fn: Callable, *args) -> None:
    start = time.perf_counter()
    try:
        report["steps"][name] = {"ok": True, **fn(*args)}
    except Exception as err:  # reported, and the next steps still run
        report["steps"][name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:800],
                                 "where": traceback.format_exc().strip().splitlines()[-3:]}
    report["steps"][name]["step_seconds"] = round(time.perf_counter() - start, 1)


def main(argv: list[str] | None = None) -> dict:
    environment.prepare_process()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="weights: a folder, a cached hub id, gguf:..., tiny:...; "
                                                      "default: Qwen3-4B-shaped random weights on a GPU, "
                                                      "tiny:qwen3 on a CPU")
    parser.add_argument("--rows", type=int, default=None, help="rows scored and trained on (default 512 on "
                                                               "a GPU, 64 on a CPU)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "aar_gpu_check"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    gpu = on_gpu()
    report: dict = {"benchmark": "gpu_check", "machine": platform.machine(), "python": sys.version.split()[0],
                    "device": _device_name(), "steps": {}}
    state: dict = {}
    model = args.model

    def resolve() -> dict:
        nonlocal model
        from aar_ray.lm.weights import resolve_model_path

        if model is None:
            model = (build_random_qwen3_4b(Path(args.work_dir) / "qwen3-4b-random") if gpu else "tiny:qwen3")
        return {"model": model, "folder": resolve_model_path(model)}

    run_step(report, "model", resolve)
    if report["steps"]["model"]["ok"]:
        config = model_config(model, args.max_length)
        items = rows(args.rows or (512 if gpu else 64))
        report["model"], report["dtype"], report["rows"] = model, config.dtype, len(items)
        run_step(report, "transformers_scoring", step_transformers, config, items, state)
        run_step(report, "vllm_scoring", step_vllm, config, items, state)
        run_step(report, "lora_training", step_lora, config, items, state)
        run_step(report, "engine_pool", step_pool, config, items[: min(len(items), 128)], state)
    steps = report["steps"]
    if steps.get("vllm_scoring", {}).get("ok") and steps.get("transformers_scoring", {}).get("ok"):
        report["vllm_over_transformers_scoring"] = round(
            steps["vllm_scoring"]["tokens_per_s"] / steps["transformers_scoring"]["tokens_per_s"], 2)
    report["ok"] = all(step["ok"] for step in steps.values()) and len(steps) == 5
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report), flush=True)
    return report


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
