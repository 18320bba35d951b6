"""One rank of `dslc train --workers K`, watched: run as a script by mpiexec (`python rank_watch.py
COMMAND...`), it runs the rank as its child and, should the rank die of a signal (`kill -9`, the
kernel's OOM killer), says which rank it was and exits 1.

Why: MPICH's hydra ends every rank at once, and reports only "Killed (signal 9)", when one dies of a
signal, even under -disable-auto-cleanup. A plain exit it leaves alone, so the other ranks also name
the lost rank at the collective timeout (distributed.py). Run as a file, not `-m dslc...`: it imports
nothing of dslc, and the child inherits the PMI file descriptor that MPI starts from.
"""
import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "?"
    # SIGUSR1 is hydra's note to the other ranks that one has ended (-disable-auto-cleanup): by default
    # it would kill this watcher, or the rank finishing after MPI_Finalize. Ignored by both (the rank
    # inherits it); a rank that has really failed is named by the collective timeout.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    child = subprocess.Popen(argv, close_fds=False)
    for sig in (signal.SIGINT, signal.SIGTERM):  # signals mpiexec forwards go on to the rank
        signal.signal(sig, lambda s, frame: child.send_signal(s))
    code = child.wait()
    if code >= 0:
        return code
    try:
        name = f" ({signal.Signals(-code).name})"
    except ValueError:
        name = ""
    print(f"error: rank {rank} (pid {child.pid}) was killed by signal {-code}{name}; the last complete checkpoint "
          f"is intact: continue with --resume, with any --workers", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
