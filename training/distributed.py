"""Every Horovod call of the project, in one place (grep `hvd.`).

Works the same under `horovodrun -np N` and with a plain `python` (one rank, no launcher needed).
"""
from __future__ import annotations

import logging
import os
import time

import horovod.torch as hvd
import torch
from torch import nn

log = logging.getLogger(__name__)
CYCLE_TIME_ENV = "HOROVOD_CYCLE_TIME"
# How often a worker waiting for its gradients' allreduce checks on it (see _wait_quietly).
WAIT_POLL_S = 0.0005


class Workers:
    """This process's place among the training workers, and the collective operations the trainer uses."""

    def __init__(self, cycle_time_ms: float | None = None):
        # Horovod's background thread negotiates every cycle (default 1 ms), a collective over Gloo each
        # time. When training iterations take hundreds of ms on CPUs that the ranks keep busy, those
        # wake-ups take ~10% of each core; a longer cycle costs at most one cycle per step. An explicit
        # `horovodrun --cycle-time-ms` (which sets the variable) wins.
        if cycle_time_ms and CYCLE_TIME_ENV not in os.environ:
            os.environ[CYCLE_TIME_ENV] = str(cycle_time_ms)
        hvd.init()  # HVD: join the job (Gloo controller; size 1 without horovodrun)
        if self.is_rank0 and CYCLE_TIME_ENV in os.environ:
            log.info("Horovod cycle time %s ms", os.environ[CYCLE_TIME_ENV])

    @property
    def rank(self) -> int:
        """Global rank of this worker."""
        return hvd.rank()  # HVD

    @property
    def size(self) -> int:
        """Number of workers."""
        return hvd.size()  # HVD

    @property
    def local_rank(self) -> int:
        """Rank of this worker among those on its host (which GPU it uses)."""
        return hvd.local_rank()  # HVD

    @property
    def local_size(self) -> int:
        """Workers on this host (they share its cores)."""
        return hvd.local_size()  # HVD

    @property
    def is_rank0(self) -> bool:
        """Whether this worker owns side effects (tracking, checkpoints, progress)."""
        return self.rank == 0

    def distributed_optimizer(self, optimizer: torch.optim.Optimizer, module: nn.Module,
                              prefix: str) -> torch.optim.Optimizer:
        """Wrap an optimizer so its step averages gradients; names are prefixed per network (G., D.)."""
        named = [(f"{prefix}.{name}", p) for name, p in module.named_parameters()]
        wrapped = hvd.DistributedOptimizer(optimizer, named_parameters=named, op=hvd.Average)  # HVD
        _wait_quietly(wrapped)
        return wrapped

    def broadcast_training_state(self, modules: dict[str, nn.Module],
                                 optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """Make every rank start from rank 0's weights and optimizer state."""
        for name, module in modules.items():
            state = {f"{name}.{k}": v for k, v in module.state_dict().items()}
            hvd.broadcast_parameters(state, root_rank=0)  # HVD (in place: state_dict tensors share storage)
        for optimizer in optimizers.values():
            hvd.broadcast_optimizer_state(optimizer, root_rank=0)  # HVD

    def broadcast_object(self, obj, name: str):
        """Rank 0's value of a small picklable object, on every rank."""
        return hvd.broadcast_object(obj, root_rank=0, name=name)  # HVD

    def average(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics across ranks (every rank must call with the same keys)."""
        if self.size == 1 or not metrics:
            return dict(metrics)
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        averaged = hvd.allreduce(values, name="metrics", op=hvd.Average)  # HVD
        return dict(zip(keys, averaged.tolist()))

    def max(self, value: float, name: str) -> float:
        """The largest value of a scalar across ranks."""
        return float(hvd.allreduce(torch.tensor([value], dtype=torch.float64), name=name, op=hvd.Max))  # HVD

    def gather_flat_parameters(self, module: nn.Module, name: str) -> torch.Tensor:
        """Every rank's parameters of ``module`` flattened, one row per rank (for consistency checks)."""
        flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in module.parameters()]).unsqueeze(0)
        return hvd.allgather(flat, name=name)  # HVD

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        hvd.barrier()  # HVD


def _wait_quietly(optimizer: torch.optim.Optimizer) -> None:
    """Make a DistributedOptimizer's step() sleep, not spin, while its gradients are being averaged."""
    # horovod.torch.synchronize waits in a loop of sched_yield() calls: the waiting thread keeps its
    # core busy, and on a host whose cores the workers fill, that core is the one Horovod's own
    # background thread needs for the allreduce and the reader threads for decoding (1 ms cycles:
    # 11 MB allreduce took 15 ms of CPU spinning, 9 ms sleeping). Sleeping until every outstanding
    # handle is done first leaves synchronize() nothing to wait for. `_handles` (parameter -> (handle,
    # ctx), handle None until its hook fired) is horovod 0.28.1's, the pinned and last release.
    spinning_synchronize = optimizer.synchronize

    def synchronize() -> None:
        for handle, _ in list(optimizer._handles.values()):
            if handle is not None:
                while not hvd.poll(handle):  # HVD
                    time.sleep(WAIT_POLL_S)
        spinning_synchronize()

    optimizer.synchronize = synchronize
