"""ServeConfig: what `experiments/serve.py` and `serving.app.start` take (flags are built from it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .engine import EngineConfig


@dataclass
class ServeConfig:
    model: str | None = None
    """Checkpoint folder (save_model / a recipe's final folder, tokenizer inside) or its model.safetensors."""
    init: str | None = None
    """A MiniMind .pth state dict (config inferred from shapes, or a config.json beside it); needs --tokenizer."""
    tokenizer: str | None = None
    """Tokenizer folder (tokenizer.json); default: the --model folder."""
    name: str | None = None
    """Model name in /v1/models and the `model` field; default: the checkpoint folder's name."""
    host: str = "127.0.0.1"
    """Address the HTTP server binds; 127.0.0.1 keeps it on this machine (0.0.0.0 exposes it)."""
    port: int = 8000
    """HTTP port."""
    engine: Literal["native", "vllm"] = "native"
    """native: this project's continuous-batching engine; vllm: the project's vLLM backend (must be installed)."""
    device: str = "cpu"
    """Device of each replica's model (cpu or cuda)."""
    replicas: int = 1
    """Fixed number of replicas (ignored when --max-replicas is set: autoscaling)."""
    min_replicas: int = 1
    """Autoscaling lower bound (only with --max-replicas)."""
    max_replicas: int | None = None
    """Autoscaling upper bound; set it to let Ray Serve scale replicas with the load."""
    target_ongoing_requests: float = 32.0
    """Autoscaling target of requests in flight per replica."""
    max_ongoing_requests: int = 256
    """Requests one replica accepts at once (beyond that Serve queues them)."""
    num_cpus: float = 1.0
    """CPUs Ray reserves for each replica."""
    num_gpus: float = 0.0
    """GPUs Ray reserves for each replica (a fraction shares one GPU)."""
    max_n: int = 8
    """Most choices (`n`) one request may ask for."""
    default_max_tokens: int = 256
    """Completion length when a request gives no max_tokens."""
    batch: EngineConfig = field(default_factory=EngineConfig)
    """Continuous batching bounds of each replica."""
    ray_address: str | None = None
    """Ray cluster to run on ('auto' = the one `ray up` / `ray start` runs); None starts a local Ray."""
    app_name: str = "minimind"
    """Ray Serve application name (one per served model)."""

    def check_source(self) -> None:
        """A checkpoint to load is named (not needed when `serving.app.start` gets a model object)."""
        if (self.model is None) == (self.init is None):
            raise ValueError("give exactly one of --model (checkpoint folder) or --init (MiniMind .pth)")
        if self.init is not None and self.tokenizer is None:
            raise ValueError(f"--init {self.init}: a .pth has no tokenizer, pass --tokenizer <folder>")

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas {self.replicas}: must be >= 1")
        if self.max_replicas is not None and not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"--min-replicas {self.min_replicas} / --max-replicas {self.max_replicas}: "
                             "need 1 <= min <= max")
        if not 1 <= self.max_n <= self.batch.max_batch_size:
            raise ValueError(f"--max-n {self.max_n}: must be in [1, --batch.max-batch-size "
                             f"{self.batch.max_batch_size}]")
        if self.default_max_tokens < 1:
            raise ValueError(f"--default-max-tokens {self.default_max_tokens}: must be >= 1")
