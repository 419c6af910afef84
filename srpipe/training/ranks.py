"""Training's distributed backend behind one small interface: one process, Horovod ranks, or torch DDP ranks.

`make_world(backend)` reads
the launcher (srun, mpirun, torchrun, horovodrun; see `srpipe.training.launch`) and returns a
`World`: rank, size, local rank, sums over ranks, rank 0's object on every rank, and `distribute`, which makes every
rank start from rank 0's state and average gradients. Horovod stays the design's default where it is installed;
without it, more than one rank train through torch.distributed (Gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
from torch import nn

from srpipe.errors import StageError
from srpipe.training.launch import Launch, launch_from_env, rendezvous


@dataclass
class Trainable:
    """What the loop steps: the SR net and ShiftNet to call forward (wrapped for DDP) and the optimiser to step."""

    model: nn.Module
    shiftnet: nn.Module
    optimizer: torch.optim.Optimizer


class World:
    """A world of one process: every collective is the identity."""

    backend = "single"
    rank, size, local_rank = 0, 1, 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a float64 CPU tensor."""
        return values

    def broadcast_object(self, obj: object, name: str) -> object:
        """Rank 0's `obj` (picklable) on every rank; `name` tags the collective."""
        return obj

    def distribute(self, model: nn.Module, shiftnet: nn.Module, optimizer: torch.optim.Optimizer, register: bool):
        """Trainable parts that start from rank 0's state and average gradients over ranks (here: as they are)."""
        return Trainable(model, shiftnet, optimizer)

    def close(self) -> None:
        """Leave the world (the process group of DDP)."""

    def average(self, row: dict[str, float]) -> dict[str, float]:
        """Mean over ranks of each value of `row`."""
        summed = self.sum(torch.tensor(list(row.values()), dtype=torch.float64)) / self.size
        return dict(zip(row, summed.tolist(), strict=True))

    def lead_value(self, value: float) -> float:
        """Rank 0's `value` on every rank (e.g. its clock, so that all ranks share one time budget and lr)."""
        return self.sum(torch.tensor([value if self.rank == 0 else 0.0], dtype=torch.float64)).item()


class HorovodWorld(World):
    """Horovod ranks (MPI or Gloo, started by srun --mpi=pmix, mpirun or horovodrun)."""

    backend = "horovod"

    def __init__(self, hvd) -> None:
        if not torch.cuda.is_available():  # CPU ranks fill the cores: Open MPI's busy wait would take one from a rank
            os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")  # read by MPI_Init, inside hvd.init()
        hvd.init()
        self.hvd, self.rank, self.size, self.local_rank = hvd, hvd.rank(), hvd.size(), hvd.local_rank()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        return values if self.size == 1 else self.hvd.allreduce(values, op=self.hvd.Sum)

    def broadcast_object(self, obj: object, name: str) -> object:
        return obj if self.size == 1 else self.hvd.broadcast_object(obj, root_rank=0, name=name)

    def distribute(self, model: nn.Module, shiftnet: nn.Module, optimizer: torch.optim.Optimizer, register: bool):
        """Rank 0's weights on every rank; Horovod's optimiser averages the gradients.

        Its DistributedOptimizer is a new optimiser over the same parameters, without the state: a resumed Adam's
        moments and step counts are loaded into it. They need no broadcast (every rank loaded rank 0's checkpoint), and
        `hvd.broadcast_optimizer_state` would take a dummy step on an empty state, one Adam step count ahead of DDP's.
        """
        if self.size == 1:
            return Trainable(model, shiftnet, optimizer)
        _broadcast_state(self.hvd, model.state_dict(), "sr")
        _broadcast_state(self.hvd, shiftnet.state_dict(), "shift")
        named = [(f"sr.{n}", p) for n, p in model.named_parameters()]
        named += [(f"shift.{n}", p) for n, p in shiftnet.named_parameters()] if register else []
        distributed = self.hvd.DistributedOptimizer(optimizer, named_parameters=named, compression=ContiguousGrads)
        distributed.load_state_dict(optimizer.state_dict())
        return Trainable(model, shiftnet, distributed)


class ContiguousGrads:
    """Horovod "compression" that sends a non-contiguous (channels-last) gradient as a contiguous copy and hands the
    sum back in the parameter's layout: Horovod's collectives take contiguous tensors only, and ranks must compute in
    the layout one process uses (channels-last), or their convolutions sum in another order and Adam amplifies the
    rounding (two ranks and one process drifted 7.6e-4 apart on AVX-512 machines)."""

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
        """(contiguous tensor, the strides to restore; None when it was contiguous)."""
        if tensor.is_contiguous():
            return tensor, None
        return tensor.contiguous(), tensor.stride()

    @staticmethod
    def decompress(tensor: torch.Tensor, strides: tuple[int, ...] | None) -> torch.Tensor:
        """`tensor` laid out with the strides `compress` recorded (any dense layout, channels-last among them)."""
        if strides is None:
            return tensor
        return torch.empty_strided(tensor.shape, strides, dtype=tensor.dtype, device=tensor.device).copy_(tensor)


@torch.no_grad()
def _broadcast_state(hvd, state: dict[str, torch.Tensor], prefix: str) -> None:
    """Rank 0's `state` (a module's state_dict, any layout) on every rank, through contiguous copies."""
    copies = {f"{prefix}.{k}": v.contiguous() for k, v in state.items()}
    hvd.broadcast_parameters(copies, root_rank=0)
    for k, v in state.items():
        if copies[f"{prefix}.{k}"] is not v:
            v.copy_(copies[f"{prefix}.{k}"])


def _mpi_rendezvous() -> tuple[str, int]:
    """Rank 0's host name and a free port on it, sent to every rank over MPI (mpirun gives no address)."""
    from mpi4py import MPI

    host, port = None, None
    if MPI.COMM_WORLD.Get_rank() == 0:
        with socket.socket() as probe:
            probe.bind(("", 0))
            host, port = socket.gethostname(), probe.getsockname()[1]
    return MPI.COMM_WORLD.bcast((host, port), root=0)


class TorchWorld(World):
    """torch.distributed ranks: Gloo on CPU, NCCL on GPU; DistributedDataParallel averages the gradients."""

    backend = "ddp"

    def __init__(self, launch: Launch, timeout_s: float = 600) -> None:
        address = rendezvous(launch) or (_mpi_rendezvous() if launch.launcher == "mpirun" else None)
        if address is None:
            raise StageError(
                f"train.backend = 'ddp' under {launch.launcher}: no rank-0 address; start the ranks with srun, "
                "mpirun or torchrun, or set MASTER_ADDR and MASTER_PORT"
            )
        self.rank, self.size, self.local_rank = launch.rank, launch.size, launch.local_rank
        self.device = torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        torch.distributed.init_process_group(
            "nccl" if self.device.type == "cuda" else "gloo",
            init_method=f"tcp://{address[0]}:{address[1]}",
            rank=self.rank,
            world_size=self.size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        summed = values.to(self.device)
        torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
        return summed.to(values.device)

    def broadcast_object(self, obj: object, name: str) -> object:
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def distribute(self, model: nn.Module, shiftnet: nn.Module, optimizer: torch.optim.Optimizer, register: bool):
        """DDP wrappers, which send rank 0's weights at construction (the optimiser state needs no sending: every rank
        loaded rank 0's checkpoint, or starts empty); buffers are sent once at construction, as Horovod does."""
        wrap = dict(
            forward_sync_buffers=False,
            gradient_as_bucket_view=True,
            device_ids=[self.device] if self.device.type == "cuda" else None,
        )
        ddp = torch.nn.parallel.DistributedDataParallel
        return Trainable(ddp(model, **wrap), ddp(shiftnet, **wrap) if register else shiftnet, optimizer)

    def close(self) -> None:
        torch.distributed.destroy_process_group()


def make_world(backend: str) -> World:
    """The world this process's launcher started, under `backend` ("horovod" or "ddp"); one process without one."""
    launch = launch_from_env()
    if backend == "horovod":
        try:
            import horovod.torch as hvd
        except ImportError as exc:  # a plain install without the patched Horovod still trains
            fallback = "torch DDP" if launch.size > 1 else "a single process"
            print(f"train: horovod not importable ({exc}); train.backend = 'horovod' falls back to {fallback}")
        else:
            return HorovodWorld(hvd)
    return TorchWorld(launch) if launch.size > 1 else World()
