"""The loss lab's settings: where the batch comes from, how far each loss trains on it, the probe, the
mismatch report's what-ifs, and one section per loss with its paper's defaults (`--gspo.clip.eps-low`,
`--cispo.ratio-max`, ...), as the RL recipes state them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from learner.config import OptimConfig
from learner.losses import CISPOLoss, DAPOLoss, DrGRPOLoss, GRPOLoss, GSPOLoss, PPOLoss, SPOLoss
from minimind.generate import SamplingParams
from recipes.rl_config import BootstrapConfig
from reward.actor import RewardConfig
from rollout.worker import RolloutConfig

LabLossName = Literal["grpo", "dr_grpo", "dapo", "gspo", "cispo", "ppo", "spo"]
ALL_LOSSES: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "gspo", "cispo", "ppo", "spo")


@dataclass
class LabConfig:
    """Every policy loss on one frozen batch: loss, gradient and its cosines, clipping, per-token weights,
    KL to the reference, the probe accuracy after k updates; and the rollout/learner mismatch by source."""
    out_dir: str = "runs/loss_lab"
    """Where loss_lab.json/png and mismatch.json/png are written (and a small bootstrap policy, if one is built)."""
    overwrite: bool = False
    """Replace the report already in --out-dir (without it, such a folder is refused)."""
    record: str | None = None
    """A folder written by an RL recipe's --record-batches: the lab takes one of its batches (--step) with the
    weights, critic, tracker and reference of that step, and replays the step; none: sample a fresh batch."""
    step: int = 1
    """With --record: the run's step whose batch to take (1 = the first recorded step)."""
    init: str | None = None
    """Policy that samples a fresh batch (and is its reference); none: runs/grpo_math/bootstrap/sft/final if
    it is there (python experiments/grpo_math.py makes it), else a small model built into --out-dir/bootstrap."""
    prompts: int = 16
    """Prompts of a fresh batch (the built-in train split), each sampled rollout.sampling.n times."""
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(SamplingParams(n=8, max_new_tokens=40)))
    """How a fresh batch is sampled (the math RL recipes' settings); --rollout.quantize int8 samples it with
    the int8 engine."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    updates: int = 4
    """k: optimizer updates each loss makes on the batch from the same start (k epochs over it, the old
    policy fixed at the start: the ratio moves and the clipping acts from the second update on)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=0, min_lr_ratio=1.0,
                                                                   weight_decay=0.0, micro_batch_size=64))
    """The updates' AdamW (the GRPO recipe's lr and micro-batches, a constant lr)."""
    probe_size: int = 64
    """Held-out TEST problems whose greedy exact-match accuracy is the probe reward, before and after the k
    updates of each loss (0: no probe)."""
    losses: tuple[LabLossName, ...] = ALL_LOSSES
    """The losses to compare."""
    heat_rows: int = 4
    """Responses whose per-token weights the picture shows (spread from the shortest to the longest)."""
    seed: int = 0
    """Prompts, sampling, the minibatch order and the probe's problems derive from it."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    tis_cap: float = 2.0
    """Mismatch report: the cap C of the truncated importance weights min(exp(learner - rollout), C)."""
    alt_temperature: float = 0.7
    """Mismatch report: for a batch sampled at temperature 1, the gap had it been sampled at this temperature
    and scored at 1 (the temperature not applied)."""
    alt_top_p: float = 0.9
    """Mismatch report: the gap had the rollout sampled with this top-p and the learner scored the full softmax."""
    micro_sizes: tuple[int, ...] = (1, 8)
    """Mismatch report: the learner's logprobs computed in micro-batches of these sizes vs the whole batch."""
    bootstrap: BootstrapConfig = field(default_factory=lambda: BootstrapConfig(n_train=1000, pretrain_steps=100,
                                                                               sft_steps=300, sft_worked_fraction=1.0))
    """The small policy built when neither --init nor the grpo_math bootstrap is there."""
    grpo: GRPOLoss = field(default_factory=GRPOLoss)
    dr_grpo: DrGRPOLoss = field(default_factory=DrGRPOLoss)
    dapo: DAPOLoss = field(default_factory=DAPOLoss)
    gspo: GSPOLoss = field(default_factory=GSPOLoss)
    cispo: CISPOLoss = field(default_factory=CISPOLoss)
    ppo: PPOLoss = field(default_factory=PPOLoss)
    spo: SPOLoss = field(default_factory=SPOLoss)

    def __post_init__(self) -> None:
        if not self.losses or len(set(self.losses)) != len(self.losses):
            raise ValueError(f"--losses {','.join(self.losses)}: name each loss once (from {','.join(ALL_LOSSES)})")
        if self.step < 1 or self.prompts < 1 or self.updates < 1 or self.probe_size < 0 or self.heat_rows < 1:
            raise ValueError(f"--step={self.step}, --prompts={self.prompts}, --updates={self.updates} and "
                             f"--heat-rows={self.heat_rows} must be >= 1, --probe-size={self.probe_size} >= 0")
        if self.tis_cap < 1 or not 0 < self.alt_top_p <= 1 or self.alt_temperature <= 0:
            raise ValueError(f"--tis-cap={self.tis_cap} must be >= 1, --alt-top-p={self.alt_top_p} in (0, 1], "
                             f"--alt-temperature={self.alt_temperature} > 0")
        if any(m < 1 for m in self.micro_sizes):
            raise ValueError(f"--micro-sizes={self.micro_sizes}: sizes must be >= 1")

    def loss(self, name: str, budget: int) -> Any:
        """Loss `name` with its section's settings; the lengths Dr.GRPO and DAPO leave to the run are the
        batch's response budget (as GRPOMathConfig.policy_loss does)."""
        loss = getattr(self, name)
        if isinstance(loss, DrGRPOLoss) and loss.max_response_len is None:
            return replace(loss, max_response_len=budget)
        if isinstance(loss, DAPOLoss) and loss.overlong_max_len is None:
            return replace(loss, overlong_max_len=budget)
        return loss
