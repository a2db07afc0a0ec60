"""A job's time-limit warning: stop after the current epoch, with a checkpoint, for the next job.

A cluster job ends at its time limit, often hours before a paper's 2000-epoch pretraining
does. SLURM sends a warning signal ahead of the limit when asked (``sbatch
--signal=B:USR1@<seconds>``); the batch script :mod:`sdclr.pipeline.slurm` writes forwards it
to the stage. A pretraining then finishes the epoch it is in, saves its checkpoint (whatever
``checkpoint_every`` says) and exits with :data:`EXIT_CODE`, which the launcher reads as
"submit the next job". That job resumes from the checkpoint, so no epoch is lost to the limit
and the encoder has the bytes of an uninterrupted run (tests/test_slurm.py).
"""

from __future__ import annotations

import signal
import threading

#: the signal the launcher asks SLURM for, and forwards to the stage
WARNING = signal.SIGUSR1
#: a stage's exit status for "stopped at the warning, checkpoint saved" (sysexits' EX_TEMPFAIL)
EXIT_CODE = 75

_warned = threading.Event()


def listen() -> None:
    """From now on, the warning signal marks the run as warned instead of killing the process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(WARNING, lambda signum, frame: _warned.set())


def warned() -> bool:
    return _warned.is_set()
