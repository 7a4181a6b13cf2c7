"""The W2S method library: every method is `run(ctx) -> P(True)/P(A) for ctx.eval_split`.

An agent's idea is a file with the same `run(ctx)`; the library's methods are the baselines it
must beat. A method is named on the command line as `name` or `name:key=value,key=value`
(for example `vanilla_w2s:loss=soft`); unknown names and parameters are errors that list the
allowed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from aar_ray.errors import UserError
from aar_ray.methods import aux_confidence, confident_only, self_training, vanilla_w2s, zero_shot_prior
from aar_ray.methods.context import MethodContext


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[MethodContext], np.ndarray]
    defaults: dict
    choices: dict  # parameter -> allowed values, where only some are meaningful
    summary: str


def _method(module) -> Method:
    name = module.__name__.rsplit(".", 1)[-1]
    return Method(name, module.run, dict(module.DEFAULTS), getattr(module, "CHOICES", {}),
                  module.__doc__.strip().splitlines()[0])


METHODS: dict[str, Method] = {m.name: m for m in map(_method, [
    vanilla_w2s, confident_only, aux_confidence, self_training, zero_shot_prior])}


class MethodSpecError(UserError, ValueError):
    pass


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_method(spec: str) -> tuple[str, dict]:
    """`name:key=value,...` -> (name, params with the method's defaults filled in)."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise MethodSpecError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    method = METHODS[name]
    params = dict(method.defaults)
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in method.defaults:
            allowed = ", ".join(f"{k} (default {v!r})" for k, v in method.defaults.items()) or "none"
            raise MethodSpecError(f"{spec!r}: {name} has no parameter {key!r}; allowed: {allowed}")
        if key in method.choices and value not in method.choices[key]:
            raise MethodSpecError(f"{spec!r}: {key}={value!r}; allowed: {', '.join(method.choices[key])}")
        try:
            params[key] = value if isinstance(method.defaults[key], str) \
                else type(method.defaults[key])(_parse_value(value))
        except ValueError:
            raise MethodSpecError(f"{spec!r}: {key}={value!r} is not a "
                                  f"{type(method.defaults[key]).__name__}") from None
    return name, params


def method_label(name: str, params: dict) -> str:
    """The spec string again, with only the parameters that differ from the defaults."""
    changed = {k: v for k, v in params.items() if METHODS[name].defaults.get(k) != v}
    return name + (":" + ",".join(f"{k}={v}" for k, v in changed.items()) if changed else "")


__all__ = ["METHODS", "Method", "MethodContext", "MethodSpecError", "method_label", "parse_method"]
