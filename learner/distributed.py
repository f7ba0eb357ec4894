"""Data-parallel learner ranks: one torch.distributed rank per learner actor (gloo on CPU, NCCL on
CUDA), every rank holding the whole model and optimizer, each training on its own rows.

The math stays that of one learner: stages normalise losses by counts summed over ranks (so the
per-rank losses add up to the one-learner loss), batch-wide statistics (advantage whitening, the
batch std, SPO's normalisation) are computed from sums over ranks, and `reduce_grads` sums the
gradients before clipping and the optimizer step, so every rank takes the same step. A world of one
is `Comm()`: every collective is the identity and nothing else changes.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

PlacementName = Literal["pack", "spread"]


@dataclass
class LearnerGroupConfig:
    """The learner group: how many data-parallel ranks and where they go."""
    world_size: int = 1
    """Learner ranks (one torch.distributed rank and one Ray actor each; with CUDA one GPU each). The
    update is the one learner's update on the same batch, each rank computing its share of the rows."""
    placement: PlacementName = "pack"
    """Ray placement group strategy of the ranks: pack (as few nodes as fit) or spread (one per node
    where possible)."""
    timeout_s: float = 600.0
    """With several ranks: a learner step (or a collective) waiting longer than this counts as a dead
    rank (a dead rank itself is reported by Ray at once)."""
    restarts: int = 3
    """Times a run restarts a learner group whose rank died, from the last checkpoint (RL recipes)."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"--learner.world-size={self.world_size} must be >= 1")
        if self.placement not in ("pack", "spread"):
            raise ValueError(f"--learner.placement={self.placement!r}: choose pack or spread")
        if self.timeout_s <= 0 or self.restarts < 0:
            raise ValueError(f"--learner.timeout-s={self.timeout_s} must be > 0 and --learner.restarts="
                             f"{self.restarts} >= 0")


def backend_for(device: str | torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rendezvous_store(host: str, timeout_s: float) -> Any:
    """The group's meeting point: a TCPStore served by this process (rank 0's) on a port the kernel
    picks as it binds it. A port found free, released and bound later can be taken in between by any
    process on the machine (another run's Ray opens connections all the time); this one never is.
    The ranks join it with init_comm(..., store.port), rank 0 passing the store itself."""
    import torch.distributed as dist

    return dist.TCPStore(host, 0, None, True, datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


@dataclass
class Comm:
    """This learner's place in its data-parallel group, and the collectives the stages use."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seconds: float = 0.0
    """Time spent in collectives since the last `take_seconds()`."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ collectives
    def _reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        import torch.distributed as dist

        t0 = time.perf_counter()
        out = t.detach().to(self.device, copy=True)
        dist.all_reduce(out, op=op)
        self.seconds += time.perf_counter() - t0
        return out.to(t.device)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks (a copy; `t` itself on a world of one)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        return self._reduce(t, dist.ReduceOp.SUM)

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        if not self.distributed:
            return t
        import torch.distributed as dist

        return self._reduce(t, dist.ReduceOp.MAX)

    def sum_floats(self, *values: float) -> list[float]:
        """Python numbers summed over ranks (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        return self.all_sum(torch.tensor(values, dtype=torch.float64)).tolist()

    def max_int(self, value: int) -> int:
        if not self.distributed:
            return int(value)
        return int(self.all_max(torch.tensor([value], dtype=torch.int64)).item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (small things only: stats, keys, row ids)."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        t0 = time.perf_counter()
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        self.seconds += time.perf_counter() - t0
        return out

    def reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over ranks in one flat all-reduce. A parameter no rank
        touched keeps grad None (the optimizer skips it, as it would on one learner); one that some
        rank touched gets the sum (zeros from the others)."""
        if not self.distributed:
            return
        sizes = [p.numel() for p in params]
        total = sum(sizes)   # the has-grad flags follow the gradients
        flat = torch.zeros(total + len(params), dtype=torch.float32, device=self.device)
        offset = 0
        for p, n in zip(params, sizes):
            if p.grad is not None:
                flat[offset:offset + n] = p.grad.reshape(-1)
            offset += n
        flat[offset:] = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        flat = self.all_sum(flat)
        offset = 0
        for i, (p, n) in enumerate(zip(params, sizes)):
            if flat[total + i] > 0:
                g = flat[offset:offset + n].view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n

    def take_seconds(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s

    # ------------------------------------------------------------------ rows
    def shard(self, n: int) -> slice:
        """This rank's contiguous block of `n` rows (sizes differ by at most one)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def positions(self, row_id: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(position of each local row in the step's whole batch [B_local], whole batch size): the
        whole batch is every rank's rows ordered by row id, which is one learner's row order."""
        if not self.distributed:
            return torch.arange(len(row_id)), len(row_id)
        every = torch.cat([torch.as_tensor(ids, dtype=torch.int64) for ids in self.gather(row_id.cpu().tolist())])
        order = torch.sort(every).values
        return torch.searchsorted(order, row_id.cpu()), len(order)


def init_comm(rank: int, world_size: int, address: str, port: int, device: str | torch.device,
              timeout_s: float, store: Any = None) -> Comm:
    """Join the group's process group at the rendezvous store on address:port (`store`: that store, in
    the process that serves it); blocks until every rank has joined."""
    dev = torch.device(device)
    if world_size == 1:
        return Comm(device=dev)
    import torch.distributed as dist

    if address in ("127.0.0.1", "localhost") and backend_for(dev) == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")   # loopback cluster: gloo talks over lo only
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():   # this process already holds its rank (a learner rebuilt in place)
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(f"this process is rank {dist.get_rank()} of {dist.get_world_size()}, "
                               f"not rank {rank} of {world_size}")
    else:
        timeout = datetime.timedelta(seconds=timeout_s)
        if store is None:
            store = dist.TCPStore(address, port, None, False, timeout)
        dist.init_process_group(backend_for(dev), store=store, rank=rank, world_size=world_size, timeout=timeout)
    return Comm(rank=rank, world_size=world_size, device=dev)
