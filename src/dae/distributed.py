"""Data-parallel training under torchrun: one process per device, each fitting its share of every batch.

`dae.train` joins the world torchrun describes in its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); outside torchrun it is a world of one, where World's helpers pass values through. The batch
size stays the global batch: N processes each take 1/N of it, and DistributedDataParallel averages their
gradients, so the maths of a run does not depend on how many processes train it.

Example:
    torchrun --standalone --nproc-per-node 4 -m dae train --model unet --time-budget 10m --out runs/ddp
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dae.errors import PeerFailure, ResourceError, UsageError

# A process that dies without a word leaves the others waiting in a collective; torchrun stops them when it
# sees the death, and this bounds the wait when it cannot (a hung, not dead, process).
TIMEOUT = timedelta(minutes=10)
# How gloo and NCCL say that the process at the other end has gone (their errors are plain RuntimeErrors).
PEER_GONE = ("closed by peer", "reset by peer", "broken pipe", "remote process", "remote worker", "timed out")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """The one process that writes the run: config, metrics, checkpoints, progress."""
        return self.rank == 0

    def replicate(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` as this process trains it: wrapped so that backward averages the processes' gradients."""
        if self.size == 1:
            return model
        if self.device.type == "cuda":
            # BatchNorm statistics over the whole batch, as in one process (the layers are replaced in place).
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.main and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            print(
                "dae: torch has no SyncBatchNorm on CPUs: each process's BatchNorm layers normalise its own share "
                "of the batch, so this run differs from a run in one process",
                file=sys.stderr,
            )
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def align(self, model: torch.nn.Module) -> None:
        """Give every process the main process's buffers (BatchNorm statistics), so that what all of them
        validate is the model the main process saves."""
        if self.size > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def share(self, items: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a batch (or of any tensor along its first dimension)."""
        return items.tensor_split(self.size)[self.rank] if self.size > 1 else items

    def whole_batch(self, loss: torch.Tensor, share: int, batch: int) -> torch.Tensor:
        """`loss`, the mean over this process's `share` of a `batch`, weighted by the share's size: the processes'
        averaged gradients are then the whole batch's mean's, also when the shares differ by an image."""
        return loss if self.size == 1 else loss * (share * self.size / batch)

    def sum(self, *values: float) -> list[float]:
        """`values` summed over all processes, in one collective; as given in a world of one."""
        if self.size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (pickled: for small things such as generator states)."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def first(self, obj: Any) -> Any:
        """The main process's `obj`, on every process (a name drawn from the clock, say)."""
        return self.gather(obj)[0]

    def lost_peer(self, error: BaseException) -> PeerFailure | None:
        """The one-line error to raise when `error` says another process has gone; None for anything else."""
        if self.size == 1 or not isinstance(error, RuntimeError):
            return None
        text = str(error).lower()
        if isinstance(error, dist.DistError) or any(s in text for s in PEER_GONE):
            return PeerFailure(
                "another training process stopped or stopped answering, so this one stopped too (see that "
                "process's error)"
            )
        return None

    def wait(self) -> None:
        """Until every process gets here: the main process's files are complete for all who return."""
        if self.size > 1:
            dist.barrier()


ALONE = World()  # the world of a process that trains on its own


def environment_size() -> int:
    """WORLD_SIZE as torchrun sets it; 1 outside torchrun."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise UsageError(f"WORLD_SIZE={raw!r} in the environment is not a number of processes") from None
    if size < 1:
        raise UsageError(f"WORLD_SIZE={raw!r} in the environment: need at least 1 process")
    return size


def join(device: torch.device) -> World:
    """The torchrun world this process belongs to, joined on `device`; a world of one outside torchrun.

    Under torchrun each process takes the GPU of its LOCAL_RANK and talks over NCCL; CPU processes use gloo.
    A process group the caller already started is used as it is. The group dae starts stays up for the next
    dae.train in this process (a script may train several models): a second init_process_group under the same
    torchrun would read the first one's stale addresses.
    """
    if dist.is_available() and dist.is_initialized():
        size = dist.get_world_size()
        return World(dist.get_rank(), size, _process_device(device) if size > 1 else device)
    size = environment_size()
    if size == 1:
        return World(device=device)
    if not dist.is_available():
        raise ResourceError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; train in one process"
        )
    device = _process_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        # NCCL bound to this process's GPU from the start: barrier() and object collectives then need no guess.
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if backend == "nccl" else None)
    except (ValueError, RuntimeError) as e:  # a half-set environment, an unreachable MASTER_ADDR
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ResourceError(f"cannot join the {size} training processes ({backend}): {first}") from None
    return World(dist.get_rank(), dist.get_world_size(), device)


def _process_device(device: torch.device) -> torch.device:
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"training in several processes runs on cpu or cuda, not {device.type}")
    if device.index is not None:
        raise UsageError(
            f"under torchrun each process takes the GPU of its LOCAL_RANK; use --train.device=cuda, not {device}"
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise ResourceError(
            f"process {local} on this machine has no GPU: {torch.cuda.device_count()} visible; start at most "
            "that many processes per node"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)
