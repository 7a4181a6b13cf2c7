"""Novelty of an idea against what its campaign already holds: earlier ideas (their names,
descriptions and code), forum posts, and the code those posts share.

Two similarities, the larger counts: meaning (cosine of MiniLM sentence vectors of a short
description: the idea's name, its docstring and comments, or a library method's summary) and
code (Jaccard overlap of 3-token shingles, which survives renamed files and reordered
functions less than it survives copy-paste, which is the point). Novelty is 1 minus the largest
similarity to anything earlier. An idea at least NEAR_DUPLICATE similar to another researcher's
earlier idea is marked `near_duplicate_of`, not refused: rediscovery is worth knowing, and
sometimes worth doing.

Everything here reads public content only (names, text, code); nothing carries a score.
"""

from __future__ import annotations

import functools
import io
import re
import tokenize
from dataclasses import dataclass

import numpy as np

NEAR_DUPLICATE = 0.9
NEAREST = 3
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|[^\s\w]")


@dataclass
class Earlier:
    """Something already in the campaign that a new idea is compared with."""

    kind: str  # idea | post | code
    ref: int  # forum result, post or shared-code id
    author: str
    title: str
    text: str  # what its meaning is read from
    code: str = ""


def describe(name: str, code: str | None) -> str:
    """The text an idea's meaning is read from: its name (an idea's name or a method's label, no
    `idea:` prefix), then its docstrings and comments (what the researcher says it does), else a
    library method's one-line summary."""
    words = re.sub(r"[_:=,]", " ", name)
    if code:
        return f"{words}. {' '.join(_prose(code))}"[:2000]
    from aar_ray.methods import METHODS, parse_method

    try:
        method = METHODS.get(parse_method(name)[0])
    except ValueError:
        method = None
    return f"{words}. {method.summary}" if method else words


def _prose(code: str) -> list[str]:
    """Comments and string literals of Python source (docstrings among them); tolerant of code
    that does not tokenize to the end."""
    out = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            if token.type == tokenize.COMMENT:
                out.append(token.string.lstrip("#").strip())
            elif token.type == tokenize.STRING and len(token.string) > 12:
                out.append(token.string.strip("\"'rbuf \n"))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def code_similarity(a: str, b: str) -> float:
    """Jaccard overlap of the two sources' 3-token shingles (0 when either is empty)."""
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def _shingles(code: str) -> set[tuple[str, ...]]:
    tokens = _TOKEN.findall(re.sub(r"#.*", "", code))
    return {tuple(tokens[i:i + 3]) for i in range(max(0, len(tokens) - 2))}


@functools.lru_cache(maxsize=1)
def _encoder():
    from aar_ray.models.encoder import SentenceEncoder

    return SentenceEncoder("minilm-l6", max_length=128)


def _cosines(text: str, others: list[str]) -> np.ndarray:
    if not others:
        return np.zeros(0)
    vectors = _encoder().embed([text, *others])
    return np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)


def earlier_items(forum, testbed: str | None = None) -> list[Earlier]:
    """The campaign's recorded ideas (on `testbed`), its posts, and the code posts share."""
    items = []
    for result in forum.results():
        if testbed and result.testbed != testbed:
            continue
        code = (forum.read_code(result.code_ref) or {}).get("code", "") if result.code_ref else ""
        items.append(Earlier("idea", result.id, result.researcher, result.label, describe(result.name, code), code))
    for post in forum.read_posts(limit=100_000):
        if post["author"] == "novelty-check":  # the check's own marks are not ideas
            continue
        items.append(Earlier("post", post["id"], post["author"], post["title"], f"{post['title']}. {post['body']}"[:2000]))
        for code_id in _ids(post.get("code_refs")):
            shared = forum.read_code(code_id) or {}
            if shared.get("code"):
                items.append(Earlier("code", code_id, shared.get("author", post["author"]), shared.get("name", ""),
                                     describe(shared.get("name", ""), shared["code"]), shared["code"]))
    return items


def _ids(value) -> list[int]:
    import json

    if not value:
        return []
    parsed = json.loads(value) if isinstance(value, str) else value
    return [int(v) for v in parsed]


def novelty(researcher: str, idea: str, code: str | None, earlier: list[Earlier]) -> dict:
    """The novelty of `idea` (its name, as `describe` takes it) against `earlier`:
    {"novelty": 1 - largest similarity, "nearest": the NEAREST most similar earlier items,
    "near_duplicate_of": another researcher's idea at least NEAR_DUPLICATE similar, or None}."""
    if not earlier:
        return {"novelty": 1.0, "nearest": [], "near_duplicate_of": None}
    meaning = _cosines(describe(idea, code), [item.text for item in earlier])
    similarity = [max(float(m), code_similarity(code or "", item.code)) for m, item in zip(meaning, earlier)]
    order = np.argsort(similarity)[::-1]
    nearest = [{"kind": earlier[i].kind, "id": earlier[i].ref, "author": earlier[i].author,
                "title": earlier[i].title, "similarity": round(similarity[i], 3)} for i in order[:NEAREST]]
    duplicate = next((n for n in nearest if n["kind"] == "idea" and n["author"] != researcher
                      and n["similarity"] >= NEAR_DUPLICATE), None)
    return {"novelty": round(1.0 - similarity[order[0]], 3), "nearest": nearest,
            "near_duplicate_of": f"{duplicate['title']} ({duplicate['author']})" if duplicate else None}
