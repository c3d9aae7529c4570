"""Workloads for the cluster simulator: request shapes, arrival processes and trace readers.

A workload is a list of `SimRequest`s in arrival order, built once and replayed against every
strategy, so all of them see the same arrivals. Generators yield *shapes* (model, prompt and
output tokens, prefix block ids, session); arrival times come from a Poisson or Gamma process
(`arrival_times`) or from the trace itself.

Prefix block ids are chained: an id stands for the whole prompt up to the end of its block,
so two prompts share a leading run of ids exactly when they share that prefix. Generated
prompts are grown with `BlockIds.extend`, which gives fresh ids to every block that holds new
content; traces bring their own (Mooncake: one id per 512-token block). Only full blocks get
an id: a partial last block is not cacheable, as in vLLM and llama.cpp.
"""

from __future__ import annotations

import csv
import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import msgspec
import numpy as np

from ollamamax.errors import ConfigError

WORKLOADS = ("shared-prefix", "multi-turn", "zipf-models", "shifting-models", "low-sharing",
             "trace")
TRACE_FORMATS = ("mooncake", "csv")
BLOCK_TOKENS = 64  # generated workloads: small enough that a 128-token question is 2 blocks
MOONCAKE_BLOCK_TOKENS = 512  # the Mooncake release hashes 512-token blocks
DEFAULT_REQUESTS = 1024  # SGLang's generated-shared-prefix: 64 groups x 16 prompts
DEFAULT_LOAD = 0.8
THINK_S = 20.0  # multi-turn: mean seconds between two turns of one chat (sets chats in flight)
# multi-turn: a user sends the next turn no sooner than after reading the answer
READ_S = 2.0
READ_TOKENS_PER_S = 20.0
# shifting-models: the popularity ranking rotates by SHIFT_STEP models every SHIFT_PERIOD_S
SHIFT_PERIOD_S = 120.0
SHIFT_STEP = 3
SHIFTING_MODELS = 24
GB = 10**9

# Ollama library models at Q4_K_M, (name, about the size `ollama pull` reports)
CATALOGUE: tuple[tuple[str, int], ...] = (
    ("qwen2.5:0.5b", 398_000_000), ("llama3.2:1b", 1_300_000_000),
    ("gemma2:2b", 1_600_000_000), ("llama3.2:3b", 2_000_000_000),
    ("phi3.5:3.8b", 2_200_000_000), ("qwen2.5:7b", 4_700_000_000),
    ("llama3.1:8b", 4_900_000_000), ("gemma2:9b", 5_400_000_000),
    ("mistral-nemo:12b", 7_100_000_000), ("qwen2.5:14b", 9_000_000_000),
    ("phi4:14b", 9_100_000_000), ("mistral-small:22b", 13_000_000_000),
    ("gemma2:27b", 16_000_000_000), ("qwen2.5:32b", 20_000_000_000),
)
DEFAULT_MODEL = ("llama3.1:8b", 4_900_000_000)


@dataclass(slots=True)
class SimRequest:
    """One request of a workload; read-only once the workload is built."""

    arrival: float  # seconds of virtual time
    model: str
    prompt_tokens: int
    output_tokens: int
    prefix: tuple[int, ...] = ()  # chained ids of the prompt's full blocks
    session: int = -1  # group (shared-prefix), chat (multi-turn), -1 when none
    answer_prefix: tuple[int, ...] = ()  # prompt + answer blocks, cached once it is done


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    requests: list[SimRequest]
    models: dict[str, int]  # every model of the workload and its size in bytes
    block_tokens: int
    rate: float  # mean arrivals per second
    max_loaded: int | None = None  # node settings the workload is defined with, if any
    keep_alive: float | None = None
    num_ctx: int | None = None


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    name: str = "shared-prefix"
    requests: int | None = None  # how many (default: DEFAULT_REQUESTS, or the whole trace)
    duration: float | None = None  # or: arrivals until this virtual time
    rate: float | None = None  # requests per second
    load: float | None = None  # or: a fraction of the cluster's estimated capacity
    cv: float = 1.0  # coefficient of variation of inter-arrival gaps: 1 Poisson, > 1 bursty
    seed: int = 0
    models: tuple[tuple[str, int], ...] = ()  # empty: the workload's own
    zipf: float = 0.0  # shared-prefix: Zipf exponent of group popularity (0: uniform)
    trace: str | None = None
    trace_format: str = "mooncake"
    sessions: int | None = None  # multi-turn: chats in progress at once (default from rate)

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ConfigError(f"unknown workload {self.name!r}; valid workloads: "
                              + ", ".join(WORKLOADS))
        if self.trace_format not in TRACE_FORMATS:
            raise ConfigError(f"unknown trace format {self.trace_format!r}; valid: "
                              + ", ".join(TRACE_FORMATS))
        if self.name == "trace" and not self.trace:
            raise ConfigError("the trace workload needs --trace FILE")
        if self.cv <= 0 or (self.rate is not None and self.rate <= 0) \
                or (self.load is not None and self.load <= 0):
            raise ConfigError("rate, load and burstiness (cv) must be > 0")


# -- prefix block ids ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prompt:
    """A generated prompt so far: its length and the ids of its full blocks."""

    tokens: int = 0
    blocks: tuple[int, ...] = ()


EMPTY = Prompt()


class BlockIds:
    """Fresh chained ids for generated prompts.

    `extend` appends *new* content (a question, an answer) to a prompt: every block that
    holds any of it gets a fresh id, blocks before it keep theirs. Prompts that start from the
    same `Prompt` object therefore share exactly the blocks of that common part.
    """

    def __init__(self, block_tokens: int = BLOCK_TOKENS) -> None:
        self.block_tokens = block_tokens
        self._next = 1

    def extend(self, prompt: Prompt, tokens: int) -> Prompt:
        total = prompt.tokens + tokens
        full = total // self.block_tokens
        new = full - len(prompt.blocks)
        if new <= 0:
            return Prompt(total, prompt.blocks)
        first = self._next
        self._next += new
        return Prompt(total, prompt.blocks + tuple(range(first, first + new)))


# -- request shapes ------------------------------------------------------------------------


Shapes = Iterator[SimRequest]


def _shape(model: str, prompt: Prompt, output: int, session: int = -1,
           answer: Prompt | None = None) -> SimRequest:
    return SimRequest(0.0, model, max(prompt.tokens, 1), max(output, 1), prompt.blocks, session,
                      answer.blocks if answer is not None else ())


def _batches(draw: Callable[[int], np.ndarray], size: int = 4096) -> Iterator[int]:
    """Random draws one at a time, made in vectorised batches."""
    while True:
        yield from draw(size).tolist()


def shared_prefix(models: list[str], rng: np.random.Generator, ids: BlockIds, *,
                  zipf: float = 0.0, groups: int = 64, per_group: int = 16,
                  system_tokens: int = 2048, question_tokens: int = 128,
                  output_tokens: int = 256) -> Shapes:
    """SGLang's generated-shared-prefix: groups of prompts sharing a long system prompt.

    Uniform popularity sends each group `per_group` prompts per round of groups x per_group
    requests in a shuffled order (SGLang's 1,024 prompts, then fresh rounds); `zipf` > 0 draws
    the group of every request from a Zipf law instead. Every question is new.
    """
    system = [ids.extend(EMPTY, system_tokens) for _ in range(groups)]
    model_of = rng.integers(0, len(models), groups).tolist()
    if zipf > 0:
        order: Iterator[int] = _batches(lambda n: rng.choice(groups, n, p=zipf_weights(groups, zipf)))
    else:
        order = _rounds(rng, np.repeat(np.arange(groups), per_group))
    for g in order:
        prompt = ids.extend(system[g], question_tokens)
        yield _shape(models[model_of[g]], prompt, output_tokens, g)


def _rounds(rng: np.random.Generator, pool: np.ndarray) -> Iterator[int]:
    while True:
        yield from rng.permutation(pool).tolist()


@dataclass(slots=True)
class _Chat:
    id: int
    model: str
    history: Prompt  # every turn so far, answers included
    turns_left: int


def multi_turn(models: list[str], rng: np.random.Generator, ids: BlockIds, *, sessions: int = 64,
               turns: tuple[int, int] = (3, 8), question: tuple[int, int] = (32, 160),
               answer: tuple[int, int] = (64, 320),
               arrivals: Iterable[float] | None = None) -> Shapes:
    """Chats: each turn's prompt is the previous prompt, its answer and a new question.

    Each arrival is the next turn of a chat picked at random among those whose user is ready,
    so chats interleave; a finished chat is replaced by a new one. With `arrivals` (the
    arrival times the shapes will get), a user is ready again only after reading the answer
    (`READ_S` plus `READ_TOKENS_PER_S`), as in a real chat, whose next prompt contains that
    answer; when nobody is ready a new chat starts. Without them (a sample for sizing), any of
    `sessions` chats may come next. The defaults keep a whole chat (at most 8 x 480 tokens)
    within Ollama's 4,096-token context.
    """
    draws = _batches(lambda n: rng.integers(0, 1 << 30, n))
    started = itertools.count()

    def new_chat() -> _Chat:
        return _Chat(next(started), models[next(draws) % len(models)], EMPTY,
                     _between(turns, next(draws)))

    ready = [new_chat() for _ in range(max(1, sessions))]
    reading: list[tuple[float, int, _Chat]] = []  # (ready again at, chat id, chat)
    for at in arrivals if arrivals is not None else itertools.repeat(0.0):
        while reading and reading[0][0] <= at:
            ready.append(heapq.heappop(reading)[2])
        if not ready:
            ready.append(new_chat())
        k = next(draws) % len(ready)
        chat = ready[k]
        prompt = ids.extend(chat.history, _between(question, next(draws)))
        output = _between(answer, next(draws))
        chat.history = ids.extend(prompt, output)
        yield _shape(chat.model, prompt, output, chat.id, chat.history)
        chat.turns_left -= 1
        if chat.turns_left <= 0:
            ready[k] = new_chat()
        elif arrivals is not None:
            ready[k] = ready[-1]
            ready.pop()
            heapq.heappush(reading, (at + READ_S + output / READ_TOKENS_PER_S, chat.id, chat))


def _between(bounds: tuple[int, int], draw: int) -> int:
    lo, hi = bounds
    return lo + draw % (hi - lo + 1)


def unshared(models: list[str], rng: np.random.Generator, ids: BlockIds, *,
             weights: np.ndarray | None = None, prompt: tuple[int, int] = (128, 2048),
             output: tuple[int, int] = (64, 512)) -> Shapes:
    """Prompts that share nothing; the model is drawn by `weights` (default uniform)."""
    picks = _batches(lambda n: rng.choice(len(models), n, p=weights))
    prompts = _batches(lambda n: rng.integers(prompt[0], prompt[1] + 1, n))
    outputs = _batches(lambda n: rng.integers(output[0], output[1] + 1, n))
    while True:
        yield _shape(models[next(picks)], ids.extend(EMPTY, next(prompts)), next(outputs))


def shifting(models: list[str], rng: np.random.Generator, ids: BlockIds,
             arrivals: Iterable[float] | None, *, period_s: float = SHIFT_PERIOD_S,
             step: int = SHIFT_STEP) -> Shapes:
    """`zipf-models` whose popularity moves: every `period_s` the ranking rotates by `step`
    (the `step` most popular models fall to the bottom, the next ones rise), blended
    linearly over the period, so demand for a model rises or falls steadily as in a real
    fleet whose users move to new models.
    """
    n = len(models)
    base = zipf_weights(n, 1.0)
    prompts = _batches(lambda k: rng.integers(128, 1025, k))
    outputs = _batches(lambda k: rng.integers(64, 257, k))
    draws = _batches(rng.random)
    for at in arrivals if arrivals is not None else itertools.repeat(0.0):
        phase, blend = divmod(at / period_s, 1.0)
        now = np.roll(base, int(phase) * step)
        weights = (1 - blend) * now + blend * np.roll(now, step)
        pick = min(int(np.searchsorted(np.cumsum(weights), next(draws) * weights.sum())), n - 1)
        yield _shape(models[pick], ids.extend(EMPTY, next(prompts)), next(outputs))


def zipf_weights(n: int, alpha: float) -> np.ndarray:
    """Popularity of ranks 1..n under Zipf's law with exponent `alpha`."""
    w = 1.0 / np.arange(1, n + 1) ** alpha
    return w / w.sum()


def zipf_models(rng: np.random.Generator, count: int = 50) -> dict[str, int]:
    """`count` models of realistic sizes (fine-tunes of library models), most popular first."""
    sizes = rng.permutation(np.arange(count) % len(CATALOGUE)).tolist()
    out = {}
    for rank, k in enumerate(sizes):
        base, size = CATALOGUE[k]
        family, _, tag = base.partition(":")
        out[f"{family}-ft{rank:02d}:{tag}"] = size
    return out


# -- traces --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceRow:
    at: float  # seconds from the trace's start
    prompt_tokens: int
    output_tokens: int
    blocks: tuple[int, ...] | None  # None: the trace says nothing about prefixes


class _MooncakeRow(msgspec.Struct):
    timestamp: float
    input_length: int
    output_length: int
    hash_ids: list[int] = []


def read_trace(path: str | Path, fmt: str = "mooncake") -> list[TraceRow]:
    """Rows of a Mooncake JSONL or CSV trace, in arrival order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trace file {path} does not exist (the Mooncake conversation trace "
                          "lives in ../shared/traces/; it is not shipped with OllamaMax)")
    rows = read_mooncake(path) if fmt == "mooncake" else read_csv(path)
    if not rows:
        raise ConfigError(f"trace file {path} holds no requests")
    rows.sort(key=lambda r: r.at)
    return rows


def read_mooncake(path: Path) -> list[TraceRow]:
    decoder = msgspec.json.Decoder(_MooncakeRow)
    rows = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a Mooncake trace line ({exc})") from None
            rows.append(TraceRow(r.timestamp / 1000.0, r.input_length, r.output_length,
                                 tuple(r.hash_ids)))
    return rows


def read_csv(path: Path) -> list[TraceRow]:
    rows = []
    with path.open(newline="") as f:
        for number, r in enumerate(csv.DictReader(f), 2):
            try:
                rows.append(TraceRow(float(r["arrived_at"]), int(float(r["num_prefill_tokens"])),
                                     int(float(r["num_decode_tokens"])), None))
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{path}:{number}: a CSV trace needs numeric columns arrived_at, "
                                  "num_prefill_tokens and num_decode_tokens") from None
    return rows


def trace_shapes(rows: list[TraceRow], models: list[str], ids: BlockIds) -> list[SimRequest]:
    """Requests of a trace; rows without block ids get fresh ones (nothing shared)."""
    out = []
    for row in rows:
        blocks = row.blocks
        if blocks is None:
            blocks = ids.extend(EMPTY, row.prompt_tokens).blocks
        # with several models, a conversation (its first block) stays with one of them
        model = models[blocks[0] % len(models)] if blocks and len(models) > 1 else models[0]
        out.append(SimRequest(row.at, model, max(row.prompt_tokens, 1),
                              max(row.output_tokens, 1), blocks))
    return out


# -- arrivals ------------------------------------------------------------------------------


def arrival_times(rate: float, rng: np.random.Generator, *, cv: float = 1.0,
                  count: int | None = None, duration: float | None = None) -> np.ndarray:
    """Arrival times of a renewal process at `rate`: Poisson (cv 1) or Gamma gaps.

    Gamma gaps with shape 1/cv^2 keep the mean 1/rate and set the coefficient of variation to
    `cv`: above 1 the arrivals come in bursts. `count` arrivals, or all before `duration`.
    """
    shape = 1.0 / (cv * cv)

    def gaps(n: int) -> np.ndarray:
        if cv == 1.0:
            return rng.exponential(1.0 / rate, n)
        return rng.gamma(shape, 1.0 / (rate * shape), n)

    if count is not None:
        return np.cumsum(gaps(count))
    assert duration is not None
    chunks, t = [], 0.0
    while t <= duration:
        chunk = t + np.cumsum(gaps(max(64, int(rate * duration * 0.25) + 1)))
        chunks.append(chunk)
        t = float(chunk[-1])
    times = np.concatenate(chunks)
    return times[times <= duration]


# -- building a workload -------------------------------------------------------------------


Capacity = Callable[[float, float], float]  # (mean prompt, mean output tokens) -> requests/s


def build(options: WorkloadOptions, capacity: Capacity | None = None) -> Workload:
    """The workload `options` describe; `capacity` turns a `load` into a rate."""
    if options.name == "trace":
        return _build_trace(options, capacity)
    models = dict(options.models) if options.models else _default_models(options)
    shapes = _shape_source(options, list(models))
    sample = list(islice(shapes(64), 2048))
    rate = _rate(options, sample, capacity)
    times = arrival_times(rate, np.random.default_rng([options.seed, 2]), cv=options.cv,
                          count=_count(options), duration=options.duration)
    sessions = options.sessions or max(4, math.ceil(rate * THINK_S))
    requests = list(islice(shapes(sessions, times.tolist()), len(times)))
    for request, at in zip(requests, times.tolist(), strict=True):
        request.arrival = at
    zipf = options.name in ("zipf-models", "shifting-models")
    return Workload(options.name, requests, models, BLOCK_TOKENS, rate,
                    max_loaded=3 if zipf else None, keep_alive=300.0 if zipf else None)


def _default_models(options: WorkloadOptions) -> dict[str, int]:
    if options.name == "zipf-models":
        return zipf_models(np.random.default_rng([options.seed, 3]))
    if options.name == "shifting-models":  # fewer than the cluster's places: only shifts cost
        return zipf_models(np.random.default_rng([options.seed, 3]), SHIFTING_MODELS)
    return dict([DEFAULT_MODEL])


def _shape_source(options: WorkloadOptions, models: list[str]) -> Callable[[int], Shapes]:
    """A function of the number of chats in progress (multi-turn) and, for the workload
    itself, the arrival times, giving fresh shapes."""

    def shapes(sessions: int, arrivals: list[float] | None = None) -> Shapes:
        rng = np.random.default_rng([options.seed, 1])
        ids = BlockIds(BLOCK_TOKENS)
        if options.name == "shared-prefix":
            return shared_prefix(models, rng, ids, zipf=options.zipf)
        if options.name == "multi-turn":
            return multi_turn(models, rng, ids, sessions=sessions, arrivals=arrivals)
        if options.name == "zipf-models":
            return unshared(models, rng, ids, weights=zipf_weights(len(models), 1.0),
                            prompt=(128, 1024), output=(64, 256))
        if options.name == "shifting-models":
            return shifting(models, rng, ids, arrivals)
        return unshared(models, rng, ids)

    return shapes


def _count(options: WorkloadOptions) -> int | None:
    if options.requests is not None:
        return options.requests
    return None if options.duration is not None else DEFAULT_REQUESTS


def _rate(options: WorkloadOptions, sample: list[SimRequest], capacity: Capacity | None) -> float:
    if options.rate is not None:
        return options.rate
    if capacity is None:
        raise ConfigError("a load needs the cluster's capacity; give a rate instead")
    prompt = float(np.mean([r.prompt_tokens for r in sample]))
    output = float(np.mean([r.output_tokens for r in sample]))
    return (options.load or DEFAULT_LOAD) * capacity(prompt, output)


def _build_trace(options: WorkloadOptions, capacity: Capacity | None) -> Workload:
    assert options.trace is not None
    rows = read_trace(options.trace, options.trace_format)
    block = MOONCAKE_BLOCK_TOKENS if options.trace_format == "mooncake" else BLOCK_TOKENS
    models = dict(options.models) if options.models else dict([DEFAULT_MODEL])
    requests = trace_shapes(rows, list(models), BlockIds(block))
    start = requests[0].arrival
    span = requests[-1].arrival - start
    observed = (len(requests) - 1) / span if span > 0 else 0.0
    rate = observed
    if options.rate is not None or options.load is not None:
        rate = _rate(options, requests[:4096], capacity)
    scale = observed / rate if rate > 0 and observed > 0 else 1.0
    for r in requests:  # replay at the asked rate: stretch or compress the trace's own gaps
        r.arrival = (r.arrival - start) * scale
    if options.duration is not None:
        requests = [r for r in requests if r.arrival <= options.duration]
    if options.requests is not None:
        requests = requests[: options.requests]
    # Mooncake prompts average 12k tokens: nodes that serve them run a long context
    return Workload("trace", requests, models, block, rate or 1.0, num_ctx=131072)


def parse_models(text: str) -> tuple[tuple[str, int], ...]:
    """``--models``: a count of catalogue models, or ``name:tag=SIZE,...`` (bytes, or 4.9G)."""
    text = text.strip()
    if not text:
        return ()
    if text.isdigit():
        count = int(text)
        if count < 1:
            raise ConfigError("--models must name at least one model")
        return tuple(zipf_models(np.random.default_rng(0), count).items())
    out = []
    for entry in text.split(","):
        name, sep, size = entry.strip().rpartition("=")
        if not sep or not name:
            raise ConfigError(f"--models entry {entry!r} must look like NAME:TAG=SIZE "
                              "(bytes, or with a G/M suffix)")
        out.append((name, _size(size, entry)))
    return tuple(out)


def _size(text: str, entry: str) -> int:
    units = {"G": GB, "M": 10**6, "K": 10**3}
    factor = units.get(text[-1:].upper(), 1)
    try:
        value = float(text[:-1] if factor > 1 else text) * factor
    except ValueError:
        raise ConfigError(f"--models entry {entry!r}: {text!r} is not a size") from None
    if value <= 0:
        raise ConfigError(f"--models entry {entry!r}: the size must be > 0")
    return int(value)
