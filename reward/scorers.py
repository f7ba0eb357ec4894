"""Scorers turn a RolloutBatch into one reward per row.

A scorer is anything with `__call__(batch: RolloutBatch) -> torch.Tensor [B]` (the `Scorer`
protocol). Two kinds ship here:

- row scorers (`RowScorer` subclasses: `MathVerifierScorer`, `FormatScorer`) score one
  (response_text, answer) pair at a time; they are guarded PER ROW, so one bad response only
  costs its own row;
- batch scorers (`RewardModelScorer`) score the whole batch at once; a failure costs the rows
  of that call.

`CombinedScorer` runs named, weighted components, each guarded: an exception, a non-finite
or wrongly shaped output, or a per-call timeout gives the affected rows a fallback reward,
counts them, and reports them in the info dict (`errors/<name>`, `timeouts/<name>`); it
never raises because a scorer failed. Timeouts run the call in a daemon worker thread and
stop waiting after `timeout_s` (no signals, so it works in any thread, e.g. inside a Ray
actor). A Python thread cannot be killed: a timed-out row scorer is told to stop after its
current row, a timed-out batch scorer runs on in the background and its result is dropped.
Work that holds the GIL inside one C call (a pathological regex) cannot be interrupted this
way; the built-in verifiers are linear-time on length-capped input so that cannot happen.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch

from contract.batch import RolloutBatch

from .verifier import AnswerMode, format_reward, math_reward

__all__ = [
    "Scorer", "RowScorer", "MathVerifierScorer", "FormatScorer", "RewardModelScorer",
    "Component", "ComponentResult", "CombinedScorer", "run_guarded",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Scorer(Protocol):
    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        """[B] float rewards, one per row of `batch`."""
        ...


_FAILED = object()  # a row whose scoring raised or returned a non-finite value


class RowScorer:
    """Base class for rule scorers: implement `score_one(response, answer) -> float`.

    `score_rows` fills `out[i]` with a float, or with a failure marker for a row that raised
    (or gave NaN/inf), and stops early when `cancel` is set (timeout). Called directly,
    `__call__` gives failed rows `self.fallback`.
    """

    fallback: float = 0.0

    def score_one(self, response: str, answer: str) -> float:
        raise NotImplementedError

    def score_rows(self, batch: RolloutBatch, out: list[Any], cancel: threading.Event | None = None) -> None:
        for i, (resp, ans) in enumerate(zip(batch.response_text, batch.answers)):
            if cancel is not None and cancel.is_set():
                return
            try:
                v = float(self.score_one(resp, ans))
                out[i] = v if math.isfinite(v) else _FAILED
            except Exception as e:  # noqa: BLE001 - one bad row must not cost the batch
                log.debug("%s failed on row %d: %r", type(self).__name__, i, e)
                out[i] = _FAILED

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        out: list[Any] = [None] * len(batch)
        self.score_rows(batch, out)
        return torch.tensor([v if isinstance(v, float) else self.fallback for v in out], dtype=torch.float32)


class MathVerifierScorer(RowScorer):
    """1.0 if the response's extracted answer equals the row's ground truth (exact rational)."""

    def __init__(self, mode: str | AnswerMode = "auto", rel_tol: float = 0.0):
        self.mode = AnswerMode(mode)
        self.rel_tol = rel_tol

    def score_one(self, response: str, answer: str) -> float:
        return math_reward(response, answer, self.mode, self.rel_tol)

    def __repr__(self) -> str:
        return f"MathVerifierScorer(mode={self.mode.value!r})"


class FormatScorer(RowScorer):
    """`verifier.format_reward`: 1.0 clean final `#### <number>` line, 0.5 partial, 0.0 none."""

    def score_one(self, response: str, answer: str) -> float:
        return format_reward(response)

    def __repr__(self) -> str:
        return "FormatScorer()"


class RewardModelScorer:
    """Scores with a trained reward model, batched: `model(input_ids [b,T], attention_mask [b,T])
    -> values [b,T]`, and the reward of a row is the value at its last real token.

    Rows go through the model in chunks of `batch_size` (one forward for B <= batch_size);
    each chunk is cut after its longest row's last real token (the model is causal, so
    trailing padding cannot change the value read). Positions with mask 0 get
    `tokenizer_pad_id`. A row with no real token scores NaN, which the combined scorer turns
    into the fallback reward and counts as an error.
    """

    def __init__(self, model: torch.nn.Module, tokenizer_pad_id: int = 0, batch_size: int = 64,
                 device: str | torch.device | None = None):
        if batch_size <= 0:
            raise ValueError(f"RewardModelScorer.batch_size={batch_size}: must be positive")
        self.model = model.eval()
        self.pad_id = int(tokenizer_pad_id)
        self.batch_size = int(batch_size)
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else "cpu"
        self.device = torch.device(device)

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return self.score_tokens(batch.sequences, batch.attention_mask)

    @staticmethod
    def _values(out: Any) -> torch.Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = out["values"]
        elif not isinstance(out, torch.Tensor) and hasattr(out, "values"):
            out = out.values
        if out.dim() == 3 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        return out

    @torch.inference_mode()
    def score_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B] float32 (CPU): the model's value at the last real token of each row."""
        B, T = input_ids.shape
        real = attention_mask.to(torch.bool)
        ids = input_ids.masked_fill(~real, self.pad_id)
        mask = real.to(torch.long)
        pos = torch.arange(T).expand(B, T)
        last = torch.where(real, pos, torch.full_like(pos, -1)).amax(dim=1) if T else torch.full((B,), -1)
        out = torch.full((B,), float("nan"), dtype=torch.float32)
        for s in range(0, B, self.batch_size):
            e = min(B, s + self.batch_size)
            lc = last[s:e]
            if bool((lc < 0).all()):
                continue
            tc = int(lc.max()) + 1
            vals = self._values(self.model(ids[s:e, :tc].to(self.device), attention_mask=mask[s:e, :tc].to(self.device)))
            if tuple(vals.shape) != (e - s, tc):
                raise ValueError(f"reward model returned shape {tuple(vals.shape)}, expected {(e - s, tc)}")
            got = vals.float().gather(1, lc.clamp(min=0).unsqueeze(1).to(vals.device)).squeeze(1).cpu()
            out[s:e] = torch.where(lc >= 0, got, torch.full_like(got, float("nan")))
        return out

    def __repr__(self) -> str:
        return f"RewardModelScorer({type(self.model).__name__}, batch_size={self.batch_size})"


# ----------------------------------------------------------------------------------------
# guarding and combining
# ----------------------------------------------------------------------------------------
@dataclass
class Component:
    name: str
    scorer: Scorer
    weight: float = 1.0
    timeout_s: float | None = None   # None: the CombinedScorer's default
    fallback: float | None = None    # None: the CombinedScorer's default


@dataclass
class ComponentResult:
    values: torch.Tensor      # [B] float32, fallback already substituted
    errors: int               # rows that got the fallback (exception, timeout, NaN, bad shape)
    timed_out: bool
    seconds: float
    message: str | None = None


def _run_in_thread(fn: Any, timeout_s: float | None, name: str) -> tuple[bool, BaseException | None]:
    """Run fn() with a deadline. Returns (finished, exception)."""
    box: dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box["exc"] = e

    if timeout_s is None or timeout_s <= 0:
        target()
        return True, box.get("exc")
    th = threading.Thread(target=target, name=f"reward-{name}", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        return False, None
    return True, box.get("exc")


def run_guarded(scorer: Scorer, batch: RolloutBatch, timeout_s: float | None, fallback: float,
                name: str = "scorer") -> ComponentResult:
    """Call `scorer` on `batch` so that nothing it does can crash the caller (see module doc)."""
    B = len(batch)
    t0 = time.perf_counter()
    if isinstance(scorer, RowScorer):
        rows: list[Any] = [None] * B
        cancel = threading.Event()
        finished, exc = _run_in_thread(lambda: scorer.score_rows(batch, rows, cancel), timeout_s, name)
        if not finished:
            cancel.set()
        snap = list(rows)  # a timed-out thread may still write; we keep what was done by now
        vals = [v if isinstance(v, float) else fallback for v in snap]
        errors = sum(not isinstance(v, float) for v in snap)
        msg = None if finished and exc is None else (
            f"timed out after {timeout_s}s ({B - errors}/{B} rows done)" if not finished else repr(exc))
        return ComponentResult(torch.tensor(vals, dtype=torch.float32), errors, not finished,
                               time.perf_counter() - t0, msg)

    box: dict[str, Any] = {}
    finished, exc = _run_in_thread(lambda: box.__setitem__("out", scorer(batch)), timeout_s, name)
    fb = torch.full((B,), float(fallback), dtype=torch.float32)
    if not finished:
        return ComponentResult(fb, B, True, time.perf_counter() - t0, f"timed out after {timeout_s}s")
    if exc is not None:
        return ComponentResult(fb, B, False, time.perf_counter() - t0, repr(exc))
    try:
        v = torch.as_tensor(box["out"]).detach().to("cpu", torch.float32).reshape(-1)
    except Exception as e:  # noqa: BLE001
        return ComponentResult(fb, B, False, time.perf_counter() - t0, f"bad output: {e!r}")
    if v.numel() != B:
        return ComponentResult(fb, B, False, time.perf_counter() - t0,
                               f"returned {v.numel()} rewards for {B} rows")
    bad = ~torch.isfinite(v)
    n_bad = int(bad.sum())
    v = torch.where(bad, fb, v)
    return ComponentResult(v, n_bad, False, time.perf_counter() - t0,
                           f"{n_bad} non-finite rewards" if n_bad else None)


class CombinedScorer:
    """Weighted sum of guarded components.

    components: `Component`s or `(name, scorer, weight)` tuples; names must be unique.
    `score(batch) -> (rewards [B] float32, info, correct)`: `correct` [B] is the raw score of component
    `accuracy_key` (None without one); `__call__` returns only the rewards.
    info (plain floats/ints): `score/<name>` mean raw (unweighted) score, `errors/<name>` rows
    that got the fallback this call, `timeouts/<name>` (0/1), `seconds/<name>`, `errors/total`,
    `reward/mean|std|min|max`, and `accuracy` = mean of component `accuracy_key` if present.
    Cumulative counts over the scorer's life: `error_counts`, `timeout_counts`, `calls`.
    """

    def __init__(self, components: Iterable[Component | tuple], timeout_s: float | None = 5.0,
                 fallback_reward: float = 0.0, accuracy_key: str = "math"):
        self.components: list[Component] = _as_components(list(components))
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"CombinedScorer: duplicate component names {names}")
        for c in self.components:
            if not callable(c.scorer):
                raise TypeError(f"CombinedScorer: component {c.name!r} scorer is not callable")
            if not math.isfinite(float(c.weight)):
                raise ValueError(f"CombinedScorer: component {c.name!r} weight={c.weight!r} is not finite")
        self.timeout_s = timeout_s
        self.fallback_reward = float(fallback_reward)
        self.accuracy_key = accuracy_key
        self.error_counts: dict[str, int] = {n: 0 for n in names}
        self.timeout_counts: dict[str, int] = {n: 0 for n in names}
        self.calls = 0

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def __call__(self, batch: RolloutBatch) -> torch.Tensor:
        return self.score(batch)[0]

    def score(self, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor | None]:
        B = len(batch)
        correct = None
        total = torch.zeros(B, dtype=torch.float64)
        info: dict[str, Any] = {}
        n_err = 0
        for c in self.components:
            timeout = self.timeout_s if c.timeout_s is None else c.timeout_s
            fallback = self.fallback_reward if c.fallback is None else float(c.fallback)
            r = run_guarded(c.scorer, batch, timeout, fallback, c.name)
            total += float(c.weight) * r.values.double()
            info[f"score/{c.name}"] = float(r.values.mean()) if B else 0.0
            info[f"errors/{c.name}"] = r.errors
            info[f"timeouts/{c.name}"] = int(r.timed_out)
            info[f"seconds/{c.name}"] = r.seconds
            if c.name == self.accuracy_key:
                info["accuracy"] = info[f"score/{c.name}"]
                correct = r.values.float()
            self.error_counts[c.name] += r.errors
            self.timeout_counts[c.name] += int(r.timed_out)
            n_err += r.errors
            if r.message:
                log.warning("reward component %r: %s (fallback %.3g for %d/%d rows)",
                            c.name, r.message, fallback, r.errors, B)
        rewards = total.float()
        self.calls += 1
        info["errors/total"] = n_err
        if B:
            info.update({"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(unbiased=False)),
                         "reward/min": float(rewards.min()), "reward/max": float(rewards.max())})
        return rewards, info, correct

    def __repr__(self) -> str:
        parts = ", ".join(f"{c.name}={c.weight:g}*{c.scorer!r}" for c in self.components)
        return f"CombinedScorer({parts}, timeout_s={self.timeout_s})"


def _as_components(items: Sequence[Component | tuple]) -> list[Component]:
    return [c if isinstance(c, Component) else Component(*c) for c in items]
