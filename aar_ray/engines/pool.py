"""A pool of inference engines, each a Ray actor, that grows and shrinks with its queue.

    caller ──score_labels(rows, adapter, zero_shot)──► EnginePool ──batches──► replica actors (1 engine each)

A request is cut into batches of `batch_size` items that wait in the pool's queue and go out to
replicas whose engine has loaded, at most two at a time each (one running, one waiting). The
queue depth (batches submitted and not yet answered, over all callers) sets the number of
replicas through one pure policy,
`desired_replicas`: ceil(queue_depth / target_queue_per_replica), clamped to [min, max].
Growing is immediate; shrinking waits `scale_down_after_s` of low demand (checked on every
request and, while idle, by a background thread), since a vLLM engine takes minutes to start.
A replica that dies is replaced and its batch sent again. Adapters are registered by name once
and loaded into every replica, present and future, without restarting any engine.

A replica asks Ray for `num_gpus`; with tensor_parallel > 1 it runs inside a placement group of
that many one-GPU bundles, where vLLM places its tensor-parallel workers. Share one pool among
many researchers by starting it as a named actor (`start_shared_pool`); a causal-LM student with
`inference: pool` reaches the pool named after its model (`shared_pool_name`) that way.
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence

import numpy as np
import ray

from aar_ray.engines.base import BINARY_LABELS, Engine, Item

if TYPE_CHECKING:
    from aar_ray.models.lm_config import CausalLMConfig


@dataclass
class PoolConfig:
    engine: str = "transformers"  # "transformers" (CPU, tests) or "vllm"
    min_replicas: int = 1
    max_replicas: int = 1
    target_queue_per_replica: int = 4  # queued batches one replica is expected to absorb
    batch_size: int = 64  # items per call to a replica
    num_gpus: float = 1  # per replica (tensor_parallel == 1)
    num_cpus: float = 1
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.85  # GPU replicas: share of the GPU; leave room for LoRA fits
    # CPU replicas (vLLM's CPU build): KV-cache size in GiB. vLLM reads gpu_memory_utilization as a
    # share of all the node's RAM on a CPU, which a shared node cannot give; this is used instead.
    cpu_kv_cache_gib: float = 1.0
    env: Dict[str, str] = field(default_factory=dict)  # environment variables of every replica process
    max_loras: int = 4  # adapters a vLLM engine keeps on the GPU at once
    scale_down_after_s: float = 300.0


def desired_replicas(queue_depth: int, target_queue_per_replica: int, min_replicas: int,
                     max_replicas: int) -> int:
    """The scaling policy: enough replicas for the queue, within [min_replicas, max_replicas]."""
    wanted = math.ceil(max(0, queue_depth) / max(1, target_queue_per_replica))
    return max(min_replicas, min(max_replicas, wanted))


def make_engine(model: "CausalLMConfig", pool: PoolConfig) -> Engine:
    """The engine a replica runs, by `pool.engine`."""
    if pool.engine == "vllm":
        from aar_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, pool.tensor_parallel, pool.gpu_memory_utilization, pool.max_loras,
                          cpu_kv_cache_gib=pool.cpu_kv_cache_gib)
    if pool.engine == "transformers":
        from aar_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model)
    raise ValueError(f"unknown engine {pool.engine!r}; use 'vllm' or 'transformers'")


WARM_UP_PROMPT = "Question: Is this a warm-up?\nLabel:"


class EngineReplica:
    """The body of one replica actor: an engine built in the actor's own process."""

    def __init__(self, factory: Callable[[], Engine]):
        self.engine = factory()

    def ready(self) -> bool:
        """True once the engine has answered a request: a loaded engine's first request still
        pays for lazy set-up (kernels, graphs, caches), which must not land on a caller's batch."""
        self.engine.score_labels([WARM_UP_PROMPT], None, BINARY_LABELS)
        return True

    def score_labels(self, items, adapter, labels, zero_shot=False):
        return self.engine.score_labels(items, adapter, labels, zero_shot)

    def generate(self, prompts, max_tokens, adapter):
        return self.engine.generate(prompts, max_tokens, adapter)

    def load_adapter(self, name: str, path: str) -> None:
        self.engine.load_adapter(name, path)


MAX_IN_FLIGHT_PER_REPLICA = 2


@dataclass
class _Replica:
    handle: Any
    ready_ref: Any
    placement_group: Any = None
    in_flight: int = 0
    is_ready: bool = False


@functools.lru_cache(maxsize=None)
def _replica_actor_class():
    return ray.remote(EngineReplica)


class EnginePool:
    def __init__(self, model: "CausalLMConfig", config: PoolConfig | None = None,
                 engine_factory: Optional[Callable[[], Engine]] = None):
        self.config = config or PoolConfig()
        if self.config.max_replicas < max(1, self.config.min_replicas):
            raise ValueError(f"max_replicas must be at least 1 and at least min_replicas: {self.config}")
        self._factory = engine_factory or functools.partial(make_engine, model, self.config)
        self._replicas: list[_Replica] = []
        self._adapters: dict[str, str] = {}
        self._queued = 0  # batches submitted and not yet answered, over all callers
        self._served = 0  # items answered, over all callers
        self._low_since: float | None = None
        self._lock = threading.Lock()
        with self._lock:
            self._resize(self.config.min_replicas)
        # Shrinking is otherwise only considered when a request arrives: an idle pool would keep
        # its GPUs until the next one. A daemon thread re-checks while nobody asks.
        self._stopped = threading.Event()
        threading.Thread(target=self._watch_idle, daemon=True, name="engine-pool-idle").start()

    # -- the engine interface

    def score_labels(self, items: Sequence[Item], adapter: str | None = None,
                     labels: tuple[str, str] = BINARY_LABELS, zero_shot: bool = False) -> np.ndarray:
        batches = self._batches(items)
        results = self._run("score_labels", [(b, adapter, labels, zero_shot) for b in batches])
        self._count_served(len(items))
        return np.concatenate(results) if results else np.zeros(0, dtype=np.float64)

    def generate(self, prompts: Sequence[str], max_tokens: int, adapter: str | None = None) -> list[str]:
        results = self._run("generate", [(b, max_tokens, adapter) for b in self._batches(prompts)])
        self._count_served(len(prompts))
        return [text for batch in results for text in batch]

    def load_adapter(self, name: str, path: str) -> None:
        """Serve `path` as `name` on every replica, now and on replicas started later."""
        with self._lock:
            self._adapters[name] = path
            refs = [r.handle.load_adapter.remote(name, path) for r in self._replicas]
        ray.get(refs)

    # -- scaling

    @property
    def replicas(self) -> int:
        return len(self._replicas)

    @property
    def ready_replicas(self) -> int:
        """Replicas whose engine has finished loading."""
        with self._lock:
            return sum(self._is_ready(r) for r in self._replicas)

    @property
    def queue_depth(self) -> int:
        return self._queued

    def stats(self) -> dict:
        """The numbers above, for callers that hold the pool as an actor (properties are not
        reachable through an actor handle)."""
        return {"replicas": self.replicas, "ready_replicas": self.ready_replicas,
                "queue_depth": self.queue_depth, "items_served": self._served}

    def replica_handles(self) -> list:
        """The replicas' actor handles: for health checks and fault drills."""
        with self._lock:
            return [r.handle for r in self._replicas]

    def autoscale(self) -> int:
        """Resize to what the current queue asks for; returns the replica count."""
        with self._lock:
            return self._autoscale()

    def shutdown(self) -> None:
        self._stopped.set()
        with self._lock:
            for replica in self._replicas:
                self._stop(replica)
            self._replicas = []

    # -- internals

    def _watch_idle(self) -> None:
        every = min(30.0, max(0.1, self.config.scale_down_after_s / 4))
        while not self._stopped.wait(every):
            with self._lock:
                if self._replicas and self._queued == 0:
                    self._autoscale()

    def _count_served(self, n: int) -> None:
        with self._lock:
            self._served += n

    def _batches(self, items: Sequence) -> list[list]:
        items = list(items)
        step = self.config.batch_size
        return [items[i : i + step] for i in range(0, len(items), step)]

    def _run(self, method: str, calls: list[tuple]) -> list:
        """Answer `calls` in order. Batches wait in the pool's queue and go out as replicas free up,
        so a replica that finishes loading mid-request takes its share."""
        with self._lock:
            self._queued += len(calls)
            self._autoscale()
        results: list = [None] * len(calls)
        waiting = list(range(len(calls)))  # indices of calls not yet sent
        pending: dict = {}  # ObjectRef -> (call index, replica)
        crashes = 0
        try:
            while waiting or pending:
                with self._lock:
                    while waiting and (replica := self._free_replica()) is not None:
                        replica.in_flight += 1
                        index = waiting.pop(0)
                        pending[getattr(replica.handle, method).remote(*calls[index])] = (index, replica)
                if not pending:  # no engine has loaded yet
                    ray.wait([r.ready_ref for r in self._replicas], num_returns=1, timeout=1.0)
                    continue
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    index, replica = pending.pop(ref)
                    with self._lock:
                        replica.in_flight -= 1
                    try:
                        results[index] = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        # The replica died (an engine crash, a lost node): replace it and send the
                        # batch again, unless replicas keep dying.
                        crashes += 1
                        with self._lock:
                            self._drop(replica)
                            self._autoscale()
                        if crashes > len(calls):
                            raise
                        waiting.insert(0, index)
                        continue
                    with self._lock:
                        self._queued -= 1
        finally:
            with self._lock:
                for _, replica in pending.values():  # only after an error: give up on the rest
                    replica.in_flight -= 1
                self._queued -= len(pending) + len(waiting)
                self._autoscale()
        return results

    def _free_replica(self) -> _Replica | None:
        """The least-loaded replica whose engine has loaded and that has room for another batch
        (one running, one waiting, so a replica never idles between batches)."""
        free = [r for r in self._replicas if r.in_flight < MAX_IN_FLIGHT_PER_REPLICA and self._is_ready(r)]
        return min(free, key=lambda r: r.in_flight, default=None)

    def _is_ready(self, replica: _Replica) -> bool:
        if not replica.is_ready:
            done, _ = ray.wait([replica.ready_ref], timeout=0)
            replica.is_ready = bool(done)
        return replica.is_ready

    def _autoscale(self) -> int:
        cfg = self.config
        want = desired_replicas(self._queued, cfg.target_queue_per_replica, cfg.min_replicas,
                                cfg.max_replicas)
        if want >= len(self._replicas):
            self._low_since = None
            self._resize(want)
        else:
            now = time.monotonic()
            self._low_since = self._low_since if self._low_since is not None else now
            if now - self._low_since >= cfg.scale_down_after_s:
                self._resize(want)
        return len(self._replicas)

    def _resize(self, want: int) -> None:
        while len(self._replicas) < want:
            self._replicas.append(self._start())
        idle = [r for r in self._replicas if r.in_flight == 0]
        for replica in idle[: max(0, len(self._replicas) - want)]:
            self._stop(replica)
            self._replicas.remove(replica)

    def _start(self) -> _Replica:
        cfg = self.config
        options: dict = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
        env = {"runtime_env": {"env_vars": dict(cfg.env)}} if cfg.env else {}
        group = None
        if cfg.tensor_parallel > 1:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            # One GPU per tensor-parallel rank, on one node; the replica itself holds a CPU of the
            # first bundle and vLLM's rank workers (child actors) take the GPUs.
            group = placement_group([{"GPU": 1, "CPU": 1}] * cfg.tensor_parallel, strategy="STRICT_PACK")
            options = {"num_cpus": 1, "num_gpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}
        handle = _replica_actor_class().options(**options, **env).remote(self._factory)
        for name, path in self._adapters.items():
            handle.load_adapter.remote(name, path)  # runs before any request: calls are ordered
        return _Replica(handle, handle.ready.remote(), group)

    def _drop(self, replica: _Replica) -> None:
        if replica in self._replicas:
            self._replicas.remove(replica)
            self._stop(replica)

    @staticmethod
    def _stop(replica: _Replica) -> None:
        ray.kill(replica.handle)
        if replica.placement_group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(replica.placement_group)


def start_shared_pool(name: str, model: "CausalLMConfig", config: PoolConfig | None = None,
                      engine_factory: Optional[Callable[[], Engine]] = None, max_concurrency: int = 64,
                      detached: bool = False):
    """The pool as a named Ray actor that every researcher can reach with ray.get_actor(name), or
    the one already running under `name` (its settings win). Its methods run in threads
    (`max_concurrency`), so callers' batches queue together.

    Ray ends a non-detached actor once its starter's handles are gone; `detached` keeps the pool
    (and its loaded engines) for the next experiment, until `stop_shared_pool` or the cluster stops."""
    options = dict(name=name, get_if_exists=True, num_cpus=0, max_concurrency=max_concurrency)
    if detached:
        options["lifetime"] = "detached"
    return ray.remote(EnginePool).options(**options).remote(model, config, engine_factory)


def stop_shared_pool(name: str) -> bool:
    """Stop the named pool and its replicas; False if no pool of that name is running."""
    try:
        actor = ray.get_actor(name)
    except ValueError:
        return False
    try:
        ray.get(actor.shutdown.remote())
    except ray.exceptions.RayActorError:
        pass  # already dying: its replicas go with it
    finally:
        ray.kill(actor)
    return True


def shared_pool_name(model: "CausalLMConfig") -> str:
    """The pool every student of one base model shares. The name holds the model's folder name,
    to be readable in `ray list actors`, and a hash of what changes an engine's answers (which
    weights, how prompts are formatted and cut, the precision, the LoRA rank it must serve), so
    differently configured students never read each other's pool."""
    served = (model.model, model.chat_template, model.max_length, model.dtype, model.lora_r)
    digest = hashlib.sha1(repr(served).encode()).hexdigest()[:8]
    return f"engine-pool:{model.model.rstrip('/').split('/')[-1]}-{digest}"
