"""Child processes that never outlive their run, and signals that stop a run promptly.

A child is started in its own session (:data:`SESSION`: its own process group, out of the
terminal's reach, so a Ctrl-C goes to the parent alone, which then stops the whole group with
:func:`kill_group`). With :data:`DIE_WITH_PARENT` in its environment the child calls
:func:`die_with_parent` and is ended, with everything it forked, when its parent dies, even by
SIGKILL (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

DIE_WITH_PARENT = "SIGPROP_DIE_WITH_PARENT"  # env: the pid whose death must end this process
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env() -> dict[str, str]:
    """The environment of a child that must die with this process."""
    return {**os.environ, DIE_WITH_PARENT: str(os.getpid())}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with ``start_new_session=True`` and everything it forked."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _end_my_group(*_):
    os.killpg(os.getpgrp(), signal.SIGKILL)


def die_with_parent() -> None:
    """In a child started with :func:`child_env` in its own session: when the parent dies,
    SIGTERM arrives and ends this process group (this process and what it forked)."""
    parent = os.environ.get(DIE_WITH_PARENT)
    if not parent or not sys.platform.startswith("linux") or os.getpgrp() != os.getpid():
        return
    signal.signal(signal.SIGTERM, _end_my_group)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if os.getppid() != int(parent):  # the parent died before prctl took effect
        _end_my_group()


@contextlib.contextmanager
def interrupts():
    """Within the block SIGINT and SIGTERM raise :class:`KeyboardInterrupt` in the main thread;
    yields a dict whose ``"signal"`` is the number of the one received (for exit 128 + n)."""
    received: dict[str, int] = {}

    def handler(signum, _frame):
        received["signal"] = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)
