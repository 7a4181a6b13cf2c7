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

A replica must become ready (its engine built and warmed up) within `replica_ready_timeout_s`,
or it is stopped and replaced: an engine that hangs while loading, or an actor Ray can never
place, would otherwise hold a request forever. A request fails, rather than wait on, a pool that
cannot serve it: with a TimeoutError when no replica has been ready for `replica_ready_timeout_s`
of its wait, with the engine's own error when `MAX_FAILED_STARTS` replica starts in a row failed
(the engine raised while it was built, the actor could not start), and with the replica's error
when replicas keep dying under its batches.

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

from aar_ray import environment
from aar_ray.engines.base import BINARY_LABELS, Engine, Item

if TYPE_CHECKING:
    from aar_ray.lm.config import CausalLMConfig


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
    # How long a replica may take to become ready (engine built and warmed up) before it is stopped
    # and replaced, and how long a request waits with no replica ready before it fails. Generous:
    # a vLLM engine can take many minutes to load (weights from a network disk, graph capture).
    # What it catches is an actor Ray can never place (no num_gpus/num_cpus free) or a hung engine.
    replica_ready_timeout_s: float = 1800.0


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
# A request gives up after this many replica starts in a row failed (the engine raised while it
# was built, or it did not become ready in time), with the last failure's error.
MAX_FAILED_STARTS = 3
# How long a waiting request sleeps in ray.wait at most: it must look again for what no object
# ref of its own announces (a replica freed by another caller, a readiness deadline passed).
POLL_S = 1.0


@dataclass
class _Replica:
    handle: Any
    ready_ref: Any
    placement_group: Any = None
    started: float = field(default_factory=time.monotonic)
    is_ready: bool = False
    error: Optional[BaseException] = None  # why it will never serve: a failed start or a timeout


class _Request:
    """One caller's batches on their way through the pool: waiting in the queue, sent to a
    replica (pending) or answered. Changed and read by other callers only under the pool's lock:
    the queue depth and the replicas' load are counted from the requests in progress."""

    def __init__(self, method: str, calls: list[tuple]):
        self.method = method
        self.calls = calls
        self.results: list = [None] * len(calls)
        self.waiting = list(range(len(calls)))  # indices of calls not yet sent, in order
        self.pending: dict = {}  # ObjectRef -> (call index, replica)
        self.crashes = 0  # replicas that died under one of its batches
        self.started = time.monotonic()
        self.ready_seen = self.started  # the last time the pool had a ready replica

    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.pending)


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
        self._model_name = getattr(model, "model", None) or "(a custom engine factory)"
        # Shared state, read and changed only under self._lock: callers' threads (a shared pool
        # runs each call in its own thread) and the idle thread below.
        self._replicas: list[_Replica] = []
        self._requests: list[_Request] = []  # in progress; their batches are the queue
        self._adapters: dict[str, str] = {}
        self._failed_starts: list[tuple[float, BaseException]] = []  # since a replica was last ready
        self._served = 0  # items answered, over all callers
        self._low_since: float | None = None
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a batch answered or given up: room on a replica
        self._stopped = threading.Event()
        with self._lock:
            self._resize(self.config.min_replicas)
        # Shrinking and replacing lost replicas are otherwise done only when a request arrives: an
        # idle pool would keep its GPUs, or a hung replica, until the next one. A daemon thread
        # does both while nobody asks.
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
            # A starting replica loads it before any batch (an actor's calls run in order);
            # waiting for it would wait for its engine, which may take minutes or never load.
            loaded = [ref for ref, replica in zip(refs, self._replicas) if self._is_ready(replica)]
        ray.get(loaded)

    # -- scaling

    @property
    def replicas(self) -> int:
        with self._lock:
            return len(self._replicas)

    @property
    def ready_replicas(self) -> int:
        """Replicas whose engine has finished loading."""
        with self._lock:
            return self._ready_count()

    @property
    def queue_depth(self) -> int:
        """Batches submitted and not yet answered, over all callers."""
        with self._lock:
            return self._queue_depth()

    def stats(self) -> dict:
        """The numbers above, for callers that hold the pool as an actor (properties are not
        reachable through an actor handle)."""
        with self._lock:
            return {"replicas": len(self._replicas), "ready_replicas": self._ready_count(),
                    "queue_depth": self._queue_depth(), "items_served": self._served}

    def replica_handles(self) -> list:
        """The replicas' actor handles: for health checks and fault drills."""
        with self._lock:
            return [r.handle for r in self._replicas]

    def autoscale(self) -> int:
        """Resize to what the current queue asks for; returns the replica count."""
        with self._lock:
            return self._autoscale()

    def shutdown(self) -> None:
        """Stop every replica; requests in progress, and any later, fail."""
        self._stopped.set()
        with self._lock:
            for replica in self._replicas:
                self._stop(replica)
            self._replicas = []
            self._freed.notify_all()

    # -- a request: a loop of steps, each under the lock but the wait

    def _run(self, method: str, calls: list[tuple]) -> list:
        """Answer `calls` in order. Batches wait in the pool's queue and go out as replicas free up,
        so a replica that finishes loading mid-request takes its share."""
        request = _Request(method, calls)
        with self._lock:
            self._check_running()
            self._requests.append(request)
            self._autoscale()
        try:
            while request.outstanding:
                with self._lock:
                    self._check_running()
                    self._tend_replicas(request)
                    self._dispatch(request)
                    answers = list(request.pending)
                    readiness = [r.ready_ref for r in self._replicas if self._starting(r)]
                    if not answers and not readiness:  # every replica is full of other callers' batches
                        self._freed.wait(POLL_S)
                        continue
                done, _ = ray.wait(answers + readiness, num_returns=1, timeout=POLL_S)
                for ref in done:
                    if ref in answers:  # else a replica became ready: the next round sends to it
                        self._collect(request, ref)
        finally:
            with self._lock:  # done, or failed: what is left of it leaves the queue
                self._requests.remove(request)
                self._autoscale()
                self._freed.notify_all()
        return request.results

    def _check_running(self) -> None:
        if self._stopped.is_set():
            raise RuntimeError(f"the engine pool for {self._model_name} was shut down")

    def _tend_replicas(self, request: _Request) -> None:
        """Replace the replicas that will never serve, and fail `request` rather than keep it
        waiting on a pool that cannot serve it."""
        now = time.monotonic()
        timeout = self.config.replica_ready_timeout_s
        self._replace_lost_replicas()
        failed = [error for at, error in self._failed_starts if at >= request.started]
        if len(failed) >= MAX_FAILED_STARTS:
            raise RuntimeError(f"the engine pool for {self._model_name} could not start a replica: {len(failed)} "
                               f"starts in a row failed; the last with: {failed[-1]}") from failed[-1]
        if self._ready_count():
            request.ready_seen = now
        elif now - request.ready_seen >= timeout:
            cfg = self.config
            needs = (f"num_gpus={cfg.num_gpus:g} and num_cpus={cfg.num_cpus:g}" if cfg.tensor_parallel == 1 else
                     f"{cfg.tensor_parallel} GPUs and {cfg.tensor_parallel} CPUs on one node (tensor_parallel="
                     f"{cfg.tensor_parallel})")
            raise TimeoutError(
                f"the engine pool for {self._model_name} has had no ready replica for the last "
                f"{now - request.ready_seen:.0f} s of this request (replica_ready_timeout_s={timeout:g}). "
                f"Check that the cluster has {needs} free for a replica (`ray status`), and the "
                f"replica actors' logs for an engine stuck while loading.")

    def _replace_lost_replicas(self) -> None:
        """Stop the replicas that will never serve (a failed start, a start past
        replica_ready_timeout_s) and start their replacements."""
        now = time.monotonic()
        timeout = self.config.replica_ready_timeout_s
        lost = False
        for replica in list(self._replicas):
            if self._starting(replica) and now - replica.started >= timeout:
                replica.error = TimeoutError(f"a replica was not ready {timeout:g} s after it started")
            if replica.error is not None:
                self._failed_starts.append((now, replica.error))
                del self._failed_starts[:-MAX_FAILED_STARTS]
                self._drop(replica)
                lost = True
        if lost:
            self._autoscale()

    def _dispatch(self, request: _Request) -> None:
        """Send waiting batches, in order, to replicas with room for them."""
        while request.waiting and (replica := self._free_replica()) is not None:
            index = request.waiting.pop(0)
            ref = getattr(replica.handle, request.method).remote(*request.calls[index])
            request.pending[ref] = (index, replica)

    def _collect(self, request: _Request, ref) -> None:
        """Take a finished batch's answer. A replica that died under it (an engine crash, a lost
        node) is replaced and the batch sent again, unless replicas keep dying; an error of the
        engine's own (a missing adapter) is the caller's."""
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            with self._lock:
                index, replica = request.pending.pop(ref)
                self._freed.notify_all()
                request.crashes += 1
                self._drop(replica)
                self._autoscale()
                if request.crashes > len(request.calls):
                    raise
                request.waiting.insert(0, index)
            return
        with self._lock:
            index, _ = request.pending.pop(ref)
            request.results[index] = result
            self._freed.notify_all()

    # -- replicas (callers hold the lock)

    def _queue_depth(self) -> int:
        return sum(request.outstanding for request in self._requests)

    def _in_flight(self, replica: _Replica) -> int:
        return sum(sent_to is replica for request in self._requests for _, sent_to in request.pending.values())

    def _free_replica(self) -> _Replica | None:
        """The least-loaded replica whose engine has loaded and that has room for another batch
        (one running, one waiting, so a replica never idles between batches)."""
        free = [r for r in self._replicas if self._is_ready(r) and self._in_flight(r) < MAX_IN_FLIGHT_PER_REPLICA]
        return min(free, key=self._in_flight, default=None)

    def _ready_count(self) -> int:
        return sum(self._is_ready(r) for r in self._replicas)

    def _starting(self, replica: _Replica) -> bool:
        return not self._is_ready(replica) and replica.error is None

    def _is_ready(self, replica: _Replica) -> bool:
        """Whether the replica's engine has loaded; a start that failed is recorded in its error."""
        if not replica.is_ready and replica.error is None:
            done, _ = ray.wait([replica.ready_ref], timeout=0)
            if done:
                try:
                    ray.get(done[0])
                except ray.exceptions.RayTaskError:
                    pass  # the engine loaded but its warm-up raised: requests meet that error, if it lasts
                except ray.exceptions.RayError as error:  # the actor died while its engine was built
                    replica.error = error
                    return False
                replica.is_ready = True
                self._failed_starts.clear()
        return replica.is_ready

    def _autoscale(self) -> int:
        if self._stopped.is_set():  # shut down: requests still running must not start replicas again
            return len(self._replicas)
        cfg = self.config
        want = desired_replicas(self._queue_depth(), cfg.target_queue_per_replica, cfg.min_replicas,
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
        idle = [r for r in self._replicas if self._in_flight(r) == 0]
        for replica in idle[: max(0, len(self._replicas) - want)]:
            self._stop(replica)
            self._replicas.remove(replica)

    def _watch_idle(self) -> None:
        """While no request is in progress: shrink after scale_down_after_s, and replace a replica
        that will never serve, so the next caller finds a loaded one. An engine that fails to
        start MAX_FAILED_STARTS times in a row is left to the next request, which reports it."""
        cfg = self.config
        every = min(30.0, max(0.1, min(cfg.scale_down_after_s, cfg.replica_ready_timeout_s) / 4))
        while not self._stopped.wait(every):
            with self._lock:
                if self._replicas and not self._requests:
                    if len(self._failed_starts) < MAX_FAILED_STARTS:
                        self._replace_lost_replicas()
                    self._autoscale()

    def _count_served(self, n: int) -> None:
        with self._lock:
            self._served += n

    def _batches(self, items: Sequence) -> list[list]:
        items = list(items)
        step = self.config.batch_size
        return [items[i : i + step] for i in range(0, len(items), step)]

    def _start(self) -> _Replica:
        cfg = self.config
        options: dict = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
        env = {"runtime_env": {"env_vars": environment.engine_process_env(cfg.env)}}
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


# How long stop_shared_pool waits for Ray to free the pool's name after killing it.
POOL_NAME_RELEASE_S = 120.0


def stop_shared_pool(name: str) -> bool:
    """Stop the named pool and its replicas; False if no pool of that name is running. Returns
    once the name is free: ray.kill is asynchronous, and a start_shared_pool in between would
    get the dying pool back (get_if_exists) and never start replicas."""
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
    deadline = time.monotonic() + POOL_NAME_RELEASE_S
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            return True
        time.sleep(0.1)
    raise TimeoutError(f"the pool {name!r} was killed but Ray still lists it after {POOL_NAME_RELEASE_S:.0f} s")


def shared_pool_name(model: "CausalLMConfig") -> str:
    """The pool every student of one base model shares. The name holds the model's folder name,
    to be readable in `ray list actors`, and a hash of what changes an engine's answers (which
    weights, how prompts are formatted and cut, the precision, the LoRA rank it must serve), so
    differently configured students never read each other's pool."""
    served = (model.model, model.chat_template, model.max_length, model.dtype, model.lora_r)
    digest = hashlib.sha1(repr(served).encode()).hexdigest()[:8]
    return f"engine-pool:{model.model.rstrip('/').split('/')[-1]}-{digest}"
