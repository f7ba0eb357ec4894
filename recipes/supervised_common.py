"""Supervised recipes: the typed configs and the build/run functions behind experiments/*.py.

Every recipe follows the same path, written once here:

    prepare(cfg)      seed everything, pick the device, write run_dir/config.json, find or build
                      the data (built-in synthetic math when cfg.data is None) and the tokenizer
                      (cfg.tokenizer, else the one saved next to the init checkpoint, else a small
                      digit-splitting BPE trained on the built-in pretrain text, saved in run_dir)
    fit(...)          Learner + BatchIterator + train_loop: metrics.jsonl, curves.png, checkpoints
                      in run_dir/checkpoint, exact resume with cfg.resume
    save_final(...)   run_dir/final: model.safetensors + config.json (minimind.checkpoint) + the
                      tokenizer, so `final` is a complete folder the next stage takes as --init

and each `run_<stage>(cfg)` only says what is particular to its stage (model, dataset, Stage,
what to save and evaluate). Held-out evaluation (`evaluate_math`) greedily answers problems of
the built-in TEST split, which never overlaps the training split.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from minimind.checkpoint import load_model, save_model
from minimind.data import synthetic_math as sm
from minimind.data.datasets import BatchIterator
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import MiniMindTokenizer, check_fits, train_tokenizer

from learner.learner import Learner
from learner.supervised import train_loop
from recipes.cli import config_to_dict, parse_config
from recipes.errors import RunStopped, run_or_exit
from recipes.inputs import check_checkpoint_path, check_data_path, check_device
from recipes.run_folder import check_resume_fits, check_run_folder, resume_hint, start_fresh
from recipes.supervised_config import RecipeConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """What `prepare` resolved for a recipe."""
    cfg: RecipeConfig
    run_dir: Path
    device: torch.device
    tokenizer: MiniMindTokenizer
    corpus: dict[str, Path] = field(default_factory=dict)   # built-in synthetic files (when generated)

    def data_file(self, kind: str) -> Path:
        """cfg.data, else the built-in corpus file of `kind` (pretrain | sft | dpo)."""
        if self.cfg.data is not None:
            return Path(self.cfg.data)
        return self.corpus[kind]


def builtin_corpus(out_dir: Path, n_train: int, seed: int, difficulties: Sequence[int],
                   worked_fraction: float) -> dict[str, Path]:
    """The synthetic math files in `out_dir`, generated once (reused when present and complete)."""
    names = {"pretrain": "pretrain.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl", "rl": "rl_train.jsonl",
             "rl_test": "rl_test.jsonl", "problems_test": "problems_test.jsonl"}
    stamp = out_dir / "corpus.json"
    want = {"n_train": n_train, "seed": seed, "difficulties": list(difficulties), "worked_fraction": worked_fraction}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all((out_dir / f).is_file()
                                                                          for f in names.values()):
        return {k: out_dir / f for k, f in names.items()}
    paths = sm.write_corpus(out_dir, n_train=n_train, n_test=200, seed=seed, difficulties=difficulties,
                            worked_fraction=worked_fraction)
    stamp.write_text(json.dumps(want))
    return paths


def _init_dir(cfg: RecipeConfig) -> Path | None:
    """Folder of the checkpoint this recipe starts from (where a tokenizer may be saved)."""
    src = getattr(cfg, "teacher", None) or getattr(cfg, "init", None)
    if src is None:
        return None
    p = Path(src)
    return p if p.is_dir() else p.parent


def _tokenizer(cfg: RecipeConfig, run_dir: Path) -> MiniMindTokenizer:
    if cfg.tokenizer is not None:
        return MiniMindTokenizer.load(cfg.tokenizer)
    init = _init_dir(cfg)
    if init is not None and (init / "tokenizer.json").is_file():
        return MiniMindTokenizer.load(init)
    own = run_dir / "tokenizer"
    if (own / "tokenizer.json").is_file():
        return MiniMindTokenizer.load(own)
    if init is not None:
        raise FileNotFoundError(f"no tokenizer.json next to {init}: a checkpoint needs the tokenizer it was "
                                f"trained with; pass --tokenizer <folder with tokenizer.json>")
    problems = sm.corpus_problems(cfg.n_train, cfg.seed, "train", cfg.difficulties)
    tok = train_tokenizer(sm.pretrain_texts(problems), vocab_size=cfg.vocab_size, split_digits=True)
    tok.save(own)
    log.info("trained a %d-token BPE tokenizer -> %s", tok.vocab_size, own)
    return MiniMindTokenizer.load(own)


def prepare(cfg: RecipeConfig) -> Run:
    run_dir = Path(cfg.run_dir)
    check_run_folder(run_dir, cfg.resume, cfg.overwrite)   # before anything is read or written
    if cfg.data is not None:
        check_data_path(cfg.data, "--data")
    for flag in ("init", "teacher"):
        if getattr(cfg, flag, None) is not None:
            check_checkpoint_path(getattr(cfg, flag), f"--{flag}")
    check_device(cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    corpus = ({} if cfg.data is not None else
              builtin_corpus(run_dir / "data", cfg.n_train, cfg.seed, cfg.difficulties, cfg.worked_fraction))
    tok = _tokenizer(cfg, run_dir)
    log.info("run_dir=%s device=%s vocab=%d", run_dir, device, tok.vocab_size)
    return Run(cfg, run_dir, device, tok, corpus)


def load_init(run: Run, path: str | Path) -> MiniMindForCausalLM:
    """A causal LM from a save_model folder or a MiniMind .pth (its unseen config values from --pth.*),
    checked against the run's tokenizer: sizes or special ids that do not fit stop the run."""
    model = load_model(path, device=run.device, dtype=torch.float32, **run.cfg.pth.kwargs())
    check_fits(run.tokenizer, model.config, tokenizer_flag="--tokenizer")
    return model


def is_minimind_pth(path: str | Path | None) -> bool:
    return path is not None and Path(path).suffix in (".pth", ".pt")


def skipped_lines_report(run: Run) -> Path:
    """Where the datasets write every line they skipped (file, line, reason)."""
    return run.run_dir / "skipped_lines.jsonl"


def chat_data(run: Run, cls: type, path: str | Path) -> Any:
    """An SFT or DPO dataset of `path` for this run: its tokenizer and template, MiniMind's labelling
    when training a MiniMind .pth (unless --label-turn-newline says otherwise), skipped lines reported."""
    newline = run.cfg.label_turn_newline
    if newline is None:
        newline = is_minimind_pth(getattr(run.cfg, "init", None))
    return cls(path, run.tokenizer, run.cfg.seq_len, cache_dir=run.run_dir / "cache", label_turn_newline=newline,
               report_path=skipped_lines_report(run))


def fit(run: Run, model: nn.Module, stage: Any, dataset: Any, ref_model: nn.Module | None = None,
        plot_keys: Sequence[str] = ("loss", "lr", "grad_norm"),
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None) -> tuple[Learner, dict[str, float]]:
    """Train `model` with `stage` on `dataset` for cfg.steps updates (resuming if asked); `evaluate`
    (model, step -> stats) runs every cfg.eval_every updates and its stats join that step's metrics."""
    cfg = run.cfg
    if cfg.resume:   # before config.json is rewritten: it says what the checkpoint was made with
        check_resume_fits(run.run_dir, model, config_to_dict(cfg))
    # the run starts for real here (data read, model built): only now may the earlier results go
    start_fresh(run.run_dir, cfg.resume)
    (run.run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    learner = Learner(model, stage, cfg.optim.for_run(cfg.steps), ref_model=ref_model, device=run.device)
    batches = BatchIterator(dataset, cfg.batch_size, seed=cfg.seed)
    t0 = time.perf_counter()
    loop = dict(checkpoint_every=cfg.checkpoint_every or cfg.steps, resume=cfg.resume, progress=cfg.progress,
                plot_keys=tuple(plot_keys), plot_every=cfg.plot_every,
                evaluate=evaluate, eval_every=getattr(cfg, "eval_every", 0) if evaluate else 0)
    if cfg.learner.world_size > 1:
        stats = fit_on_ranks(run, learner, batches, loop)
    else:
        stats = train_loop(learner, batches, cfg.steps, run.run_dir, **loop)
    log.info("%s: %d steps in %.1fs, last loss %.4f", stage.name, learner.step, time.perf_counter() - t0,
             stats.get("loss", float("nan")))
    return learner, stats


def fit_on_ranks(run: Run, learner: Learner, batches: BatchIterator, loop: dict) -> dict[str, float]:
    """The run on --learner.world-size Ray actors (a loopback local Ray): each rank a copy of `learner`
    (model, stage, optimizer settings) and of `batches`, training its rows of every batch; rank 0 writes
    metrics and checkpoints. `learner` ends with rank 0's final weights and step."""
    import ray

    from recipes.ray_session import init_ray   # the RL recipes' Ray start-up: loopback only, ended with this process

    from learner.group import LearnerFailed, LearnerGroup

    cfg = run.cfg
    n = cfg.learner.world_size
    if run.device.type == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"--learner.world-size={n} on --device {cfg.device}: a rank takes one GPU and this "
                         f"machine has {torch.cuda.device_count()}; lower --learner.world-size")
    init_ray(None, dashboard=False, dashboard_host="127.0.0.1", overlapping=False)
    try:
        per_rank = {"num_gpus": 1, "num_cpus": 1} if run.device.type == "cuda" else {"num_cpus": 1 / n}
        group = LearnerGroup.start(lambda: learner, cfg.learner, str(run.device), per_rank,
                                   threads=max(1, (os.cpu_count() or 1) // n))
        try:
            done = group.wait([a.fit.remote(batches, cfg.steps, str(run.run_dir), **loop) for a in group.actors],
                              "the supervised run")
        except LearnerFailed as e:   # one line, and where the run can go on from
            raise RunStopped(f"{e}; {resume_hint(run.run_dir / 'checkpoint', '--checkpoint-every N')}") from e
        stats, weights = done[0]
        learner.model.load_state_dict(weights)
        learner.step = int(stats.get("step", cfg.steps))
        print(f"[learner] {n} ranks: " + ", ".join(f"rank {r} {stats.get(f'learn_seconds_rank{r}', 0):.3f} s/step"
                                                   for r in range(n)), flush=True)
        return stats
    finally:
        ray.shutdown()


def save_final(run: Run, model: nn.Module, extra: dict | None = None, name: str = "final") -> Path:
    """run_dir/<name>: model.safetensors + config.json + the tokenizer (a complete model folder)."""
    out = run.run_dir / name
    save_model(model, out, extra_meta={"recipe": type(run.cfg).__name__, **(extra or {})})
    run.tokenizer.save(out)
    return out


def result(run: Run, learner: Learner, stats: dict, final: Path, **more: Any) -> dict[str, Any]:
    return {"run_dir": str(run.run_dir), "final": str(final), "step": learner.step,
            "loss": stats.get("loss"), **more}


def cli_main(cls: type, recipe: Any, argv: list[str] | None = None) -> dict[str, Any]:
    """What every experiments/<stage>.py main() does: parse `cls` from argv, log to stderr, run `recipe`."""
    cfg = parse_config(cls, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    result = run_or_exit(lambda: recipe(cfg))
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary = {k: v for k, v in result.items() if k != "eval"}
    if result.get("eval"):
        summary["accuracy"] = result["eval"]["accuracy"]
    print(json.dumps(summary))
    return result
