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


def packs(wanted: torch.Tensor, *models: nn.Module) -> bool:
    """Whether a loss at the `wanted` positions [B, T] of `models` runs packed (MiniMindModel.hidden_at).
    MoE models never do: their load-balance loss is per padded row, as MiniMind computes it."""
    dense = all(isinstance(m, MiniMindForCausalLM) and not m.config.use_moe for m in models)
    return dense and float(wanted.float().mean()) < PACK_BELOW


def labelled_logits(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor | None, target: torch.Tensor,
                    packed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits, their targets, MoE aux loss) for next-token targets [B, T] (-100: no label): packed, only
    the labelled positions ([N, V] and [N]); else every position ([B, T, V] and the targets as given)."""
    if packed:
        wanted = target != IGNORE_INDEX
        h, aux = model.model.hidden_at(ids, attn, wanted)
        return model.lm_head(h), target[wanted], aux
    out = model(ids, attention_mask=attn)
    return out.logits, target, out.aux_loss


def sequence_logprobs(model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] sum of log p(ids[:, t]) over the positions t where `mask` [B, T] is 1 (a response)."""
    target = shift_labels(ids.masked_fill(mask == 0, IGNORE_INDEX))
    wanted = target != IGNORE_INDEX
    logits, target, _ = labelled_logits(model, ids, attn, target, packs(wanted, model))
    lp = logprobs_from_logits(logits.float(), target.clamp_min(0))
    if lp.dim() == 1:                              # packed: sum each row's positions
        return lp.new_zeros(len(ids)).index_add(0, wanted.nonzero()[:, 0], lp)
    return masked_sum(lp, wanted, dim=-1)


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
        target = shift_labels(m["labels"])
        logits, target, aux = labelled_logits(learner.model, m["input_ids"], m.get("attention_mask"), target,
                                              packs(target != IGNORE_INDEX, learner.model))
        loss, stats = lm_loss(logits, target, global_tokens=m["global_tokens"])
        if aux is not None and aux.requires_grad:
            loss = loss + aux * m["weight"]  # MoE load balance, row-weighted like the CE
            stats["aux_loss"] = float(aux.detach())
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
        mask = torch.cat([m["chosen_mask"], m["rejected_mask"]])
        return sequence_logprobs(model, ids, attn, mask).chunk(2)

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
        ids, attn, target = m["input_ids"], m.get("attention_mask"), shift_labels(m["labels"])
        packed = packs(target != IGNORE_INDEX, learner.model, learner.ref_model)
        with torch.no_grad():
            teacher, _, _ = labelled_logits(learner.ref_model, ids, attn, target, packed)
        student, target, _ = labelled_logits(learner.model, ids, attn, target, packed)
        if teacher.shape[-1] != student.shape[-1]:
            raise ValueError(f"teacher vocab {teacher.shape[-1]} != student vocab {student.shape[-1]}")
        return distill_loss(student, teacher, target, alpha=self.alpha,
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
