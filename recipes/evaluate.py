"""Held-out evaluation of supervised recipes: greedy exact-match accuracy on the built-in TEST split
(disjoint from training; answers checked by reward.verifier, the verifier the RL recipes' reward
actors use) and the reward model's pair accuracy."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from minimind.data import synthetic_math as sm
from minimind.data.datasets import DPODataset, RLPromptDataset
from minimind.generate import SamplingParams, generate
from minimind.model import MiniMindForCausalLM, MiniMindScoreModel, last_token_values
from minimind.tokenizer import MiniMindTokenizer

if TYPE_CHECKING:
    from recipes.supervised_common import Run


def heldout_problems(n: int, seed: int) -> list[sm.MathProblem]:
    """Held-out problems: the TEST split of the built-in generator (disjoint from training)."""
    return sm.generate_problems(n, seed, "test")


def evaluate_math(model: MiniMindForCausalLM, tok: MiniMindTokenizer, problems: Sequence[sm.MathProblem],
                  max_new_tokens: int = 48, batch_size: int = 64) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers, the RL recipes' evaluation run in-process: the same
    prompts (RLPromptDataset, the tokenizer's own template) and the same verifier (math_reward, what
    the reward actors report as `accuracy`)."""
    from reward.verifier import math_reward

    prompts = RLPromptDataset(sm.rl_records(problems), tokenizer=tok).driver_prompts()
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=(tok.eos_id,))
    correct: list[bool] = []
    samples = []
    for s in range(0, len(problems), batch_size):
        chunk = prompts[s:s + batch_size]
        out = generate(model, [tok.encode(p["prompt"]) for p in chunk], params, pad_id=tok.pad_id)
        for i, p in enumerate(chunk):
            text = tok.decode(out.response_ids[i][out.response_mask[i].bool()].tolist())
            ok = math_reward(text, p["answer"]) == 1.0
            correct.append(ok)
            if len(samples) < 5:
                samples.append({"prompt": p["prompt"], "answer": p["answer"], "response": text, "correct": ok})
    by_level: dict[str, list[bool]] = {}
    for p, ok in zip(problems, correct):
        by_level.setdefault(str(p.difficulty), []).append(ok)
    return {"accuracy": float(np.mean(correct)) if correct else 0.0, "n": len(correct),
            "by_difficulty": {k: float(np.mean(v)) for k, v in sorted(by_level.items())}, "samples": samples}


def answer_heldout(run: "Run", model: MiniMindForCausalLM) -> dict[str, Any]:
    """evaluate_math on the run's eval_n TEST problems, with the seconds it took."""
    cfg = run.cfg
    t0 = time.perf_counter()
    res = evaluate_math(model, run.tokenizer, heldout_problems(cfg.eval_n, cfg.seed), cfg.max_new_tokens)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


class HeldOutCurve:
    """The held-out curve during training (`evaluate` of recipes.supervised_common.fit): eval_accuracy
    and eval_accuracy_d<level> on the run's eval_n TEST problems, the set the end-of-run report answers.
    It keeps its last answer, so that the report of the same weights (a point at the last update) is
    that answer and not a second pass over the same problems (greedy: it would be the same)."""

    def __init__(self, run: "Run"):
        self.run = run
        self.last: tuple[int, dict[str, Any]] | None = None   # (step, answer)

    def __call__(self, model: MiniMindForCausalLM, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            res = answer_heldout(self.run, model)
        finally:
            model.train(was_training)
        self.last = (step, res)
        return {"eval_accuracy": res["accuracy"], **{f"eval_accuracy_d{d}": v for d, v in res["by_difficulty"].items()}}

    def answer_at(self, step: int) -> dict[str, Any] | None:
        """The answer of the point at `step` if this process took one there (not on a learner group's
        rank, nor when a resumed run had no update left to make)."""
        return self.last[1] if self.last is not None and self.last[0] == step else None


def report_eval(run: "Run", model: MiniMindForCausalLM, label: str, answered: dict[str, Any] | None = None) -> dict | None:
    """The end-of-run held-out evaluation (eval.json and one line): `answered` when the curve already
    answered these problems with these weights (HeldOutCurve.answer_at the last step), else a new pass."""
    cfg = run.cfg
    if getattr(cfg, "eval_n", 0) <= 0:
        return None
    res = answered if answered is not None else answer_heldout(run, model)
    (run.run_dir / "eval.json").write_text(json.dumps(res, indent=2))
    print(f"[{label}] held-out exact-match accuracy: {res['accuracy']:.3f} on {res['n']} TEST problems "
          f"(by difficulty {res['by_difficulty']})" + (" - the held-out curve's last point" if answered else ""))
    return res


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
