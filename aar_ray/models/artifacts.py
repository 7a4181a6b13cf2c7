"""Cached inputs every experiment on a testbed shares: sentence vectors and weak labels.

Both are pure functions of public data and a config, so they are computed once and stored under
`<home>/cache/` by content key (the testbed's content hash, the config, the seed). Writes go to a
temporary file and are renamed into place, so parallel experiments never read a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aar_ray.models.student import RowVectors
from aar_ray.models.teacher import BowTeacher, TeacherConfig
from aar_ray.testbeds import PUBLIC_SPLITS, load_public, load_teacher_data, testbed_meta
from aar_ray.testbeds.store import FORMATS

WEAK_SPLITS = PUBLIC_SPLITS  # the teacher labels every row a method may predict on


def content_key(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_save(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # public data: sandboxed idea code reads it as an unprivileged user
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def frame_vectors(frame: pd.DataFrame, fmt: str, table: dict[str, np.ndarray]) -> RowVectors:
    return RowVectors(fmt, {f: np.stack([table[t] for t in frame[f]]) for f in FORMATS[fmt]})


def testbed_vectors(name: str, home: Path, encoder: str = "minilm-l6",
                    progress: bool = False) -> dict[str, RowVectors]:
    """Sentence vectors of every text field of every split, embedded once per testbed."""
    meta = testbed_meta(name, home)
    public = load_public(name, home)
    fields = FORMATS[meta["format"]]
    path = Path(home) / "cache" / "vectors" / f"{name}-{content_key(meta['content_hash'], encoder)}.npz"
    if path.exists():
        stored = np.load(path, allow_pickle=False)
        table = dict(zip(stored["texts"].tolist(), stored["vectors"]))
    else:
        from aar_ray.models.encoder import SentenceEncoder

        texts = sorted({t for frame in public.values() for f in fields for t in frame[f]})
        vectors = SentenceEncoder(encoder).embed(texts, progress=progress)
        _atomic_save(path, lambda tmp: np.savez(open(tmp, "wb"), texts=np.array(texts), vectors=vectors))
        table = dict(zip(texts, vectors))
    return {split: frame_vectors(public[split], meta["format"], table) for split in PUBLIC_SPLITS}


def binary_labels(labels) -> np.ndarray:
    """True/"A" as 1.0, False/"B" as 0.0: every model here predicts P(True) or P(A)."""
    return np.array([float(v == "A") if isinstance(v, str) else float(bool(v)) for v in labels],
                    dtype=np.float32)


def make_teacher(config: TeacherConfig, seed: int, home: Path | None = None):
    """The weak teacher of a config: bag-of-words on CPU, or a preset's causal LM (LoRA), its
    adapters under `home`."""
    if config.kind == "causal_lm":
        from aar_ray.models.presets import load_preset
        from aar_ray.models.causal_lm import CausalLMTeacher

        return CausalLMTeacher(load_preset(config.preset, home).teacher, seed)
    return BowTeacher(config, seed)


@dataclass
class WeakLabels:
    """The teacher's P(True)/P(A) on each split a method may use (train_unlabel, test), in the
    public view's row order."""

    probs: dict[str, np.ndarray]
    teacher: dict
    seed: int

    def shuffled(self, seed: int) -> "WeakLabels":
        """The teacher-ablation control: each split's labels permuted across its rows. The share of
        True (or A) is kept and only the row-to-label link is broken, so a method that scores as
        well with these is not using what the teacher knows about each row."""
        rng = np.random.default_rng(seed)
        return WeakLabels({split: rng.permutation(p) for split, p in self.probs.items()},
                          {**self.teacher, "shuffled": True}, self.seed)


def weak_labels(name: str, home: Path, teacher: TeacherConfig, seed: int) -> WeakLabels:
    """Train the teacher on train_label (the harness's copy; researchers never see it) and label
    the public splits, once per (config, seed)."""
    meta = testbed_meta(name, home)
    key = content_key(meta["content_hash"], asdict(teacher), seed)
    path = Path(home) / "cache" / "weak" / name / f"{key}.parquet"
    if not path.exists():
        public, labelled = load_public(name, home), load_teacher_data(name, home)
        model = make_teacher(teacher, seed, home).fit(labelled.to_dict("records"), binary_labels(labelled["label"]))
        frame = pd.concat([
            pd.DataFrame({"split": split, "id": public[split]["id"],
                          "p": model.predict_proba(public[split].to_dict("records"))})
            for split in WEAK_SPLITS])
        _atomic_save(path, lambda tmp: frame.to_parquet(tmp, index=False))
    frame = pd.read_parquet(path)
    probs = {split: frame.loc[frame["split"] == split, "p"].to_numpy() for split in WEAK_SPLITS}
    return WeakLabels(probs, asdict(teacher), seed)
