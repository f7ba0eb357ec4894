"""The math RL recipes' settings: one base with what every algorithm shares, one subclass per
algorithm with its own loss section and its defaults as dataclass values (so `--help` prints the
values the run uses). Every option is stated once: sampling in `rollout.sampling`, the optimiser in
`optim`, clip and KL inside each loss, the update schedule in `update`."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, Callable, ClassVar, Literal

from learner.config import OptimConfig
from learner.distributed import LearnerGroupConfig
from learner.losses import (CISPOLoss, ClipConfig, DAPOLoss, DrGRPOLoss, GRPOLoss, GSPOLoss, KLConfig, PolicyLossName,
                            PPOLoss, SPOLoss, SPOTracker, dynamic_sampling)
from learner.stages import GRPOStage, PPOStage, RLUpdateConfig, SPOStage, ZeroVarianceFilter
from minimind.checkpoint import PthOptions
from minimind.generate import SamplingParams
from reward.actor import RewardConfig
from recipes.driver import DriverConfig
from recipes.seeds import derive_seed
from rollout.worker import RolloutConfig


@dataclass
class BootstrapConfig:
    preset: str = "demo"
    """Model preset of the bootstrapped policy."""
    n_train: int = 4000
    """Built-in training problems for pretrain/SFT."""
    pretrain_steps: int = 300
    """Pretraining updates (batch 16 x 128 tokens)."""
    sft_steps: int = 3000
    """SFT updates (batch 32; fewer leave the demo model before its arithmetic phase change, which comes
    later the fewer answers show their steps: around update 2000-2500 at the default share)."""
    sft_lr: float = 2e-3
    """SFT peak learning rate."""
    sft_difficulties: tuple[int, ...] = (1, 2, 3, 4)
    """Difficulty levels SFT demonstrates (pretraining reads every level as plain
    text; RL prompts and the held-out set span every level, whatever SFT left out is learnt from the
    verifier alone)."""
    sft_worked_fraction: float = 0.4
    """Share of the SFT chats that show the worked steps; the others answer "#### N" alone (pretraining
    text always shows them). Below one half, the SFT policy's greedy answer is mostly the bare number,
    which it gets wrong on multi-step problems, while its samples still show the steps now and then:
    RL learns from the verifier alone that working it out pays (docs/results.md)."""
    sft_eval_every: int = 250
    """SFT's held-out curve (every level) every this many updates, in bootstrap/sft/metrics.jsonl."""


INT8_TIS_CAP = 2.0
"""--update.tis-cap an int8 rollout gets when the cap is left at none."""


def _math_rollout(n: int) -> RolloutConfig:
    """The math recipes' sampling, stated once for GRPO, PPO and SPO: n per prompt, 40 new tokens."""
    return RolloutConfig(SamplingParams(n=n, max_new_tokens=40))


def _optim() -> OptimConfig:
    # cosine to 10%: a constant lr leaves the last policy wherever the noise of its final steps put it.
    # Micro-batches of 64 rows: the same gradient (token counts are global), but the learner holds the
    # activations of 64 samples instead of the whole step's 256 (demo preset: peak 2.3 -> 1.2 GB)
    return OptimConfig(lr=1e-4, warmup_steps=0, min_lr_ratio=0.1, weight_decay=0.0, micro_batch_size=64)


@dataclass
class MathRLConfig:
    """What every math RL recipe shares (see GRPOMathConfig, PPOMathConfig, SPOMathConfig)."""
    algo: ClassVar[str] = "rl"
    response_budget_field: ClassVar[str] = "rollout.sampling.max_new_tokens"
    """The setting that bounds a whole response: one turn's cap here; a multi-turn recipe names its
    episode budget (Dr.GRPO's and DAPO's lengths derive from it)."""

    run_dir: str = "runs/grpo_math"
    """Output folder (metrics.jsonl, curves.png, summary.json, final/, checkpoint/, bootstrap/)."""
    init: str | None = None
    """Starting policy: a checkpoint folder or a MiniMind .pth; none = bootstrap a small model."""
    tokenizer: str | None = None
    """Tokenizer folder; none = the one next to --init (or the bootstrap's)."""
    dataset: str | None = None
    """RL prompts: GSM8K-style jsonl/parquet ({question|prompt, answer}); none = built-in math."""
    test_dataset: str | None = None
    """Held-out prompts in the same format; none = the built-in TEST split."""
    n_prompts: int = 4000
    """Built-in RL training prompts."""
    max_prompt_tokens: int | None = None
    """Longer prompts are dropped when the data is read (counted, reported in skipped_lines.jsonl);
    none: the policy's context minus the response budget."""
    truncate_long_prompts: bool = False
    """Cut over-long prompts from the left instead of dropping them."""
    eval_size: int = 1000
    """Held-out prompts for the before/after accuracy (0 skips the evaluation)."""
    eval_samples: int = 8
    """Also measure the policy's own accuracy (pass@1 as mean@k): this many samples per held-out
    prompt at the rollout temperature (0 = greedy accuracy only)."""
    rollout_workers: int = 1
    """RolloutActor count (prompts are split across them)."""
    reward_workers: int = 1
    """RewardActor count."""
    address: str | None = None
    """Ray address: none starts a local Ray (loopback only); 'auto' joins the cluster of `ray up` / `ray start`."""
    dashboard: bool = True
    """Start the Ray dashboard (local Ray only)."""
    dashboard_host: str = "127.0.0.1"
    """Dashboard bind address; 0.0.0.0 exposes it on the network (only if you mean to)."""
    device: str = "auto"
    """auto: cuda if visible here or the Ray cluster has GPUs (actors share one GPU with fractional
    num_gpus), else cpu."""
    learner_resources: dict = field(default_factory=dict)
    """Custom Ray resources the learner actor requires, e.g. '{"head_node": 0.1}'."""
    rollout_resources: dict = field(default_factory=dict)
    """Custom Ray resources each rollout actor requires, e.g. '{"worker_node": 0.1}'."""
    threads: int = 0
    """torch threads per actor on CPU (0 = all cores: rollout and learning alternate on-policy)."""
    seed: int = 0
    """The run's one seed: model init, prompt order, each rollout worker's sampling, minibatch order
    and the built-in data all derive their own seeds from it."""
    resume: bool = False
    """Continue from <run_dir>/checkpoint (learner, optimizer, SPO tracker, prompt position, seeds)."""
    overwrite: bool = False
    """Replace the earlier run in run_dir (checkpoint, metrics, final model, summary; the bootstrap cache is
    kept); without this or --resume a run_dir holding one is refused."""
    progress: bool = True
    """Show a progress bar."""
    plot_every: int = 10
    """Redraw <run_dir>/curves.png every this many steps while the run trains (0: only at the end)."""
    prometheus: bool = False
    """Start a local Prometheus (Debian's `prometheus` binary, apt install prometheus) on 127.0.0.1 that
    scrapes this run's Ray metrics (the ray_minimind_* gauges); local Ray only."""
    prometheus_port: int = 9090
    """With --prometheus: its port on 127.0.0.1."""
    serve: bool = False
    """Live policy view: serve the policy (OpenAI-compatible API and chat page, see docs/serving.md) while
    it trains, its weights pushed from the learner's weights ref (never from disk)."""
    serve_every: int = 10
    """With --serve: push the policy's weights to the server every this many versions (and at the end)."""
    serve_host: str = "127.0.0.1"
    """With --serve: bind address (0.0.0.0 exposes it on the network)."""
    serve_port: int = 8000
    """With --serve: HTTP port."""
    record_batches: str | None = None
    """Record every batch the learner trains on into this folder, with the weights it starts from, the
    run's config and its starting policy, for experiments/loss_lab.py --record DIR (one learner rank)."""
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    pth: PthOptions = field(default_factory=PthOptions)
    optim: OptimConfig = field(default_factory=_optim)
    rollout: RolloutConfig = field(default_factory=lambda: _math_rollout(8))
    reward: RewardConfig = field(default_factory=RewardConfig)
    driver: DriverConfig = field(default_factory=DriverConfig)
    learner: LearnerGroupConfig = field(default_factory=LearnerGroupConfig)
    # one update per rollout batch: on the demo model 4 minibatches of 64 samples made Adam steps of
    # mostly noise and lost greedy held-out accuracy in every run
    update: RLUpdateConfig = field(default_factory=RLUpdateConfig)

    loss_sections: ClassVar[dict[str, Callable[[], Any]]] = {}
    """--loss NAME -> the default of its section (the field of the same name); empty: one loss."""

    def __post_init__(self) -> None:
        if self.loss_sections:
            self.check_loss_sections()
        if self.rollout_workers < 1 or self.reward_workers < 1:
            raise ValueError(f"--rollout-workers={self.rollout_workers} and --reward-workers="
                             f"{self.reward_workers} must be >= 1")
        if self.serve_every < 1:
            raise ValueError(f"--serve-every={self.serve_every} must be >= 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"--max-prompt-tokens={self.max_prompt_tokens} must be >= 1 (or none)")
        if self.record_batches and self.learner.world_size > 1:
            raise ValueError(f"--record-batches records the batch of one learner rank: --learner.world-size="
                             f"{self.learner.world_size} splits each batch over ranks; record with one rank")
        if self.eval_size < 0 or self.eval_samples < 0 or self.n_prompts < 1:
            raise ValueError(f"--eval-size={self.eval_size} and --eval-samples={self.eval_samples} must be "
                             f">= 0, --n-prompts={self.n_prompts} >= 1")

    @property
    def run_update(self) -> RLUpdateConfig:
        """--update as the run applies it: an int8 rollout samples from a slightly different policy than
        the fp32 learner trains, so it is corrected unless the user chose a cap (or 0, off)."""
        u = self.update
        if self.rollout.quantize == "int8" and u.tis_cap is None and not u.use_rollout_logprobs:
            return replace(u, tis_cap=INT8_TIS_CAP)
        return u

    def resolved(self) -> "MathRLConfig":
        """A copy with every setting left to the run (`none`) made explicit: what config.json records.
        Fields are never rewritten in place (`__post_init__` only validates)."""
        return replace(self, update=self.run_update, **{self.loss_name: self.policy_loss})

    @property
    def response_budget(self) -> int:
        """The longest response a rollout returns (the value of response_budget_field)."""
        return attrgetter(self.response_budget_field)(self)

    @property
    def updates(self) -> int:
        """Optimizer updates of the whole run (the lr schedule spans them)."""
        return self.driver.steps * self.update.epochs * self.update.minibatches

    @property
    def loss_name(self) -> str:
        """The loss the run trains with (the algorithm's own unless --loss chose another)."""
        return getattr(self, "loss", self.algo)

    @property
    def policy_loss(self) -> Any:
        """The loss section the run trains with (its `kl` says whether a reference model is needed)."""
        return getattr(self, self.loss_name)

    def check_loss_sections(self) -> None:
        """Only the --loss section may differ from its defaults: a flag of another loss's section would
        be ignored silently."""
        for name, default in self.loss_sections.items():
            if name != self.loss_name and getattr(self, name) != default():
                flag = name.replace("_", "-")
                raise ValueError(f"--{flag}.* settings are given but --loss is {self.loss_name}, which trains with "
                                 f"the --{self.loss_name.replace('_', '-')}.* section: pass --loss {name} "
                                 f"(or drop the --{flag}.* flags)")

    def stage(self) -> Any:
        """The learner stage of this algorithm."""
        raise NotImplementedError

    def update_seed(self) -> int:
        return derive_seed(self.seed, "update")


def _grpo_loss() -> GRPOLoss:
    return GRPOLoss(clip=ClipConfig(eps_high=0.28), kl=KLConfig(coef=0.01))


@dataclass
class GRPOMathConfig(MathRLConfig):
    """GRPO on verifiable math: G samples per prompt, group-normalised advantages."""
    algo: ClassVar[str] = "grpo"
    loss_sections: ClassVar[dict[str, Callable[[], Any]]] = {
        "grpo": _grpo_loss, "dr_grpo": DrGRPOLoss, "dapo": DAPOLoss, "gspo": GSPOLoss, "cispo": CISPOLoss}
    loss: PolicyLossName = "grpo"
    """Policy loss: grpo, dr_grpo (arXiv 2503.20783), dapo (2503.14476), gspo (2507.18071) or cispo
    (2506.13585, MiniMind-3's). The run trains with that loss's section below (--grpo.*, --dr-grpo.*,
    --dapo.*, --gspo.*, --cispo.*, each with its paper's defaults); the other sections must stay at
    their defaults. See docs/policy_losses.md."""
    grpo: GRPOLoss = field(default_factory=_grpo_loss)
    dr_grpo: DrGRPOLoss = field(default_factory=DrGRPOLoss)
    dapo: DAPOLoss = field(default_factory=DAPOLoss)
    gspo: GSPOLoss = field(default_factory=GSPOLoss)
    cispo: CISPOLoss = field(default_factory=CISPOLoss)
    filter_zero_variance: bool | None = None
    """Drop groups whose rewards are all equal and refill the batch with new prompts; none: on for
    --loss dapo (its dynamic sampling), off otherwise."""

    def __post_init__(self) -> None:
        super().__post_init__()
        budget, flag = self.response_budget, "--" + self.response_budget_field.replace("_", "-")
        given = self.dr_grpo.max_response_len
        if self.loss == "dr_grpo" and given is not None and given < budget:
            raise ValueError(f"--dr-grpo.max-response-len={given} is below {flag}={budget}, "
                             f"the longest response the rollout returns: leave it at none to use {flag}")

    @property
    def policy_loss(self) -> Any:
        """The --loss section as the run trains with it: Dr.GRPO's and DAPO's constant lengths left at
        none are the response budget."""
        loss, budget = getattr(self, self.loss), self.response_budget
        if self.loss == "dr_grpo" and loss.max_response_len is None:
            return replace(loss, max_response_len=budget)
        if self.loss == "dapo" and loss.overlong_max_len is None:
            return replace(loss, overlong_max_len=budget)
        return loss

    @property
    def filters_zero_variance(self) -> bool:
        """--filter-zero-variance as the run applies it (none: the loss's own dynamic sampling)."""
        if self.filter_zero_variance is None:
            return dynamic_sampling(self.policy_loss)
        return self.filter_zero_variance

    def resolved(self) -> "GRPOMathConfig":
        return replace(super().resolved(), filter_zero_variance=self.filters_zero_variance)

    def stage(self) -> GRPOStage:
        return GRPOStage(loss_fn=self.policy_loss, update=self.run_update, seed=self.update_seed(),
                         filter=ZeroVarianceFilter() if self.filters_zero_variance else None)


@dataclass
class PPOMathConfig(MathRLConfig):
    """PPO on verifiable math: a critic as the baseline, GAE, KL in the per-token reward."""
    algo: ClassVar[str] = "ppo"
    # ~256 sampled responses per step like GRPO: 64 prompts x 4 (the critic is the baseline, groups
    # are not needed); a step costs more (critic), so 60 steps keep the wall time near GRPO's
    run_dir: str = "runs/ppo_math"
    rollout: RolloutConfig = field(default_factory=lambda: _math_rollout(4))
    driver: DriverConfig = field(default_factory=lambda: DriverConfig(steps=60, prompts_per_step=64, eval_every=10))
    update: RLUpdateConfig = field(default_factory=lambda: RLUpdateConfig(minibatches=4))
    ppo: PPOLoss = field(default_factory=PPOLoss)

    def stage(self) -> PPOStage:
        return PPOStage(loss_fn=self.policy_loss, update=self.run_update, seed=self.update_seed())


@dataclass
class SPOMathConfig(MathRLConfig):
    """SPO on verifiable math: one sample per prompt, a persistent per-prompt Beta tracker baseline,
    prompts sampled where the policy is most uncertain."""
    algo: ClassVar[str] = "spo"
    run_dir: str = "runs/spo_math"
    rollout: RolloutConfig = field(default_factory=lambda: _math_rollout(1))
    driver: DriverConfig = field(default_factory=lambda: DriverConfig(steps=60, prompts_per_step=256, eval_every=10))
    loss_sections: ClassVar[dict[str, Callable[[], Any]]] = {"spo": SPOLoss, "cispo": CISPOLoss, "gspo": GSPOLoss}
    loss: Literal["spo", "cispo", "gspo"] = "spo"
    """Policy objective on SPO's tracker advantages: spo (the clipped ratio), cispo (clipped IS weight,
    every token keeps its gradient) or gspo (sequence ratio). Dr.GRPO and DAPO change group statistics
    (std scaling, dynamic sampling of groups): SPO has no groups, so they are not offered here."""
    spo: SPOLoss = field(default_factory=SPOLoss)
    cispo: CISPOLoss = field(default_factory=CISPOLoss)
    gspo: GSPOLoss = field(default_factory=GSPOLoss)
    d_half: float = 0.06
    """Tracker: policy drift D that halves the tracker's memory (rho = 2^(-D/d_half), clipped)."""
    rho_min: float = 0.875
    """Tracker: fastest forgetting (an effective window of 1/(1-rho_min) observations)."""
    rho_max: float = 0.96
    """Tracker: slowest forgetting."""
    init_samples: int = 4
    """Offline samples per prompt that initialise the tracker."""
    prompts: int = 1024
    """Size of the prompt pool (every prompt gets a tracker initialised offline)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rollout.sampling.n != 1:
            raise ValueError(f"SPO samples one response per prompt: --rollout.sampling.n={self.rollout.sampling.n}")
        SPOTracker(self.d_half, self.rho_min, self.rho_max)  # validates the tracker settings

    def stage(self) -> SPOStage:
        return SPOStage(loss_fn=self.policy_loss, update=self.run_update, seed=self.update_seed(),
                        tracker=SPOTracker(self.d_half, self.rho_min, self.rho_max))
