"""Data-parallel training over MPI: `dslc train FILE --workers K`, or `mpiexec -n K dslc train FILE`.

Every rank holds the whole state. Per step, each `DistributedStepRunner.run` gets the global batch,
takes its rank's shard (B split over K as evenly as possible; an empty shard runs nothing and adds
zeros), runs the step's `--emit gradients` graph, then ONE fused allreduce: every gradient, the loss
and metrics and the batch-norm statistics, each times the shard size, in one float64 buffer; divided
by B it is the global batch's mean. Every rank then runs the `--emit apply` graph on identical
inputs, so the weights stay identical everywhere and rank 0's checkpoint is everyone's.

Randomness: a step's graphs draw from (seed, step, position in the tensor). Rank 0 feeds the seed
of a K=1 run, rank r > 0 `rank_seed(seed, r)`, a pure function of (seed, r); positions are per
shard. So random draws inside steps (dropout masks, sampled noise) depend on K; a model without
them follows the K=1 run up to float32 rounding of the sums. Batch-norm layers normalize with their
shard's statistics, so they depend on K too (as in any data-parallel training without synchronized
batch norm); the running statistics are the shard-size-weighted mean.

Faults: the allreduce is non-blocking and polled against a deadline (`--collective-timeout`,
default 120 s). Before it, every rank posts a tiny "arrived at step s" message to every other, so
on a timeout the message names the ranks that never arrived; then `Abort(1)` ends every process.
Checkpoints are written by rank 0 alone, atomically, so the last complete one stays intact.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import zlib

import numpy as np

from ..diagnostics import DslError
from .evaluate import compile_target
from .runner import StepRunner, host

COLLECTIVE_TIMEOUT = 120.0
MPI_EXTRA = 'pip install -e ".[mpi]"  (mpi4py and the mpich wheel, which brings mpiexec)'
_ARRIVE = 77  # the tag of the "arrived" messages
# Environment variables an MPI launcher sets (MPICH/hydra, Open MPI, PMIx, Slurm, Intel MPI).
_LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def under_launcher() -> bool:
    """True in a process an MPI launcher (mpiexec, srun) started."""
    return any(os.environ.get(v) for v in _LAUNCHER_VARS)


def find_mpiexec() -> str | None:
    """The mpiexec beside this Python (where the mpich wheel installs it), else the one on PATH."""
    import shutil
    import sysconfig
    from pathlib import Path
    beside = Path(sysconfig.get_path("scripts")) / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


def world():
    """COMM_WORLD when this process is one of several MPI ranks, else None (mpi4py is imported, and
    MPI initialized, only when a launcher's variables say there is a world to join)."""
    if not under_launcher():
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        if int(os.environ.get("DSLC_WORKERS", "1")) > 1:
            raise DslError("--workers needs mpi4py in the Python that mpiexec started", hint=MPI_EXTRA) from None
        return None
    comm = MPI.COMM_WORLD
    expected = int(os.environ.get("DSLC_WORKERS", "0"))
    if expected and comm.Get_size() != expected:
        raise DslError(f"mpiexec started {expected} processes but each sees an MPI world of {comm.Get_size()}",
                       hint="mpi4py is built against another MPI than this mpiexec; " + MPI_EXTRA)
    return comm if comm.Get_size() > 1 else None


def rank_seed(seed, rank: int) -> np.ndarray:
    """The `seed` counter rank `rank` feeds its graphs: rank 0 the K=1 run's, the others a hash."""
    if rank == 0:
        return np.array(seed, np.int64)
    return np.array(zlib.crc32(f"{int(seed)}/rank{rank}".encode()) & 0x7FFFFFFF, np.int64)


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's share of n: the first n % size ranks hold one more."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (rank < r)


def local_threads(comm) -> int:
    """onnxruntime threads per rank: this machine's cores shared among the ranks on it."""
    from mpi4py import MPI
    here = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    return max(1, (os.cpu_count() or 1) // here)


class DistributedStepRunner:
    """StepRunner's interface, over K ranks: run(global batch, state, counters) -> (reports, new state)."""

    def __init__(self, program, step: str, device: str, seed: int, comm, timeout: float = COLLECTIVE_TIMEOUT):
        self.comm, self.rank, self.size, self.timeout = comm, comm.Get_rank(), comm.Get_size(), timeout
        threads = local_threads(comm)
        # (tune=False: every rank keeps the same session settings, so the same numbers)
        self.grads = StepRunner(compile_target(program, step, "gradients", seed), device, threads, tune=False)
        self.apply = StepRunner(compile_target(program, step, "apply", seed), device, threads, tune=False)
        self.on_cuda = self.grads.on_cuda
        self.reports = [o for o in self.grads.report_outputs if not o.startswith("grad.")]
        self.gradients = [o for o in self.grads.report_outputs if o.startswith("grad.")]
        self.stats = list(self.grads.state_outputs)  # batch-norm statistics: `<stat>.next`
        self.step_name = step
        self._fault = _test_fault(self.rank)

    def device_value(self, array: np.ndarray):
        return self.grads.device_value(array)

    def run(self, data: dict[str, np.ndarray], state: dict, counters: dict[str, np.ndarray]):
        step = int(counters.get("step", 0))
        if self._fault and self._fault[0] == step:
            _act(self._fault[1])
        mine, n, total = _shard_data(data, self.rank, self.size)
        shapes = self._layout(state)
        buf = np.zeros(sum(int(np.prod(s)) for s in shapes), np.float64)
        if n:
            ours = {**counters, "seed": rank_seed(counters.get("seed", 0), self.rank)}
            out, new = self.grads.run(mine, state, ours)
            values = [out[k] for k in self.reports + self.gradients] + [host(new[s[:-5]]) for s in self.stats]
            if values:
                np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values], out=buf)
            buf *= n
        self._allreduce(buf, step)
        buf /= total
        parts, at = [], 0
        for s in shapes:
            size = int(np.prod(s))
            parts.append(buf[at:at + size].reshape(s))
            at += size
        k = len(self.reports)
        reports = {name: np.float32(v) for name, v in zip(self.reports, parts[:k])}
        back = [v.astype(t) for v, t in zip(parts[k:], self._dtypes)]
        grads = dict(zip(self.gradients, back))
        stats = {s[:-5]: self.device_value(v) for s, v in zip(self.stats, back[len(self.gradients):])}
        _, new = self.apply.run(grads, state, counters)
        new.update(stats)
        return reports, new

    def _layout(self, state: dict) -> list[tuple]:
        """The buffer's parts: reports (scalars), gradients (as their weights), statistics (as their state)."""
        if not hasattr(self, "_shapes"):
            held = [host(state[g[5:]]) for g in self.gradients] + [host(state[s[:-5]]) for s in self.stats]
            self._shapes = [()] * len(self.reports) + [v.shape for v in held]
            self._dtypes = [v.dtype for v in held]  # what the gradients and statistics go back to
        return self._shapes

    def _allreduce(self, buf: np.ndarray, step: int) -> None:
        """buf summed over the ranks, in place, or a clear error and Abort after the timeout."""
        from mpi4py import MPI
        comm = self.comm
        others = [r for r in range(self.size) if r != self.rank]
        mark = np.array([step], np.int64)
        inbox = {r: np.zeros(1, np.int64) for r in others}
        recvs = {r: comm.Irecv(inbox[r], source=r, tag=_ARRIVE) for r in others}
        sends = [comm.Isend(mark, dest=r, tag=_ARRIVE) for r in others]
        req = comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        deadline, pause = time.monotonic() + self.timeout, 0.0
        while not req.Test():
            if time.monotonic() > deadline:
                missing = [r for r in others if not recvs[r].Test()]
                self._abort(step, missing)
            time.sleep(pause)
            pause = min(2 * pause or 1e-5, 1e-3)
        MPI.Request.Waitall(list(recvs.values()) + sends)

    def _abort(self, step: int, missing: list[int]) -> None:
        who = (f"rank{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} did not answer"
               if missing else "a rank stopped")
        e = DslError(f"rank {self.rank}: the gradient allreduce of step {self.step_name} at global step {step + 1} "
                     f"timed out after {self.timeout:g} s: {who} (a rank died or hangs)",
                     hint="the last complete checkpoint is intact: rerun with --resume, with any --workers")
        print(e.render(), file=sys.stderr, flush=True)
        time.sleep(0.5)  # mpiexec forwards the message before Abort tears the job down
        self.comm.Abort(1)


def _shard_data(data: dict, rank: int, size: int) -> tuple[dict, int, int]:
    """This rank's part of a global batch: arrays split along their first axis; a scalar count (such as
    `2 * batch`) scaled to the shard. Returns (data, shard size, global batch size)."""
    arrays = [v for v in data.values() if np.ndim(v) >= 1]
    counts = [int(v) for v in data.values() if np.ndim(v) == 0]
    total = len(arrays[0]) if arrays else (counts[0] if counts else size)
    start, stop = shard(total, rank, size)
    n = stop - start
    mine = {}
    for k, v in data.items():
        if np.ndim(v) >= 1 and len(v) == total:
            mine[k] = v[start:stop]
        elif np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.integer) and total:
            mine[k] = np.array(int(v) * n // total, np.asarray(v).dtype)
        else:
            mine[k] = v
    return mine, n, total


def _test_fault(rank: int):
    """DSLC_TEST_FAULT=RANK:STEP:exit|kill|hang makes that rank die or hang at that global step (the tests')."""
    spec = os.environ.get("DSLC_TEST_FAULT")
    if not spec:
        return None
    r, step, what = spec.split(":")
    return (int(step), what) if int(r) == rank else None


def _act(what: str) -> None:
    if what == "exit":
        os._exit(1)
    if what == "kill":  # as the kernel's OOM killer or `kill -9` would
        os.kill(os.getpid(), signal.SIGKILL)
    while True:
        time.sleep(3600)
