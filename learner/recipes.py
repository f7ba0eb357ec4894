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

import copy
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from minimind.checkpoint import load_model, save_model
from minimind.config import preset as model_preset
from minimind.data import synthetic_math as sm
from minimind.data.datasets import BatchIterator, DPODataset, PretrainDataset, SFTDataset
from minimind.generate import SamplingParams, generate
from minimind.lora import LoRAConfig as _LoRAAdapterConfig
from minimind.lora import apply_lora, merge_lora, save_lora
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel, last_token_values
from minimind.tokenizer import MiniMindTokenizer, train_tokenizer

from .cli import config_to_dict
from .config import OptimConfig
from .learner import Learner
from .stages import DistillStage, DPOStage, LMStage, RewardModelStage
from .supervised import train_loop

log = logging.getLogger(__name__)

__all__ = ["RecipeConfig", "PretrainConfig", "SFTConfig", "LoRARecipeConfig", "DPOConfig", "DistillConfig",
           "RewardModelConfig", "Run", "prepare", "fit", "save_final", "evaluate_math", "resolve_device",
           "run_pretrain", "run_sft", "run_lora", "run_dpo", "run_distill", "run_reward_model"]


# ============================================================================ configs
@dataclass
class RecipeConfig:
    """Settings every supervised recipe shares."""
    run_dir: str = "runs/pretrain"
    """Output folder: metrics.jsonl, curves.png, checkpoint/, final/, data/, tokenizer/."""
    preset: str = "demo"
    """Model preset (minimind.config.PRESETS) for a model built from scratch."""
    data: str | None = None
    """Training jsonl; none = generate the built-in synthetic math corpus into run_dir/data."""
    tokenizer: str | None = None
    """Tokenizer folder; none = the one next to the init checkpoint, else run_dir/tokenizer (trained if absent)."""
    vocab_size: int = 512
    """Vocabulary of a tokenizer trained here (digits are always split)."""
    n_train: int = 4000
    """Built-in synthetic math: training problems generated when data is none."""
    steps: int = 300
    """Optimizer updates (the cosine schedule spans exactly these)."""
    batch_size: int = 32
    """Rows per optimizer update."""
    seq_len: int = 256
    """Pretrain block length / maximum SFT and DPO sequence length."""
    lr: float = 1e-3
    """Peak learning rate."""
    warmup_steps: int = 20
    """Linear warmup updates."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of lr."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on norms)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    micro_batch_size: int = 0
    """Rows per forward/backward (0 = whole batch); gradients are identical either way."""
    max_bad_steps: int = 3
    """Consecutive non-finite steps skipped before training stops with TrainingDiverged."""
    checkpoint_every: int = 100
    """Save run_dir/checkpoint every this many updates (and at the end)."""
    resume: bool = False
    """Continue from run_dir/checkpoint exactly where it stopped."""
    seed: int = 0
    """Seed for model init, data order, dropout and the synthetic data."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "n_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        self.optim()  # OptimConfig validates lr, clip, ...

    def optim(self) -> OptimConfig:
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           total_steps=self.steps, min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip,
                           micro_batch_size=self.micro_batch_size, max_bad_steps=self.max_bad_steps)


@dataclass
class _EvalConfig:
    eval_n: int = 200
    """Held-out TEST-split problems answered greedily at the end (0 skips the evaluation)."""
    max_new_tokens: int = 48
    """Longest generated answer in the evaluation."""


@dataclass
class PretrainConfig(RecipeConfig):
    """Pretrain a MiniMind model from scratch (next-token prediction on packed text)."""
    run_dir: str = "runs/pretrain"
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 2e-3
    dropout: float = 0.0
    """Dropout of the new model."""


@dataclass
class SFTConfig(RecipeConfig, _EvalConfig):
    """Supervised fine-tuning on chats (loss on assistant tokens only)."""
    run_dir: str = "runs/sft"
    init: str = "runs/pretrain/final"
    """Starting model: a save_model folder (e.g. the pretrain output) or a MiniMind .pth."""
    # measured on the demo preset: 200 steps at 1e-3 -> 3.5% held-out, 1200 at 2e-3 -> 20-65%:
    # the model learns to copy operands, then arithmetic, only after ~1000 updates, and when that
    # happens moves with tiny numeric changes; 2000 steps -> 73.5% / 77.8% (seeds 1 / 0)
    steps: int = 2000
    lr: float = 2e-3


@dataclass
class LoRARecipeConfig(RecipeConfig, _EvalConfig):
    """LoRA fine-tuning: only low-rank adapters train; saves the adapters and the merged model."""
    run_dir: str = "runs/lora"
    init: str = "runs/sft/final"
    """Base model (a save_model folder or a MiniMind .pth)."""
    steps: int = 200
    lr: float = 2e-3
    rank: int = 8
    """Adapter rank."""
    alpha: float = 16.0
    """Adapter scale is alpha / rank."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Linear layers to adapt."""


@dataclass
class DPOConfig(RecipeConfig, _EvalConfig):
    """Direct Preference Optimization against a frozen copy of the starting model."""
    run_dir: str = "runs/dpo"
    init: str = "runs/sft/final"
    """Policy and reference model (a save_model folder or a MiniMind .pth)."""
    steps: int = 100
    batch_size: int = 16
    lr: float = 5e-5
    warmup_steps: int = 10
    beta: float = 0.1
    """DPO temperature beta."""
    label_smoothing: float = 0.0
    """Conservative-DPO epsilon (0 = plain DPO)."""


@dataclass
class DistillConfig(RecipeConfig, _EvalConfig):
    """Distil a teacher into a smaller student on the SFT chats."""
    run_dir: str = "runs/distill"
    teacher: str = "runs/sft/final"
    """Teacher model (a save_model folder or a MiniMind .pth)."""
    preset: str = "tiny"
    init: str | None = None
    """Optional student starting checkpoint; none = a fresh model of `preset` with the teacher's vocabulary."""
    steps: int = 400
    lr: float = 2e-3
    alpha: float = 0.5
    """Weight of the hard-label CE (1 - alpha goes to the KL to the teacher)."""
    temperature: float = 2.0
    """Softmax temperature of the KL term."""


@dataclass
class RewardModelConfig(RecipeConfig):
    """Bradley-Terry reward model: a score model initialised from the SFT trunk, trained on preference pairs."""
    run_dir: str = "runs/reward_model"
    init: str = "runs/sft/final"
    """Trunk to start from (a save_model folder or a MiniMind .pth)."""
    steps: int = 150
    batch_size: int = 16
    lr: float = 3e-4
    eval_n: int = 200
    """Held-out TEST-split preference pairs scored at the end (0 skips)."""


# ============================================================================ shared machinery
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


def builtin_corpus(out_dir: Path, n_train: int, seed: int) -> dict[str, Path]:
    """The synthetic math files in `out_dir`, generated once (reused when present and complete)."""
    names = {"pretrain": "pretrain.jsonl", "sft": "sft.jsonl", "dpo": "dpo.jsonl", "rl": "rl_train.jsonl",
             "rl_test": "rl_test.jsonl", "problems_test": "problems_test.jsonl"}
    stamp = out_dir / "corpus.json"
    want = {"n_train": n_train, "seed": seed}
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all((out_dir / f).is_file()
                                                                          for f in names.values()):
        return {k: out_dir / f for k, f in names.items()}
    paths = sm.write_corpus(out_dir, n_train=n_train, n_test=200, seed=seed)
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
        log.warning("no tokenizer.json next to %s: training one on the built-in text; it must match the "
                    "vocabulary the checkpoint was trained with (pass --tokenizer otherwise)", init)
    problems = sm.generate_problems(cfg.n_train, cfg.seed, "train")
    tok = train_tokenizer(sm.pretrain_texts(problems), vocab_size=cfg.vocab_size, split_digits=True)
    tok.save(own)
    log.info("trained a %d-token BPE tokenizer -> %s", tok.vocab_size, own)
    return MiniMindTokenizer.load(own)


def prepare(cfg: RecipeConfig) -> Run:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    if not cfg.resume and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()   # a fresh run starts a fresh curve
    corpus = builtin_corpus(run_dir / "data", cfg.n_train, cfg.seed) if cfg.data is None else {}
    tok = _tokenizer(cfg, run_dir)
    log.info("run_dir=%s device=%s vocab=%d", run_dir, device, tok.vocab_size)
    return Run(cfg, run_dir, device, tok, corpus)


def load_init(path: str | Path, tok: MiniMindTokenizer, device: torch.device) -> MiniMindForCausalLM:
    """A causal LM from a save_model folder or a MiniMind .pth, checked against the tokenizer."""
    model = load_model(path, device=device, dtype=torch.float32)
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"{path}: model vocab_size={model.config.vocab_size} is smaller than the "
                         f"tokenizer's {tok.vocab_size}; pass the tokenizer it was trained with (--tokenizer)")
    return model


def fit(run: Run, model: nn.Module, stage: Any, dataset: Any, ref_model: nn.Module | None = None,
        plot_keys: Sequence[str] = ("loss", "lr", "grad_norm")) -> tuple[Learner, dict[str, float]]:
    """Train `model` with `stage` on `dataset` for cfg.steps updates (resuming if asked)."""
    cfg = run.cfg
    learner = Learner(model, stage, cfg.optim(), ref_model=ref_model, device=run.device, run_dir=run.run_dir)
    batches = BatchIterator(dataset, cfg.batch_size, seed=cfg.seed)
    t0 = time.perf_counter()
    stats = train_loop(learner, batches, cfg.steps, run.run_dir, checkpoint_every=cfg.checkpoint_every or cfg.steps,
                       resume=cfg.resume, progress=cfg.progress, plot_keys=tuple(plot_keys))
    log.info("%s: %d steps in %.1fs, last loss %.4f", stage.name, learner.step, time.perf_counter() - t0,
             stats.get("loss", float("nan")))
    return learner, stats


def save_final(run: Run, model: nn.Module, extra: dict | None = None, name: str = "final") -> Path:
    """run_dir/<name>: model.safetensors + config.json + the tokenizer (a complete model folder)."""
    out = run.run_dir / name
    save_model(model, out, extra_meta={"recipe": type(run.cfg).__name__, **(extra or {})})
    run.tokenizer.save(out)
    return out


def heldout_problems(n: int, seed: int) -> list[sm.MathProblem]:
    """Held-out problems: the TEST split of the built-in generator (disjoint from training)."""
    return sm.generate_problems(n, seed, "test")


def evaluate_math(model: MiniMindForCausalLM, tok: MiniMindTokenizer, problems: Sequence[sm.MathProblem],
                  max_new_tokens: int = 48, batch_size: int = 64) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers (answer after `####`, else the last number)."""
    from reward.verifier import answers_match, extract_answer

    correct: list[bool] = []
    samples = []
    for s in range(0, len(problems), batch_size):
        chunk = problems[s:s + batch_size]
        prompts = [tok.encode_chat([{"role": "user", "content": p.question}], add_generation_prompt=True)
                   for p in chunk]
        out = generate(model, prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                       pad_id=tok.pad_id)
        for i, p in enumerate(chunk):
            ids = out.response_ids[i][out.response_mask[i].bool()].tolist()
            text = tok.decode(ids)
            ok = answers_match(extract_answer(text), p.answer)
            correct.append(ok)
            if len(samples) < 5:
                samples.append({"question": p.question, "answer": p.answer, "response": text, "correct": ok})
    by_level: dict[str, list[bool]] = {}
    for p, ok in zip(problems, correct):
        by_level.setdefault(str(p.difficulty), []).append(ok)
    return {"accuracy": float(np.mean(correct)) if correct else 0.0, "n": len(correct),
            "by_difficulty": {k: float(np.mean(v)) for k, v in sorted(by_level.items())}, "samples": samples}


def _eval_and_report(run: Run, model: MiniMindForCausalLM, label: str) -> dict | None:
    cfg = run.cfg
    if getattr(cfg, "eval_n", 0) <= 0:
        return None
    t0 = time.perf_counter()
    res = evaluate_math(model, run.tokenizer, heldout_problems(cfg.eval_n, cfg.seed), cfg.max_new_tokens)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    (run.run_dir / "eval.json").write_text(json.dumps(res, indent=2))
    print(f"[{label}] held-out exact-match accuracy: {res['accuracy']:.3f} on {res['n']} TEST problems "
          f"(by difficulty {res['by_difficulty']})")
    return res


def _result(run: Run, learner: Learner, stats: dict, final: Path, **more: Any) -> dict[str, Any]:
    return {"run_dir": str(run.run_dir), "final": str(final), "step": learner.step,
            "loss": stats.get("loss"), **more}


# ============================================================================ recipes
def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    run = prepare(cfg)
    mcfg = model_preset(cfg.preset, vocab_size=run.tokenizer.vocab_size, dropout=cfg.dropout)
    model = MiniMindForCausalLM(mcfg)
    print(f"[pretrain] {cfg.preset}: {model.num_parameters() / 1e6:.2f}M parameters, vocab {mcfg.vocab_size}")
    data = PretrainDataset(run.data_file("pretrain"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache")
    learner, stats = fit(run, model, LMStage(), data)
    final = save_final(run, learner.model)
    return _result(run, learner, stats, final)


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    run = prepare(cfg)
    model = load_init(cfg.init, run.tokenizer, run.device)
    data = SFTDataset(run.data_file("sft"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache")
    learner, stats = fit(run, model, LMStage(), data)
    final = save_final(run, learner.model)
    return _result(run, learner, stats, final, eval=_eval_and_report(run, learner.model, "sft"))


def run_lora(cfg: LoRARecipeConfig) -> dict[str, Any]:
    run = prepare(cfg)
    model = load_init(cfg.init, run.tokenizer, run.device)
    apply_lora(model, _LoRAAdapterConfig(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.lora_dropout,
                                         target_modules=cfg.target_modules))
    data = SFTDataset(run.data_file("sft"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache")
    learner, stats = fit(run, model, LMStage(), data)
    final = run.run_dir / "final"
    save_lora(learner.model, final / "adapter.safetensors")
    merge_lora(learner.model)
    save_final(run, learner.model, {"lora": {"rank": cfg.rank, "alpha": cfg.alpha, "base": str(cfg.init)}})
    return _result(run, learner, stats, final, eval=_eval_and_report(run, learner.model, "lora"))


def run_dpo(cfg: DPOConfig) -> dict[str, Any]:
    run = prepare(cfg)
    policy = load_init(cfg.init, run.tokenizer, run.device)
    ref = copy.deepcopy(policy)
    data = DPODataset(run.data_file("dpo"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache")
    stage = DPOStage(beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    learner, stats = fit(run, policy, stage, data, ref_model=ref,
                         plot_keys=("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "lr"))
    final = save_final(run, learner.model)
    return _result(run, learner, stats, final, reward_accuracy=stats.get("reward_accuracy"),
                   eval=_eval_and_report(run, learner.model, "dpo"))


def run_distill(cfg: DistillConfig) -> dict[str, Any]:
    run = prepare(cfg)
    teacher = load_init(cfg.teacher, run.tokenizer, run.device)
    if cfg.init is not None:
        student = load_init(cfg.init, run.tokenizer, run.device)
    else:
        student = MiniMindForCausalLM(model_preset(cfg.preset, vocab_size=teacher.config.vocab_size,
                                                   max_position_embeddings=teacher.config.max_position_embeddings))
    print(f"[distill] teacher {teacher.num_parameters() / 1e6:.2f}M -> student {student.num_parameters() / 1e6:.2f}M")
    data = SFTDataset(run.data_file("sft"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache")
    stage = DistillStage(alpha=cfg.alpha, temperature=cfg.temperature)
    learner, stats = fit(run, student, stage, data, ref_model=teacher, plot_keys=("loss", "ce", "kl", "lr"))
    final = save_final(run, learner.model, {"teacher": str(cfg.teacher)})
    return _result(run, learner, stats, final, eval=_eval_and_report(run, learner.model, "distill"))


@torch.no_grad()
def pair_accuracy(model: MiniMindScoreModel, data: DPODataset, batch_size: int = 32) -> float:
    """Fraction of pairs whose chosen response scores above the rejected one."""
    model.eval()
    wins: list[bool] = []
    dev = next(model.parameters()).device
    for s in range(0, len(data), batch_size):
        b = data.collate([data[i] for i in range(s, min(len(data), s + batch_size))])
        ids = torch.cat([b["chosen_ids"], b["rejected_ids"]]).to(dev)
        attn = torch.cat([b["chosen_attention_mask"], b["rejected_attention_mask"]]).to(dev)
        rc, rr = last_token_values(model(ids, attention_mask=attn), attn).chunk(2)
        wins += (rc > rr).tolist()
    return float(np.mean(wins)) if wins else 0.0


def run_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    run = prepare(cfg)
    lm = load_init(cfg.init, run.tokenizer, run.device)
    model = MiniMindScoreModel(lm.config).to(run.device)
    model.model.load_state_dict(lm.model.state_dict())   # trunk from the SFT model; the head starts at 0
    del lm
    data = DPODataset(run.data_file("dpo"), run.tokenizer, cfg.seq_len, cache_dir=run.run_dir / "cache")
    learner, stats = fit(run, model, RewardModelStage(), data, plot_keys=("loss", "accuracy", "margin", "lr"))
    final = save_final(run, learner.model, {"init": str(cfg.init)})
    held_out = None
    if cfg.eval_n > 0:
        test_file = sm.write_jsonl(sm.dpo_records(heldout_problems(cfg.eval_n, cfg.seed), cfg.seed),
                                   run.run_dir / "data" / "dpo_test.jsonl")
        held_out = pair_accuracy(learner.model, DPODataset(test_file, run.tokenizer, cfg.seq_len,
                                                           cache_dir=run.run_dir / "cache"))
        (run.run_dir / "eval.json").write_text(json.dumps({"pair_accuracy": held_out}))
        print(f"[reward_model] held-out pair accuracy (chosen scored above rejected): {held_out:.3f}")
    return _result(run, learner, stats, final, pair_accuracy=held_out)


# ============================================================================ script entry
def cli_main(cls: type, recipe: Any, argv: list[str] | None = None) -> dict[str, Any]:
    """What every experiments/<stage>.py main() does: parse `cls` from argv, log to stderr, run `recipe`."""
    from .cli import parse_config

    cfg = parse_config(cls, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    result = recipe(cfg)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary = {k: v for k, v in result.items() if k != "eval"}
    if result.get("eval"):
        summary["accuracy"] = result["eval"]["accuracy"]
    print(json.dumps(summary))
    return result
