"""Typed settings of the supervised recipes (pretrain, SFT, LoRA, DPO, distillation, reward model).
The optimiser is one nested section (`--optim.lr`), as in the RL recipes; each recipe states its own
defaults as dataclass values, so `--help` prints what the run uses."""
from __future__ import annotations

from dataclasses import dataclass, field

from minimind.checkpoint import PthOptions

from learner.config import OptimConfig
from learner.distributed import LearnerGroupConfig


MICRO_BATCH_ROWS = 8
"""Rows per forward/backward in every supervised recipe (the same gradient as the whole batch): the learner
holds one micro-batch of activations at a time. SFT at 32 x 256 tokens: demo 1,108 -> 605 MB peak,
minimind2-small 4.6 -> 2.1 GB, step time unchanged on 2 CPU cores."""


def _optim(lr: float, warmup_steps: int) -> OptimConfig:
    return OptimConfig(lr=lr, warmup_steps=warmup_steps, micro_batch_size=MICRO_BATCH_ROWS)


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
    difficulties: tuple[int, ...] = (1, 2, 3, 4)
    """Built-in synthetic math: keep these difficulty levels (1-4, minimind/data/synthetic_math.py) of those
    problems (the same problems whatever the levels: fewer levels train on a subset)."""
    worked_fraction: float = 1.0
    """Built-in synthetic math: share of the SFT chats whose answer shows the worked steps; the others
    answer "#### N" alone (pretraining and DPO text always show the steps)."""
    steps: int = 300
    """Optimizer updates (the cosine schedule spans exactly these)."""
    batch_size: int = 32
    """Rows per optimizer update."""
    seq_len: int = 256
    """Pretrain block length / maximum SFT and DPO sequence length."""
    label_turn_newline: bool | None = None
    """Also label the newline after each assistant <|im_end|> (MiniMind's own SFT/DPO labelling); none:
    on when --init is a MiniMind .pth, off otherwise."""
    pth: PthOptions = field(default_factory=PthOptions)
    optim: OptimConfig = field(default_factory=lambda: _optim(1e-3, 20))
    """AdamW, schedule (the cosine spans `steps` unless optim.total_steps is set), clipping,
    micro-batching, the non-finite guard."""
    checkpoint_every: int = 100
    """Save run_dir/checkpoint every this many updates (and at the end)."""
    resume: bool = False
    """Continue from run_dir/checkpoint exactly where it stopped."""
    overwrite: bool = False
    """Replace the earlier run in run_dir (its checkpoint, metrics, final model); without this or
    --resume a run_dir holding one is refused."""
    seed: int = 0
    """Seed for model init, data order, dropout and the synthetic data."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    learner: LearnerGroupConfig = field(default_factory=LearnerGroupConfig)
    """Data-parallel learner ranks (--learner.world-size N: N Ray actors on a local loopback Ray, each
    training its share of every batch; one learner's update)."""
    progress: bool = True
    """Show a progress bar."""
    plot_every: int = 100
    """Redraw run_dir/curves.png every this many updates (0: only at the end)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "n_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.plot_every < 0:
            raise ValueError(f"--plot-every={self.plot_every} must be >= 0")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        if not self.difficulties or set(self.difficulties) - {1, 2, 3, 4}:
            raise ValueError(f"--difficulties {' '.join(map(str, self.difficulties))}: levels are 1, 2, 3 and 4")
        if not 0 <= self.worked_fraction <= 1:
            raise ValueError(f"--worked-fraction={self.worked_fraction} must be in [0, 1]")


@dataclass
class EvalConfig:
    eval_n: int = 200
    """Held-out TEST-split problems (every difficulty) answered greedily at the end (0 skips the evaluation)."""
    eval_every: int = 0
    """Also every this many updates: eval_accuracy and eval_accuracy_d<level> in metrics.jsonl and the
    curves, to see where training converges (0: only at the end)."""
    max_new_tokens: int = 48
    """Longest generated answer in the evaluation."""


@dataclass
class PretrainConfig(RecipeConfig):
    """Pretrain a MiniMind model from scratch (next-token prediction on packed text)."""
    run_dir: str = "runs/pretrain"
    optim: OptimConfig = field(default_factory=lambda: _optim(2e-3, 20))
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    dropout: float = 0.0
    """Dropout of the new model."""
    per_line: bool = False
    """MiniMind's pretrain layout: each line is [bos] + text + [eos], then padding (default: lines packed
    into seq_len blocks, nothing padded)."""


@dataclass
class SFTConfig(RecipeConfig, EvalConfig):
    """Supervised fine-tuning on chats (loss on assistant tokens only)."""
    run_dir: str = "runs/sft"
    optim: OptimConfig = field(default_factory=lambda: _optim(2e-3, 20))
    init: str = "runs/pretrain/final"
    """Starting model: a save_model folder (e.g. the pretrain output) or a MiniMind .pth."""
    # measured on the demo preset: 200 steps at 1e-3 -> 3.5% held-out, 1200 at 2e-3 -> 20-65%:
    # the model learns to copy operands, then arithmetic, only after ~1000 updates, and when that
    # happens moves with tiny numeric changes; 2000 steps -> 73.5% / 77.8% (seeds 1 / 0)
    steps: int = 2000


@dataclass
class LoRARecipeConfig(RecipeConfig, EvalConfig):
    """LoRA fine-tuning: only low-rank adapters train; saves the adapters and the merged model."""
    run_dir: str = "runs/lora"
    optim: OptimConfig = field(default_factory=lambda: _optim(2e-3, 20))
    init: str = "runs/sft/final"
    """Base model (a save_model folder or a MiniMind .pth)."""
    steps: int = 200
    rank: int = 8
    """Adapter rank."""
    alpha: float = 16.0
    """Adapter scale is alpha / rank."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Linear layers to adapt."""


@dataclass
class DPOConfig(RecipeConfig, EvalConfig):
    """Direct Preference Optimization against a frozen copy of the starting model."""
    run_dir: str = "runs/dpo"
    optim: OptimConfig = field(default_factory=lambda: _optim(5e-5, 10))
    init: str = "runs/sft/final"
    """Policy and reference model (a save_model folder or a MiniMind .pth)."""
    steps: int = 100
    batch_size: int = 16
    beta: float = 0.1
    """DPO temperature beta."""
    label_smoothing: float = 0.0
    """Conservative-DPO epsilon (0 = plain DPO)."""


@dataclass
class DistillConfig(RecipeConfig, EvalConfig):
    """Distil a teacher into a smaller student on the SFT chats."""
    run_dir: str = "runs/distill"
    optim: OptimConfig = field(default_factory=lambda: _optim(2e-3, 20))
    teacher: str = "runs/sft/final"
    """Teacher model (a save_model folder or a MiniMind .pth)."""
    preset: str = "tiny"
    init: str | None = None
    """Optional student starting checkpoint; none = a fresh model of `preset` with the teacher's vocabulary."""
    steps: int = 400
    alpha: float = 0.5
    """Weight of the hard-label CE (1 - alpha goes to the KL to the teacher)."""
    temperature: float = 2.0
    """Softmax temperature of the KL term."""


@dataclass
class RewardModelConfig(RecipeConfig):
    """Bradley-Terry reward model: a score model initialised from the SFT trunk, trained on preference pairs."""
    run_dir: str = "runs/reward_model"
    optim: OptimConfig = field(default_factory=lambda: _optim(3e-4, 20))
    init: str = "runs/sft/final"
    """Trunk to start from (a save_model folder or a MiniMind .pth)."""
    steps: int = 150
    batch_size: int = 16
    eval_n: int = 200
    """Held-out TEST-split preference pairs scored at the end (0 skips)."""
