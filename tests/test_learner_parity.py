"""Two data-parallel learner ranks (gloo, two processes on this CPU) make the update one learner makes
on the same batch, for every RL stage and policy loss and every supervised stage: updated weights equal
within 1e-6 after each of two steps, and the reported loss and gradient norm too.

Each rank is the learner actor's own class (`learner.actor.LearnerWorker`: the code a Ray learner
rank runs) fed its parts of two scored batches, cut as the reward actors cut them
(`RolloutBatch.shard`, whole groups per rank); the one learner gets the whole batches. The cases
cover the three aggregation modes, minibatches with micro-batching, two epochs, the KL in the reward
and in the loss, the batch std scale, DAPO's zero-variance filter (a rank may keep no group), GSPO,
CISPO, truncated importance sampling, PPO (critic, GAE, advantage whitening over both ranks) and SPO
(tracker, batch-normalised advantages, drift rescoring on the second visit). The supervised stages (LM
for pretrain/SFT/LoRA, DPO, distillation, reward model) get 7-row batches: every rank reads the same
batch and trains its block of rows (4 and 3), micro-batches of 3.

The two ranks run in subprocesses started from this file (`python tests/test_learner_parity.py RANK
PORT OUT`); they write each case's weights after each step for the test to compare.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch


from learner.actor import LearnerWorker
from learner.config import OptimConfig
from learner.distributed import rendezvous_store
from learner.learner import Learner
from learner.losses import ClipConfig, GRPOLoss, KLConfig, PPOLoss, SPOLoss, make_policy_loss
from learner.stages import (DistillStage, DPOStage, GRPOStage, LMStage, PPOStage, RewardModelStage,
                            RLUpdateConfig, SPOStage, ZeroVarianceFilter)
from minimind.config import preset
from minimind.model import IGNORE_INDEX, MiniMindForCausalLM, MiniMindScoreModel
from contract.batch import RolloutBatch

VOCAB = 48
STEPS = 2


def _stage(case: str):
    upd = RLUpdateConfig
    cases = {
        "grpo minibatches micro-batches": lambda: GRPOStage(GRPOLoss(kl=KLConfig(coef=0.05)), upd(minibatches=2)),
        "grpo seq-mean-token-mean batch-std 2 epochs": lambda: GRPOStage(
            GRPOLoss(clip=ClipConfig(agg_mode="seq-mean-token-mean"), adv_scale="batch"), upd(epochs=2)),
        "grpo kl in reward": lambda: GRPOStage(GRPOLoss(kl=KLConfig(coef=0.1, kind="k1", in_reward=True))),
        "dr_grpo seq-mean-token-sum-norm": lambda: GRPOStage(make_policy_loss("dr_grpo"), upd(minibatches=2)),
        "dapo filter": lambda: GRPOStage(make_policy_loss("dapo", overlong_max_len=7, overlong_buffer=3),
                                         filter=ZeroVarianceFilter(max_refills=0)),
        "gspo": lambda: GRPOStage(make_policy_loss("gspo"), upd(minibatches=2)),
        "cispo": lambda: GRPOStage(make_policy_loss("cispo")),
        "grpo tis sequence": lambda: GRPOStage(GRPOLoss(), upd(tis_cap=2.0, tis_level="sequence")),
        "ppo critic whitening": lambda: PPOStage(PPOLoss(), upd(minibatches=2)),
        "spo": lambda: SPOStage(SPOLoss()),
        "sft": LMStage,
        "dpo": lambda: DPOStage(beta=0.2),
        "distill": lambda: DistillStage(alpha=0.3),
        "reward_model": RewardModelStage,
    }
    return cases[case]()


CASES = ["grpo minibatches micro-batches", "grpo seq-mean-token-mean batch-std 2 epochs", "grpo kl in reward",
         "dr_grpo seq-mean-token-sum-norm", "dapo filter", "gspo", "cispo", "grpo tis sequence",
         "ppo critic whitening", "spo", "sft", "dpo", "distill", "reward_model"]
SUPERVISED = ("sft", "dpo", "distill", "reward_model")


def make_learner(case: str) -> Learner:
    torch.manual_seed(0)
    policy = MiniMindForCausalLM(preset("tiny", vocab_size=VOCAB, dropout=0.0))
    critic = None
    if case.startswith("ppo"):
        critic = MiniMindScoreModel(policy.config)
        critic.model.load_state_dict(policy.model.state_dict())
    ref = copy.deepcopy(policy)
    if case == "reward_model":
        policy, ref = MiniMindScoreModel(policy.config), None
    elif case == "distill":   # a teacher that differs from the student
        torch.nn.init.normal_(ref.lm_head.weight, std=0.1)
    # float64: two ranks sum their gradients in another order than one learner, and Adam turns float32
    # rounding of near-zero gradients into weight differences of ~lr; in float64 what is compared is the math
    policy, critic = policy.double(), critic.double() if critic is not None else None
    optim = OptimConfig(lr=1e-4, warmup_steps=0, total_steps=10, micro_batch_size=3)
    return Learner(policy, _stage(case), optim, ref_model=ref.double() if ref is not None else None, critic=critic)


def supervised_batch(case: str, step: int) -> dict:
    """7 rows of ragged (right-padded) sequences: LM labels on a suffix, or chosen/rejected pairs."""
    g = torch.Generator().manual_seed(500 + step)
    B, T = 7, 9

    def seqs() -> tuple[torch.Tensor, torch.Tensor]:
        n = torch.randint(4, T + 1, (B,), generator=g)
        attn = (torch.arange(T).expand(B, T) < n[:, None]).long()
        return torch.randint(3, VOCAB, (B, T), generator=g) * attn, attn

    if case in ("sft", "distill"):
        ids, attn = seqs()
        labels = torch.where((attn > 0) & (torch.arange(T) >= 2), ids, torch.full_like(ids, IGNORE_INDEX))
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}
    (c, ca), (r, ra) = seqs(), seqs()
    tail = lambda a: a * (torch.arange(T) >= 2).long()  # noqa: E731  (the response part of each sequence)
    return {"chosen_ids": c, "chosen_attention_mask": ca, "chosen_mask": tail(ca),
            "rejected_ids": r, "rejected_attention_mask": ra, "rejected_mask": tail(ra)}


def scored_batches(case: str, step: int) -> list[RolloutBatch]:
    """Two scored batches (as from two rollout workers) of ragged prompts and responses; some groups
    all-correct or all-wrong (no signal). SPO: one sample per prompt, the same prompts every step."""
    g = torch.Generator().manual_seed(1000 * step + 7)
    G, groups = (1, 12) if case == "spo" else (4, 6)
    out = []
    for b in range(2):
        B = G * groups
        P, R = 5 + b, 7 - b
        plen = torch.randint(2, P + 1, (B,), generator=g)
        rlen = torch.randint(1, R + 1, (B,), generator=g)
        pos_p, pos_r = torch.arange(P).expand(B, P), torch.arange(R).expand(B, R)
        prompt_mask = (pos_p >= P - plen[:, None]).long()
        response_mask = (pos_r < rlen[:, None]).float()
        ids = lambda n: torch.randint(3, VOCAB, (B, n), generator=g)  # noqa: E731
        rewards = torch.randint(0, 2, (B,), generator=g).float()
        if G > 1:
            rewards[:G] = 1.0            # a group with no signal
        uid = torch.arange(groups).repeat_interleave(G) + 100 * b
        keys = [f"p{b}-{int(u)}" for u in uid]
        out.append(RolloutBatch(
            prompt_ids=ids(P) * prompt_mask, prompt_mask=prompt_mask, response_ids=ids(R) * response_mask.long(),
            response_mask=response_mask, logprobs=-torch.rand(B, R, generator=g) * response_mask, group_uid=uid,
            prompt_keys=keys, answers=[""] * B, response_text=[""] * B, rewards=rewards,
            row_id=(step << 40) + (b << 24) + torch.arange(B)))   # as the rollout workers number their rows
    return out


def train(worker: LearnerWorker, case: str, parts: int, rank: int) -> list[tuple[dict, dict]]:
    """STEPS steps of `case` -> (stats, weights) after each; this rank gets part `rank` of each batch
    (all of it when parts == 1)."""
    results = []
    for step in range(STEPS):
        if case in SUPERVISED:   # every rank reads the same batch (the supervised train loop)
            stats = worker.learner.train_step(supervised_batch(case, step))
            results.append(({k: stats[k] for k in ("loss", "grad_norm", "updates")}, worker.learner.weights()))
            continue
        worker.weights(step)   # the driver publishes before the rollouts sample: on-policy batches
        batches = scored_batches(case, step)
        mine = batches if parts == 1 else [b.shard(parts, i)[rank] for i, b in enumerate(batches)]
        stats = worker.train_step(*mine)
        results.append(({k: stats[k] for k in ("loss", "grad_norm", "updates")}, worker.learner.weights()))
    return results


def _rank_main(rank: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        worker = LearnerWorker(lambda: make_learner(case), threads=1, rank=rank, world_size=2)
        worker.join("127.0.0.1", port, "cpu", timeout_s=600)   # a bound against a hang only
        results[case] = train(worker, case, 2, rank)
    if rank == 0:
        torch.save(results, out / "two_ranks.pt")


@pytest.mark.slow
def test_two_ranks_update_like_one_learner_for_every_stage(tmp_path, one_thread):
    # the ranks meet at a store this process serves, on a port bound from the start (a port picked free and
    # bound later by rank 0 can be taken in between by whatever else runs on the machine)
    store = rendezvous_store("127.0.0.1", timeout_s=600)
    port = store.port
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    one = {case: train(LearnerWorker(lambda: make_learner(case), threads=1), case, 1, 0) for case in CASES}
    for p in procs:   # the one learner ran here while the ranks trained
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-4000:]
    two = torch.load(tmp_path / "two_ranks.pt", weights_only=True)
    for case in CASES:
        start = make_learner(case).weights()
        assert one[case][0][0]["updates"] > 0, case
        for step, ((s1, w1), (s2, w2)) in enumerate(zip(one[case], two[case])):
            assert s1["updates"] == s2["updates"], (case, step, s1, s2)
            for k in ("loss", "grad_norm"):
                assert abs(s1[k] - s2[k]) <= 1e-6 * max(1.0, abs(s1[k])), (case, step, k, s1, s2)
            moved = max(float((w1[k] - start[k]).abs().max()) for k in start)
            diff = max(float((w1[k] - w2[k]).abs().max()) for k in start)
            assert moved > 5e-5, (case, step, moved)          # the update did something (~lr per Adam step)
            assert diff <= 1e-6, (case, step, diff)

if __name__ == "__main__":
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
