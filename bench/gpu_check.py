"""GPU check: what one NVIDIA GPU does with this project, in one run of <= 8 minutes, as ONE JSON object.

    PYTHONPATH=. python bench/gpu_check.py                          # --device cuda --preset full
    PYTHONPATH=. python bench/gpu_check.py --device cpu --preset tiny   # the same code at toy sizes (the suite runs it)

Sections (each guarded: a failure is reported as {"error": ...} where it happened and the rest still run;
each has a time budget and the run a total one, units past them are listed under "skipped"):
- matmul: the device's matmul peak (bf16 on CUDA, fp32 on CPU: the dtype the model trains in), n^3
  products after warm-ups, timed with CUDA events; the MFU denominator.
- train: SFT steps through `learner.Learner` + `LMStage` (the recipes' path; bf16 autocast over fp32
  weights on CUDA) for minimind2-small and minimind2: tokens/s, MFU, peak CUDA memory.
- sample: the native engine (`rollout.engines.NativeEngine`: bf16 on CUDA, as rollout workers hold it)
  vs `transformers` `generate` on the same weights (`export_hf` folder, AutoModelForCausalLM, bf16) at
  batch 1, 64 and 256 rows, same prompts, sampling and lengths; then the engine-vs-learner logprob gap:
  the engine's returned logprobs vs the learner's recomputed ones (`response_logprobs` under the
  learner's autocast, as the RL stages score old logprobs) on the same sampled tokens.
- rl: when `import ray` works, `experiments/grpo_math.py --device <device>` for a few steps from a tiny
  bootstrap, in a subprocess: the step breakdown from its metrics.jsonl and summary.json, the one-GPU
  fractional placement (`recipes.ray_session.placement`) and the processes seen on the GPU. Without Ray
  the JSON says "ray": "not installed". Nothing the other sections import imports Ray.

Sizes, budgets and formulas are in the JSON ("sizes", "budget_s", "formulas"). Progress goes to stderr.

Ray on the GPU machine (it has CUDA torch, transformers, numpy, ... but no Ray; one device call carries
at most 64 MiB of files and Ray 2.60's cp312 wheel is ~79 MB): `bench/gpu_ray_wheels.sh prepare` here
packs what the recipes import of Ray (~30 MB with xz) and the four wheels Ray needs that the machine
lacks into the git-ignored bench/.ray_wheels/; then ONE device call, carrying ["bench/.ray_wheels"]:

    bash bench/gpu_ray_wheels.sh install && PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_check.py \
        > $OUT/gpu_check.json; PYTHONPATH=/tmp/site:$PWD python3 -m pytest -q tests/test_gpu.py

(PYTHONPATH absolute: the recipe's subprocess and Ray's workers run in other folders.) docs/gpu.md has
a run's JSON and what it found.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # do not let bench/*.py shadow top-level modules
sys.path.insert(0, str(ROOT))
# Before torch loads OpenMP: the wait policy every bench script uses (runtime/process.py)
from runtime import set_openmp_env  # noqa: E402

set_openmp_env(overlapping=False)

import torch  # noqa: E402

from bench.common import PeakRSS, emit, environment, interleaved, log  # noqa: E402

SECTIONS = ("matmul", "train", "sample", "rl")


@dataclass(frozen=True)
class Sizes:
    """Everything a preset decides; printed in the JSON as "sizes"."""
    matmul_n: int
    matmul_warmup: int
    matmul_trials: int              # the peak is the best trial's mean over `matmul_per_trial` products
    matmul_per_trial: int
    train_presets: tuple[str, ...]
    train_batch: int
    train_seq: int                  # rows of full length (no padding), labels -100 on the first quarter
    train_warmup: int
    train_steps: int
    sample_preset: str
    sample_cases: tuple[tuple[int, int], ...]   # (prompts, G): batch rows = prompts x G
    prompt_len: tuple[int, int]
    new_tokens: int
    sample_warmup: int
    sample_repeats: int
    gap_rows: int                   # the case whose sampled tokens the learner rescores
    rl_flags: tuple[str, ...]       # experiments/grpo_math.py flags besides --run-dir and --device
    budget_s: dict[str, float] = field(default_factory=dict)   # per section and "total"
    cpu_threads: int = 0            # torch threads with --device cpu (0: torch's default)


RL_COMMON = ("--eval-size=0", "--no-dashboard", "--no-progress", "--plot-every=0")

SIZES = {
    "full": Sizes(
        matmul_n=8192, matmul_warmup=10, matmul_trials=5, matmul_per_trial=20,
        train_presets=("minimind2-small", "minimind2"), train_batch=32, train_seq=1024, train_warmup=3,
        train_steps=10,
        sample_preset="minimind2-small", sample_cases=((1, 1), (8, 8), (32, 8)), prompt_len=(16, 64),
        new_tokens=128, sample_warmup=2, sample_repeats=7, gap_rows=64,
        rl_flags=RL_COMMON + ("--bootstrap.preset=minimind2-small", "--bootstrap.n-train=1000",
                              "--bootstrap.pretrain-steps=20", "--bootstrap.sft-steps=20", "--n-prompts=512",
                              "--driver.steps=5", "--driver.prompts-per-step=32", "--rollout.sampling.n=8",
                              "--rollout.sampling.max-new-tokens=40"),
        budget_s={"matmul": 30, "train": 120, "sample": 120, "rl": 180, "total": 480}),
    # toy sizes for CPU (the suite); budgets generous: they exist for the GPU run, not to fail a slow CI
    "tiny": Sizes(
        matmul_n=512, matmul_warmup=1, matmul_trials=3, matmul_per_trial=3,
        train_presets=("tiny", "tiny-qk"), train_batch=4, train_seq=64, train_warmup=1, train_steps=2,
        sample_preset="tiny", sample_cases=((1, 1), (2, 2), (4, 2)), prompt_len=(4, 8),
        new_tokens=8, sample_warmup=0, sample_repeats=1, gap_rows=8,
        rl_flags=RL_COMMON + ("--bootstrap.preset=tiny", "--bootstrap.n-train=100", "--bootstrap.pretrain-steps=1",
                              "--bootstrap.sft-steps=1", "--n-prompts=16", "--driver.steps=2",
                              "--driver.prompts-per-step=2", "--rollout.sampling.n=2",
                              "--rollout.sampling.max-new-tokens=8", "--threads=1"),
        budget_s={"matmul": 300, "train": 300, "sample": 300, "rl": 900, "total": 1800},
        cpu_threads=1),   # toy models: one thread is as fast, and far faster on a busy shared CPU
}

FORMULAS = {
    "matmul_tflops": "2 n^3 / seconds per product (best trial; each trial = the mean of matmul_per_trial products)",
    "flops_per_token": "6 N + 12 L H d T (PaLM convention, as bench/train.py: N = nn.Linear weights incl. the "
                       "tied lm_head, L layers, H query heads of width d, T = train_seq; attention without causal "
                       "halving)",
    "mfu": "tokens_per_s x flops_per_token / matmul peak of this run (train tokens = every input token)",
    "sample_tok_s": "rows x new_tokens / seconds of one generate call (median of the repeats)",
    "sample_ratio": "ours_tok_s / hf_tok_s (medians); ratios: per interleaved pair",
    "logprob_gap": "|learner logprob - engine logprob| over the sampled response tokens (mean, max; k3 KL)",
}


@dataclass
class Clock:
    """The run's deadline and the current section's."""
    deadline: float
    until: float = 0.0

    def section(self, budget: float) -> None:
        self.until = min(time.perf_counter() + budget, self.deadline)

    def left(self) -> float:
        return self.until - time.perf_counter()


def guarded(fn: Callable[..., dict], *args: Any) -> dict:
    """fn's result, or {"error": ...} (with a traceback tail) when it raises; device memory freed after."""
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):   # stdout holds only the JSON
            out = fn(*args)
    except Exception as e:  # report it in the JSON and carry on with the next unit
        out = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-2000:]}
        log(f"[gpu_check] {getattr(fn, '__name__', fn)} failed: {out['error']}")
    gc.collect()
    if torch.cuda.is_available():
        with contextlib.suppress(Exception):   # a CUDA error can outlive its unit: keep what was measured
            torch.cuda.empty_cache()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceTimer:
    """Seconds of the enclosed work: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "DeviceTimer":
        if self.device.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant digits (CPU toy rates are 1e-3 TFLOP/s, GPU ones 1e2)."""
    return float(f"{x:.{digits}g}")


def model_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# --------------------------------------------------------------------------- 1. matmul peak
def matmul_section(device: torch.device, s: Sizes, clock: Clock) -> dict:
    n, dtype = s.matmul_n, model_dtype(device)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    for _ in range(s.matmul_warmup):
        torch.mm(a, b, out=out)
    sync(device)
    per_product = []
    for _ in range(s.matmul_trials):
        if per_product and clock.left() <= 0:
            break
        with DeviceTimer(device) as t:
            for _ in range(s.matmul_per_trial):
                torch.mm(a, b, out=out)
        per_product.append(t.seconds / s.matmul_per_trial)
    rates = [2 * n ** 3 / sec / 1e12 for sec in per_product]
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "data": "randn",
            "timer": "cuda events" if device.type == "cuda" else "perf_counter",
            "peak_tflops": sig(max(rates)), "trial_tflops": [sig(r) for r in rates]}


# --------------------------------------------------------------------------- 2. training
def sft_batch(vocab: int, s: Sizes, gen: torch.Generator) -> dict:
    """Full-length rows of random ids; the first quarter of each row is the prompt (no loss), as the
    SFT collator masks everything outside assistant spans."""
    from minimind.model import IGNORE_INDEX

    ids = torch.randint(3, vocab, (s.train_batch, s.train_seq), generator=gen)
    labels = ids.clone()
    labels[:, : s.train_seq // 4] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def train_preset(name: str, device: torch.device, s: Sizes, peak_tflops: float | None) -> dict:
    from bench.train import flops_per_token, matmul_params
    from learner.config import OptimConfig
    from learner.learner import Learner
    from learner.stages import LMStage
    from minimind.config import preset
    from minimind.model import MiniMindForCausalLM

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    with PeakRSS() as mem:
        model = MiniMindForCausalLM(preset(name))
        fpt = flops_per_token(model, s.train_seq)
        learner = Learner(model, LMStage(), OptimConfig(lr=1e-4, warmup_steps=0), device=device)
        batches = [sft_batch(model.config.vocab_size, s, gen) for _ in range(2)]
        losses = [learner.train_step(batches[i % 2])["loss"] for i in range(s.train_warmup)]
        sync(device)
        t0 = time.perf_counter()
        losses += [learner.train_step(batches[i % 2])["loss"] for i in range(s.train_steps)]
        sync(device)
        seconds = time.perf_counter() - t0
    tok_s = s.train_steps * s.train_batch * s.train_seq / seconds
    row = {"preset": name, "params_m": round(model.num_parameters() / 1e6, 2),
           "matmul_params_m": round(matmul_params(model) / 1e6, 2), "batch": s.train_batch, "seq": s.train_seq,
           "precision": "bf16 autocast, fp32 weights + AdamW" if device.type == "cuda" else "fp32",
           "steps_timed": s.train_steps, "seconds_per_step": round(seconds / s.train_steps, 5),
           "tokens_per_s": round(tok_s, 1), "flops_per_token": fpt,
           "achieved_tflops": sig(tok_s * fpt / 1e12),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
    row["mfu"] = sig(tok_s * fpt / 1e12 / peak_tflops) if peak_tflops else None
    if device.type == "cuda":
        row.update(peak_memory_mb=round(mem.cuda_peak_mb, 1), memory="torch.cuda.max_memory_allocated",
                   reserved_mb=round(torch.cuda.max_memory_reserved(device) / 2**20, 1))
    else:
        row.update(peak_memory_mb=round(mem.peak_mb, 1), memory="process RSS (sampled)")
    log(f"[train] {name}: {row['tokens_per_s']} tok/s, MFU {row['mfu']}, peak {row['peak_memory_mb']} MB")
    return row


def train_section(device: torch.device, s: Sizes, clock: Clock, peak_tflops: float | None) -> dict:
    out: dict[str, Any] = {"results": [], "skipped": []}
    for name in s.train_presets:
        if clock.left() <= 0:
            out["skipped"].append(f"{name}: over the section's time budget")
            continue
        out["results"].append({"preset": name, **guarded(train_preset, name, device, s, peak_tflops)})
    if not peak_tflops:
        out["note"] = "no matmul peak measured in this run: mfu is null"
    return out


# --------------------------------------------------------------------------- 3. sampling
def sample_section(device: torch.device, s: Sizes, clock: Clock) -> dict:
    import transformers

    from bench.generate import Case, Preset, hf_inputs, make_prompts, pair_ratio, run_hf, run_ours
    from minimind.checkpoint import export_hf
    from minimind.config import preset
    from minimind.generate import SamplingParams
    from minimind.model import MiniMindForCausalLM
    from rollout.engines import NativeEngine

    torch.manual_seed(0)
    cfg = preset(s.sample_preset)
    ours = MiniMindForCausalLM(cfg).eval()   # fp32: the learner's copy; the engine and HF get its weights
    engine = NativeEngine(cfg, str(device))
    engine.load_weights(ours.state_dict())
    dtype = model_dtype(device)
    with tempfile.TemporaryDirectory(prefix="gpu_check_hf_") as tmp:
        folder = export_hf(ours, Path(tmp) / "hf", dtype=dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    hf = hf.to(device=device, dtype=dtype).eval()   # explicit: transformers 4.x and 5.x load dtypes differently
    hf.generation_config.eos_token_id = None   # exactly new_tokens per row on both sides
    gen = torch.Generator().manual_seed(1)
    cases = []
    for n_prompts, G in s.sample_cases:
        prompts = make_prompts(n_prompts, cfg.vocab_size, *s.prompt_len, gen)
        sp = SamplingParams(max_new_tokens=s.new_tokens, temperature=1.0, top_p=1.0, top_k=0, n=G, stop_token_ids=())
        ids, mask = hf_inputs(prompts, cfg.pad_token_id)
        cases.append(Case(prompts, G, sp, ids.to(device), mask.to(device)))
    p = Preset(s.sample_preset, cfg, engine.model, hf, cases)

    def timed(c: Case) -> dict:
        tokens = float(c.rows * c.sp.max_new_tokens)
        r = interleaved({"ours": lambda: run_ours(p, c), "hf": lambda: run_hf(p, c)}, repeats=s.sample_repeats,
                        warmup=s.sample_warmup, work={"ours": tokens, "hf": tokens})
        # the ratio of the two medians, so it agrees with the two rates beside it (a median of per-pair ratios
        # need not, with a few noisy pairs); the per-pair ratios stay in "ratios"
        ratio, ratios = round(r["ours"]["rate"] / r["hf"]["rate"], 3), pair_ratio(r, "ours", "hf")[1]
        row = {"batch": c.rows, "prompts": len(c.prompts), "G": c.G, "new_tokens": c.sp.max_new_tokens,
               "prompt_len": [min(map(len, c.prompts)), max(map(len, c.prompts))],
               "ours_tok_s": r["ours"]["rate"], "hf_tok_s": r["hf"]["rate"], "ratio": ratio, "ratios": ratios,
               "ours_s": r["ours"]["seconds"], "hf_s": r["hf"]["seconds"]}
        log(f"[sample] batch {c.rows}: ours {row['ours_tok_s']} tok/s, transformers {row['hf_tok_s']}, ratio {ratio}")
        return row

    out: dict[str, Any] = {"preset": s.sample_preset, "params_m": round(ours.num_parameters() / 1e6, 2),
                           "dtype": str(dtype).removeprefix("torch."), "engine": "rollout.engines.NativeEngine",
                           "hf": f"transformers {transformers.__version__} {type(hf).__name__}",
                           "sampling": "temperature 1, top_k 0, top_p 1, no stop token (exactly new_tokens per row)",
                           "batch_definition": "rows decoded together = prompts x G", "results": [], "skipped": []}
    for c in cases:
        if clock.left() <= 0:
            out["skipped"].append(f"batch {c.rows}: over the section's time budget")
            continue
        out["results"].append({"batch": c.rows, **guarded(timed, c)})
    gap_case = next(c for c in cases if c.rows == s.gap_rows)
    out["logprob_gap"] = guarded(logprob_gap, ours, engine, gap_case, device)
    return out


def logprob_gap(model: torch.nn.Module, engine: Any, c: Any, device: torch.device) -> dict:
    """The engine's logprobs of its own samples vs what the learner recomputes for the same tokens: the
    learner holds `model` (fp32 weights; bf16 autocast on CUDA) and scores as the RL stages score old
    logprobs (eval mode, no grad, its autocast, `response_logprobs` at the sampling temperature)."""
    from learner.config import OptimConfig
    from learner.learner import Learner
    from learner.losses import mismatch_stats
    from learner.stages import LMStage, response_logprobs

    out = engine.generate(c.prompts, c.sp, pad_id=model.config.pad_token_id)
    learner = Learner(model, LMStage(), OptimConfig(), device=device)
    seq = torch.cat([out.prompt_ids, out.response_ids], 1).to(device)
    attn = torch.cat([out.prompt_mask, out.response_mask.long()], 1).to(device)
    R = out.response_ids.shape[1]
    learner.model.eval()
    with torch.no_grad(), learner.autocast():
        lp = response_logprobs(learner.model, seq, attn, R, c.sp.temperature)
    stats = mismatch_stats(lp.float().cpu(), out.logprobs, out.response_mask)
    return {"rows": c.rows, "tokens": int(out.response_mask.sum()),
            "engine_dtype": str(next(engine.model.parameters()).dtype).removeprefix("torch."),
            "learner": "fp32 weights, bf16 autocast" if device.type == "cuda" else "fp32",
            "mean_abs": stats["mismatch_abs_mean"], "max_abs": stats["mismatch_abs_max"], "kl_k3": stats["mismatch_kl"],
            "note": "random-init weights (flat logits): a trained model's gap is larger"}


# --------------------------------------------------------------------------- 4. RL recipe on Ray
class GPUProcesses:
    """Compute processes on the GPU (nvidia-smi), polled while the RL run lives: learner and rollout
    actors sharing the one GPU show up here as separate processes."""

    def __init__(self, interval: float = 2.0):
        self.interval, self.seen_mb, self.max_count, self.error = interval, {}, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                lines = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                        "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                       timeout=10, check=True).stdout.split("\n")
            except (OSError, subprocess.SubprocessError) as e:
                self.error = f"{type(e).__name__}: {e}"[:300]
                return
            rows = [x.split(",") for x in lines if x.strip()]
            for pid, mb in rows:
                self.seen_mb[pid.strip()] = max(self.seen_mb.get(pid.strip(), 0.0), float(mb))
            self.max_count = max(self.max_count, len(rows))
            self._stop.wait(self.interval)

    def __enter__(self) -> "GPUProcesses":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        if self.error:
            return {"error": self.error}
        return {"max_at_once": self.max_count, "peak_mb_by_pid": self.seen_mb,
                "note": f"nvidia-smi every {self.interval:g} s; includes this process"}


def child_env() -> dict[str, str]:
    """This environment with the checkout first on an absolute PYTHONPATH (the recipe's Ray workers
    import the project and whatever --target folder Ray was installed into from it)."""
    paths = [str(ROOT)] + [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # a local Ray of its own
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run_recipe(cmd: list[str], cwd: Path, timeout: float) -> tuple[int | str, str]:
    """(exit code or "timed out", output tail); SIGTERM first on timeout: the recipe then ends like
    Ctrl-C and its Ray goes with it."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1.0))
        code: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        code = f"timed out after {timeout:.0f} s"
    return code, output[-3000:]


PHASES = ("step_seconds", "generate_seconds", "weight_sync_seconds", "reward_seconds", "learn_seconds",
          "reference_seconds", "tokens_per_second", "new_tokens", "logprob_gap", "mismatch_abs_mean")


def step_breakdown(metrics: Path) -> dict:
    """Per RL step the phase times of metrics.jsonl, `other` = step - (generate + weight sync + reward +
    learn): scheduling, transfers, driver work. `median_after_first`: the steady state (step 1 pays warm-ups)."""
    steps = []
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        rec = json.loads(line)
        if "step_seconds" not in rec:
            continue   # evaluation records
        row = {"step": rec["step"], **{k: round(float(rec[k]), 5) for k in PHASES if k in rec}}
        busy = sum(row.get(k, 0.0) for k in ("generate_seconds", "weight_sync_seconds", "reward_seconds",
                                             "learn_seconds"))
        row["other_seconds"] = round(row["step_seconds"] - busy, 5)
        steps.append(row)
    later = steps[1:] or steps
    keys = [k for k in (*PHASES, "other_seconds") if all(k in r for r in later)]
    return {"steps": steps, "median_after_first": {k: round(statistics.median(r[k] for r in later), 5)
                                                   for k in keys} if later else {}}


def rl_section(device: torch.device, s: Sizes, clock: Clock) -> dict:
    try:
        import ray
    except ModuleNotFoundError as e:
        if e.name != "ray":
            raise
        return {"ray": "not installed", "skipped": "experiments/grpo_math.py needs Ray (see bench/gpu_ray_wheels.sh)"}
    from recipes.ray_session import placement

    flags = [f"--device={device.type}", *s.rl_flags]
    out: dict[str, Any] = {"ray": ray.__version__, "recipe": "experiments/grpo_math.py", "flags": flags,
                           "placement": placement(device.type, rollout_workers=1, reward_workers=1,
                                                  reward_on_gpu=False),
                           "placement_source": "recipes.ray_session.placement for these flags (what start_actors asks Ray)"}
    with tempfile.TemporaryDirectory(prefix="gpu_check_rl_") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "experiments" / "grpo_math.py"), f"--run-dir={run_dir}", *flags]
        watch = GPUProcesses() if device.type == "cuda" else contextlib.nullcontext()
        t0 = time.perf_counter()
        with watch:
            code, tail = run_recipe(cmd, Path(tmp), clock.left())
        out["recipe_wall_s"] = round(time.perf_counter() - t0, 1)
        if isinstance(watch, GPUProcesses):
            out["gpu_processes"] = watch.report()
        out["breakdown"] = step_breakdown(run_dir / "metrics.jsonl")
        summary = run_dir / "summary.json"
        if summary.is_file():
            keep = ("steps", "seconds_per_step", "generate_seconds_per_step", "learn_seconds_per_step",
                    "tokens_per_second", "rl_seconds", "wall_seconds", "peak_memory_mb")
            out["summary"] = {k: v for k, v in json.loads(summary.read_text()).items() if k in keep}
        if code != 0:
            out.update(error=f"experiments/grpo_math.py exit {code}", log_tail=tail)
    return out


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--preset", choices=sorted(SIZES), default="full", help="full: the GPU sizes; tiny: CPU toys")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = p.parse_args(argv)
    args.sections = [x for x in args.sections.split(",") if x]
    unknown = [x for x in args.sections if x not in SECTIONS]
    if unknown or not args.sections:
        p.exit(2, f"gpu_check: --sections {','.join(unknown) or '(empty)'}: choose from {','.join(SECTIONS)}\n")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.exit(2, f"gpu_check: --device cuda: torch {torch.__version__} sees no CUDA GPU (use --device cpu "
                  f"--preset tiny)\n")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = SIZES[args.preset]
    device = torch.device(args.device)
    if device.type == "cpu" and s.cpu_threads:
        torch.set_num_threads(s.cpu_threads)
    t_start = time.perf_counter()
    clock = Clock(deadline=t_start + s.budget_s["total"])
    result: dict[str, Any] = {"bench": "gpu_check", "device": args.device, "preset": args.preset,
                              "sections": args.sections, "env": environment(), "budget_s": s.budget_s,
                              "sizes": {k: v for k, v in dataclasses.asdict(s).items() if k != "budget_s"},
                              "formulas": FORMULAS}
    if device.type == "cuda":
        result["gpu"] = {"name": torch.cuda.get_device_name(device),
                         "memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
    runs: dict[str, Callable[[], dict]] = {
        "matmul": lambda: guarded(matmul_section, device, s, clock),
        "train": lambda: guarded(train_section, device, s, clock, result.get("matmul", {}).get("peak_tflops")),
        "sample": lambda: guarded(sample_section, device, s, clock),
        "rl": lambda: guarded(rl_section, device, s, clock),
    }
    for name in SECTIONS:
        if name not in args.sections:
            result[name] = {"skipped": "not in --sections"}
            continue
        clock.section(s.budget_s[name])
        if clock.left() <= 0:
            result[name] = {"skipped": "the run's total time budget is spent"}
            continue
        log(f"[gpu_check] {name} (budget {clock.left():.0f} s) ...")
        result[name] = runs[name]()
    result["ray"] = result["rl"].get("ray", "not checked" if "rl" not in args.sections else "see rl.error")
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    emit(result, append=False)


if __name__ == "__main__":
    main()
