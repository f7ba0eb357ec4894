"""SPO stage (arXiv 2509.13232): one sample per prompt, the baseline from a persistent per-prompt
Beta tracker (read before its update), batch-normalised advantages; the tracker forgets faster when
the policy has drifted on that prompt, measured by rescoring the prompt's previous response under the
current policy. The tracker (with those responses) is checkpointed."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minimind.generate import left_pad
from contract.batch import RolloutBatch

from ..learner import Learner, StepPlan
from ..losses import CISPOLoss, GSPOLoss, SPOLoss, SPOTracker, policy_drift, spo_advantages
from .logprobs import response_logprobs
from .rl_common import RLStage, RLUpdateConfig


@dataclass
class SPOStage(RLStage):
    loss_fn: SPOLoss | CISPOLoss | GSPOLoss = field(default_factory=SPOLoss)
    """The policy objective on the tracker's advantages (one sample per prompt: no group statistics)."""
    update: RLUpdateConfig = field(default_factory=RLUpdateConfig)
    tracker: SPOTracker = field(default_factory=SPOTracker)
    seed: int = 0
    """Seed of the minibatch shuffle (the recipe derives it from the run's --seed)."""
    name: str = "spo"

    def init_tracker(self, rewards_by_key: dict[str, list[float]]) -> int:
        """Offline initialisation from a few samples per prompt (rewards clipped to [0, 1])."""
        for key, rewards in rewards_by_key.items():
            self.tracker.init_from_samples(key, [min(max(r, 0.0), 1.0) for r in rewards])
        return len(rewards_by_key)

    def state_dict(self) -> dict:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "tracker" in state:
            self.tracker.load_state_dict(state["tracker"])

    @torch.no_grad()
    def drift(self, learner: Learner, keys: list[str], temperature: float) -> torch.Tensor:
        """D [B]: each key's previous response rescored by the current policy against the logprobs it
        was sampled with (0 for a key seen for the first time)."""
        drift = torch.zeros(len(keys))
        seen = [(i, m) for i, m in enumerate(self.tracker.remembered(k) for k in keys) if m is not None]
        if not seen:
            return drift
        prompts, prompt_mask = left_pad([m[0] for _, m in seen], pad_id=0)
        R = max(len(m[1]) for _, m in seen)
        resp = torch.zeros(len(seen), R, dtype=torch.long)
        then = torch.zeros(len(seen), R)
        mask = torch.zeros(len(seen), R)
        for j, (_, (_, ids, lp)) in enumerate(seen):
            resp[j, :len(ids)], then[j, :len(lp)], mask[j, :len(ids)] = torch.tensor(ids), torch.tensor(lp), 1
        dev = learner.device
        seq = torch.cat([prompts, resp], 1).to(dev)
        attn = torch.cat([prompt_mask, mask.long()], 1).to(dev)
        learner.model.eval()
        with learner.autocast():
            now = response_logprobs(learner.model, seq, attn, R, temperature).float().cpu()
        learner.model.train()
        drift[[i for i, _ in seen]] = policy_drift(now, then, mask)
        return drift

    def plan(self, learner: Learner, batch: RolloutBatch) -> StepPlan:
        exp, stats = self.experience(learner, batch)
        keys = batch.prompt_keys
        rewards = batch.rewards.float()
        baseline = self.tracker.baseline(keys)
        # the tracker sees the raw success; the advantages see the KL-penalised reward when it is in the reward
        penalized = self.loss_fn.penalized_rewards(rewards.to(learner.device), exp.old_logp, exp.ref_logp, exp.mask)
        all_sum = learner.comm.all_sum if learner.comm.distributed else None
        exp.adv = spo_advantages(penalized, baseline, all_sum=all_sum).to(learner.device)
        drift = self.drift(learner, keys, batch.temperature) if len(batch) else torch.zeros(0)
        old = exp.old_logp.cpu()
        seen = []   # (row id, key, reward, drift, what to remember) of this rank's rows
        for i, key in enumerate(keys):
            p, r = batch.prompt_mask[i].bool(), batch.response_mask[i].bool()
            if batch.multiturn:   # remember the first turn only: later turns' contexts hold observations
                r = r & ((~r).cumsum(0) == 0)
            seen.append((int(exp.row_id[i]), key, float(rewards[i]), float(drift[i]),
                         (batch.prompt_ids[i][p].tolist(), batch.response_ids[i][r].tolist(), old[i][r].tolist())))
        # every learner rank keeps the whole tracker: it applies every rank's rows, in one learner's row order
        # (the remembered responses are small: token ids and logprobs of one response per prompt)
        rows = sorted(x for part in learner.comm.gather(seen) for x in part)
        self.tracker.update([k for _, k, *_ in rows], torch.tensor([r for _, _, r, *_ in rows]).clamp(0, 1),
                            torch.tensor([d for *_, d, _ in rows]))
        for _, key, _, _, memory in rows:
            self.tracker.remember(key, *memory)
        stats = self.batch_stats(batch, stats)
        if len(batch):
            stats.update(baseline_mean=float(baseline.mean()), drift_mean=float(drift.mean()),
                         rho_mean=float(self.tracker.rho(drift).mean()))
        return StepPlan(self.minibatches(learner, exp), stats)
