"""What a cluster does to a run, and how the loop survives it: divergence, preemption, randomness on resume.

Divergence. A non-finite loss is noticed where the loop already syncs (the log interval, where the summed
losses are read and, under DDP, all-reduced, so every rank sees the same value), and a non-finite weight
before every evaluation and save (under DDP the weights are identical on every rank, so every rank decides
alike). Either stops the run with :class:`Diverged` (one line naming the step and the last good
checkpoint, exit status :data:`EXIT_DIVERGED`); no checkpoint is written from non-finite weights, so
``best`` never points at one and pruning never deletes the last finite one. ``train.skip_nonfinite=K``
instead skips an update whose gradients are not finite (counted, logged) and stops after K in a row; it
costs one host sync per step (the flag is read, as ``GradScaler`` does), so it is off by default.

Preemption. :class:`StopSignals` turns SIGTERM, SIGINT and SIGUSR1 into a request: every rank finishes its
step; the ranks agree on the step at the log interval's all-reduce (a flag rides on the tensor the loop
already reduces there; one process checks every step, for free), save one complete checkpoint at that
step, release the lock and exit with :data:`EXIT_PREEMPTED`. The latency is at most ``log_interval`` steps
plus one save: choose the scheduler's warning time (Slurm ``--signal=B:TERM@120``) above that. A second
signal of the same kind stops at once (the default action). DataLoader workers forked after the handlers
are installed inherit them and so survive a signal sent to the whole process group.

Randomness. The training stream (drop path and dropout on torch's CPU generator, the mask generator,
mixup on numpy's, Python's) is saved with every checkpoint. Data loaders draw from torch's CPU generator
when a DataLoader iterator is created (its workers' base seed), at an epoch's first batch, at a resume
point and at every evaluation; :func:`data_rng` keeps those draws off the training stream, so a run
resumed at any step draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from marvit.errors import InputError
from marvit.model.checkpoint import nonfinite_tensors
from marvit.train.checkpoint import latest_checkpoint

EXIT_DIVERGED = 3  # the loss or the weights went non-finite; resuming as is would diverge again
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by a signal after saving; requeue and resume with resume=auto
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
PREEMPTED = "preempted.json"  # in out_dir while the run is stopped by a signal (torchrun hides our status)


class Diverged(InputError):
    """The run went non-finite; the message names the step and the last good checkpoint."""

    status = EXIT_DIVERGED


def last_good(out_dir: str | Path) -> str:
    """The newest checkpoint of ``out_dir``: every checkpoint the guarded loop writes is finite."""
    ckpt = latest_checkpoint(out_dir)
    return f"the last good checkpoint is {ckpt}" if ckpt is not None else "no checkpoint was saved"


def check_loss(loss: float, step: int, out_dir: str | Path) -> None:
    """At the log interval: ``loss`` is the interval's mean (all-reduced under DDP: the same on every rank)."""
    if not math.isfinite(loss):
        raise Diverged(
            f"the loss is {loss} at step {step} (diverged); {last_good(out_dir)}. Lower train.base_lr "
            "(or set train.clip_grad / train.skip_nonfinite) and resume with train.resume=auto"
        )


def check_weights(model: nn.Module, step: int, out_dir: str | Path) -> None:
    """Before an evaluation or a save: refuse to go on from non-finite weights (identical on every rank)."""
    bad = nonfinite_tensors(dict(model.named_parameters()))
    if bad:
        raise Diverged(
            f"non-finite weights at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}; "
            f"diverged), not saved; {last_good(out_dir)}. Lower train.base_lr (or set train.clip_grad / "
            "train.skip_nonfinite) and resume with train.resume=auto"
        )


class UpdateSkipper:
    """``train.skip_nonfinite=K``: skip an optimizer step whose gradients are not finite; stop after K in a
    row. The gradients are checked after DDP's all-reduce, so every rank decides alike."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_row, self.total = limit, 0, 0

    def skip(self, model: nn.Module, step: int, out_dir: str | Path) -> bool:
        """True when this step's update must be skipped (one host sync: the flag is read)."""
        if self.limit <= 0:
            return False
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True  # sync point
        if finite:
            self.in_row = 0
            return False
        self.in_row += 1
        self.total += 1
        if self.in_row >= self.limit:
            raise Diverged(
                f"{self.in_row} updates in a row with non-finite gradients up to step {step} "
                f"(train.skip_nonfinite={self.limit}); {last_good(out_dir)}"
            )
        return True


class StopSignals:
    """SIGTERM / SIGINT / SIGUSR1 ask the run to stop after its current step (see the module docstring)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may install handlers (a run inside a test's thread)
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received == name:  # asked twice: the default action now (SIGINT: KeyboardInterrupt)
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.received = self.received or name

    @property
    def requested(self) -> bool:
        return self.received is not None


@contextmanager
def data_rng() -> Iterator[None]:
    """Run data loading or evaluation without touching torch's CPU generator (the training stream)."""
    with torch.random.fork_rng(devices=[]):
        yield


def next_batch(batches: Iterator[dict]) -> dict:
    """``next(batches)`` off the training stream: a DataLoader iterator seeds its workers from torch's CPU
    generator when it starts, which a resumed run does at another step than the uninterrupted one."""
    with data_rng():
        return next(batches)
