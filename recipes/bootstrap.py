"""A starting policy for RL when the user brings none: a small model pretrained and SFT'd on the
built-in math data through the same learner, cached in <run_dir>/bootstrap and reused only when it
was made with the same settings."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

from recipes.supervised_config import PretrainConfig, SFTConfig
from recipes.supervised import run_pretrain, run_sft

from recipes.rl_config import BootstrapConfig

log = logging.getLogger(__name__)


class BootstrapMismatch(ValueError):
    """A cached bootstrap made with other settings than the ones asked for."""


def bootstrap_policy(run_dir: Path, cfg: BootstrapConfig, seed: int, progress: bool = True,
                     extra_texts: Sequence[str] = ()) -> Path:
    """Pretrain then SFT a small model on the built-in math data; cached: reused when present and
    made with the same settings (recorded in bootstrap/settings.json), an error otherwise.
    `extra_texts` join the pretraining corpus AND the tokenizer's training text (e.g. rendered
    tool-use chats, so that the tools block of a prompt costs a few tokens instead of hundreds)."""
    root = run_dir / "bootstrap"
    sft_final = root / "sft" / "final"
    record = root / "settings.json"
    wanted = {**asdict(cfg), "seed": seed}
    if extra_texts:
        wanted["extra_texts"] = hashlib.sha256("\x00".join(extra_texts).encode()).hexdigest()[:16]
    wanted = json.loads(json.dumps(wanted))   # as the record reads back (tuples are lists)
    if (sft_final / "model.safetensors").is_file():
        made = json.loads(record.read_text()) if record.is_file() else None
        if made != wanted:
            if made is None:
                what = "has no record of its settings (an older version made it)"
            else:
                differ = [k for k in wanted if made.get(k) != wanted[k]]
                what = (f"was made with {', '.join(f'{k}={made.get(k)!r}' for k in differ)} but this run "
                        f"asks for {', '.join(f'{k}={wanted[k]!r}' for k in differ)}")
            raise BootstrapMismatch(
                f"{root} {what}. Delete {root} to rebuild it, use another --run-dir, or start from it "
                f"anyway with --init {sft_final}")
        log.info("reusing bootstrapped policy %s", sft_final)
        return sft_final
    print(f"[bootstrap] no --init: pretraining + SFT of a '{cfg.preset}' model on built-in math "
          f"(cached in {root})")
    data = tokenizer = None
    if extra_texts:
        data, tokenizer = _corpus_with(root, cfg, seed, extra_texts)
    run_pretrain(PretrainConfig(run_dir=str(root / "pretrain"), preset=cfg.preset, n_train=cfg.n_train,
                                steps=cfg.pretrain_steps, seed=seed, progress=progress, data=data,
                                tokenizer=tokenizer))
    run_sft(SFTConfig(run_dir=str(root / "sft"), init=str(root / "pretrain" / "final"), n_train=cfg.n_train,
                      difficulties=cfg.sft_difficulties, worked_fraction=cfg.sft_worked_fraction,
                      steps=cfg.sft_steps,
                      optim=replace(SFTConfig().optim, lr=cfg.sft_lr), seed=seed,
                      eval_every=cfg.sft_eval_every, progress=progress))
    record.write_text(json.dumps(wanted, indent=2))
    return sft_final


def sft_curve(run_dir: Path) -> list[dict]:
    """The bootstrap SFT's held-out evaluations during training (step, eval_accuracy, per level)."""
    from learner.metrics import read_metrics

    path = run_dir / "bootstrap" / "sft" / "metrics.jsonl"
    if not path.is_file():
        return []
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("eval_accuracy")}
            for r in read_metrics(path) if "eval_accuracy" in r]


def _corpus_with(root: Path, cfg: BootstrapConfig, seed: int, extra: Sequence[str]) -> tuple[str, str]:
    """(pretrain jsonl, tokenizer folder): the built-in pretraining text of (n_train, seed) plus
    `extra`, and a tokenizer trained on exactly that text, as the pretrain recipe trains its own."""
    from recipes.supervised_config import PretrainConfig as _P
    from minimind.data import synthetic_math as sm
    from minimind.tokenizer import train_tokenizer

    texts = sm.pretrain_texts(sm.generate_problems(cfg.n_train, seed, "train")) + list(extra)
    data = sm.write_jsonl(({"text": t} for t in texts), root / "data" / "pretrain.jsonl")
    tok_dir = root / "tokenizer"
    train_tokenizer(texts, vocab_size=_P().vocab_size, split_digits=True).save(tok_dir)
    return str(data), str(tok_dir)
