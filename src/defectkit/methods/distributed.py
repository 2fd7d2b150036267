"""Data-parallel training through torch.distributed, launched with ``torchrun``.

``torchrun --nproc_per_node N -m defectkit train ...`` starts N copies; each finds its rank in
the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)
and joins one process group: ``gloo`` on CPUs, ``nccl`` on CUDA GPUs (one GPU per process,
``cuda:LOCAL_RANK``). Without those variables everything here is a no-op for one process.

The semantics are those of one process with the same global batch: every rank draws the
same epoch order (same seed, same frequency-of-use history), takes every N-th image of each
global batch, and multiplies its summed loss by N, because DistributedDataParallel averages
gradients over ranks while the papers' batch loss is a sum over images. The network has no
batch statistics (its norm is per image), so the summed gradient, and so each SGD step, is
the single-process one up to float rounding. Validation is scored in shards and gathered;
rank 0 alone writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items):
        """This rank's part of a global batch: every ``world``-th item from ``rank``."""
        return items[self.rank :: self.world]


def context(device_name: str = "cpu") -> Context:
    """The process group torchrun asked for (joined on first call), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    import torch
    import torch.distributed as dist

    cuda = torch.device(device_name).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return Context(dist.get_rank(), dist.get_world_size(), local)


def device_name(ctx: Context, name: str) -> str:
    """The process's device as a name: ``cuda:LOCAL_RANK`` for CUDA under torchrun, else ``name``."""
    return f"cuda:{ctx.local_rank}" if ctx.active and name.startswith("cuda") else name


def broadcast(ctx: Context, value):
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ctx.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def sum_values(ctx: Context, values: list[float], dev) -> list[float]:
    """Element-wise sums over ranks (in float64)."""
    if not ctx.active:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def gather_objects(ctx: Context, value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
    if not ctx.active:
        return [value]
    import torch.distributed as dist

    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, value)
    return parts


def agree(ctx: Context, problem: Exception | None) -> None:
    """Raise on every rank when any rank met a problem, so that none waits for the others at a
    collective: the first rank with the problem raises it (it is printed once), the others
    leave with exit code 2 and say nothing."""
    problems = gather_objects(ctx, None if problem is None else str(problem))
    first = next((rank for rank, text in enumerate(problems) if text is not None), None)
    if first is None:
        return
    if first == ctx.rank:
        raise problem
    raise SystemExit(2)


def gather_shards(ctx: Context, local: np.ndarray, total: int) -> np.ndarray:
    """The full array from every rank's ``shard`` of it (every rank gets it)."""
    if not ctx.active:
        return local
    import torch.distributed as dist

    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, np.asarray(local))
    out = np.empty(total, dtype=np.asarray(local).dtype)
    for rank, part in enumerate(parts):
        out[rank :: ctx.world] = part
    return out


def wrap(model, ctx: Context, dev):
    """DistributedDataParallel around ``model`` when there is a process group."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
