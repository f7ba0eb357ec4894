"""Supervised stages: pretrain / SFT / LoRA (`lm`), `dpo`, `distill`, `reward_model`.

Each stage splits a collated batch into micro-batches that carry the full batch's counts, so
the learner's accumulated gradient equals the one-big-batch gradient. Losses come from
`learner.losses` (pure functions); stages only run the forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from minimind.data import IGNORE_INDEX
from minimind.model import MiniMindForCausalLM, last_token_values, shift_labels

from ..learner import Learner, StepPlan, batch_rows, split_rows, take_rows
from ..losses import bradley_terry_loss, distill_loss, dpo_loss, lm_loss, logprobs_from_logits
from ..losses.core import masked_sum


PACK_BELOW = 0.9
"""Pack a batch when fewer than this share of its positions carry a label: below it, skipping padding
and unlabelled positions (an SFT chat's prompt) pays for the packing's gathers; a pretraining block
(every position labelled but the last) runs as it is, on the fused causal attention."""


def packs(model: nn.Module, wanted: torch.Tensor, attn: torch.Tensor | None) -> bool:
    """Whether an LM loss on `model` runs packed (MiniMindModel.hidden_at). MoE models never do: their
    load-balance loss is per padded row, as MiniMind computes it."""
    if not isinstance(model, MiniMindForCausalLM) or model.config.use_moe:
        return False
    return float(wanted.float().mean()) < PACK_BELOW


def token_logprobs(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """[B, T-1] log p(ids[:, t+1] | ids[:, :t+1])."""
    logits = model(ids, attention_mask=attn).logits
    return logprobs_from_logits(logits[:, :-1].float(), ids[:, 1:])


class StageBase:
    """What every stage shares: the trainable modules, no state, moving a dict batch to the device."""
    name = "base"
    max_sane_lr = 1e-2

    def trainable(self, learner: Learner) -> list[nn.Module]:
        return [learner.model]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @staticmethod
    def _to(batch: dict, device: torch.device) -> dict:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @staticmethod
    def _local(learner: Learner, batch: dict) -> tuple[dict, int]:
        """(this learner rank's rows of `batch`, the batch's row count): every rank reads the same
        batches and trains its own block of rows (all of them on a world of one)."""
        rows = batch_rows(batch)
        if not learner.comm.distributed:
            return batch, rows
        return take_rows(batch, learner.comm.shard(rows)), rows

    def _micro(self, learner: Learner, batch: dict, rows: int | None = None, **globals_) -> list[dict]:
        """Micro-batches of a supervised batch (the whole batch, or with `rows` this rank's rows of a
        batch of that many); each carries its row share of the whole batch (`weight`, for losses that
        are row means) and its stat weight (`tokens`: label tokens, or rows for pair losses)."""
        if rows is None:
            batch, rows = self._local(learner, batch)
        batch = self._to(batch, learner.device)
        if not batch_rows(batch):
            return []   # fewer rows than learner ranks: this rank only adds its zero gradient
        micros = split_rows({**batch, **globals_, "rows": rows}, learner.optim_cfg.micro_batch_size)
        for m in micros:
            n = batch_rows(m)
            m["weight"] = n / rows
            m["tokens"] = float((m["labels"][:, 1:] != IGNORE_INDEX).sum()) if "labels" in m else float(n)
        return micros


@dataclass
class LMStage(StageBase):
    """Next-token CE on labels != -100 (pretrain: all tokens; SFT: assistant spans only).
    LoRA is this stage on a model wrapped by `minimind.lora.apply_lora`."""
    name: str = "lm"
    max_sane_lr: float = 3e-3

    def plan(self, learner: Learner, batch: dict) -> StepPlan:
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return StepPlan([self._micro(learner, batch, global_tokens=tokens)])

    def loss(self, learner: Learner, m: dict):
        model, ids, attn = learner.model, m["input_ids"], m.get("attention_mask")
        target = shift_labels(m["labels"])
        wanted = target != IGNORE_INDEX
        if packs(model, wanted, attn):
            h, aux = model.model.hidden_at(ids, attn, wanted)
            logits, target = model.lm_head(h), target[wanted]
        else:
            out = model(ids, attention_mask=attn)
            logits, aux = out.logits, out.aux_loss
        loss, stats = lm_loss(logits, target, global_tokens=m["global_tokens"])
        if aux is not None and aux.requires_grad:
            loss = loss + aux * m["weight"]  # MoE load balance, row-weighted like the CE
            stats["aux_loss"] = float(aux)
        return loss, stats


@dataclass
class DPOStage(StageBase):
    """−log σ(β[(πc − πr) − (refc − refr)]) on summed response logprobs; the frozen reference
    logprobs are computed once per batch, before the update."""
    beta: float = 0.1
    label_smoothing: float = 0.0
    name: str = "dpo"
    max_sane_lr: float = 1e-4

    def _both(self, model: nn.Module, m: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # one forward over chosen and rejected stacked: half the kernel launches
        ids = torch.cat([m["chosen_ids"], m["rejected_ids"]])
        attn = torch.cat([m["chosen_attention_mask"], m["rejected_attention_mask"]])
        mask = torch.cat([m["chosen_mask"], m["rejected_mask"]])[:, 1:]
        seq = masked_sum(token_logprobs(model, ids, attn), mask, dim=-1)
        return seq.chunk(2)

    def plan(self, learner: Learner, batch: dict) -> StepPlan:
        if learner.ref_model is None:
            raise ValueError("DPO needs a frozen reference model (Learner(ref_model=...))")
        batch, rows = self._local(learner, batch)
        batch = self._to(batch, learner.device)
        if len(batch["chosen_ids"]):
            with torch.no_grad(), learner.autocast():   # micro-batch by micro-batch: one's activations at a time
                parts = [self._both(learner.ref_model, m) for m in split_rows(batch, learner.optim_cfg.micro_batch_size)]
            batch["ref_chosen"], batch["ref_rejected"] = (torch.cat(x) for x in zip(*parts))
        return StepPlan([self._micro(learner, batch, rows=rows)])

    def loss(self, learner: Learner, m: dict):
        pc, pr = self._both(learner.model, m)
        loss, stats = dpo_loss(pc, pr, m["ref_chosen"], m["ref_rejected"], self.beta, self.label_smoothing)
        return loss * m["weight"], stats  # dpo_loss is a row mean: weight by the micro's share


@dataclass
class DistillStage(StageBase):
    """α·CE + (1−α)·T²·KL(teacher_T ‖ student_T); the teacher is `learner.ref_model`."""
    alpha: float = 0.5
    temperature: float = 2.0
    name: str = "distill"
    max_sane_lr: float = 3e-3

    def plan(self, learner: Learner, batch: dict) -> StepPlan:
        if learner.ref_model is None:
            raise ValueError("distillation needs a teacher (Learner(ref_model=teacher))")
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return StepPlan([self._micro(learner, batch, global_tokens=tokens)])

    def loss(self, learner: Learner, m: dict):
        with torch.no_grad():
            teacher = learner.ref_model(m["input_ids"], attention_mask=m.get("attention_mask")).logits
        student = learner.model(m["input_ids"], attention_mask=m.get("attention_mask")).logits
        if teacher.shape[-1] != student.shape[-1]:
            raise ValueError(f"teacher vocab {teacher.shape[-1]} != student vocab {student.shape[-1]}")
        return distill_loss(student, teacher, shift_labels(m["labels"]), alpha=self.alpha,
                            temperature=self.temperature, global_tokens=m["global_tokens"])


@dataclass
class RewardModelStage(StageBase):
    """Bradley–Terry on the scalar head's value at the last real token (model = MiniMindScoreModel)."""
    name: str = "reward_model"
    max_sane_lr: float = 1e-3

    def plan(self, learner: Learner, batch: dict) -> StepPlan:
        return StepPlan([self._micro(learner, batch)])

    def loss(self, learner: Learner, m: dict):
        ids = torch.cat([m["chosen_ids"], m["rejected_ids"]])
        attn = torch.cat([m["chosen_attention_mask"], m["rejected_attention_mask"]])
        scores = last_token_values(learner.model(ids, attention_mask=attn), attn)
        rc, rr = scores.chunk(2)
        loss, stats = bradley_terry_loss(rc, rr)
        return loss * m["weight"], stats
