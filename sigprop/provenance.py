"""Attributes that record how a dataset was made (ArviZ-style ``make_attrs``)."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

GIT = ["git", "--no-optional-locks"]  # never take the index lock (see git_commit)
PACKAGES = ("sigprop", "numpy", "scipy", "sympy", "xarray", "cupy")


@functools.cache  # installed versions do not change within a process (the lookup costs ~15 ms)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def _versions_json() -> str:
    """:func:`versions` as the ``versions`` attr writes it (made once per process)."""
    return json.dumps(versions(), sort_keys=True)


@functools.cache
def git_commit() -> str:
    """The commit of the sigprop checkout (``+dirty`` when modified), or 'unknown'.

    Read once per process, at the first dataset made (two ``git`` calls cost ~6 ms): a dataset
    records the checkout as it was when the process first asked, so commit or edit the code
    before starting the run it should describe. ``--no-optional-locks`` keeps ``git status``
    from taking ``.git/index.lock`` (it would refresh the index), so a run never blocks the
    user's own git commands.
    """
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(GIT + ["rev-parse", "--verify", "-q", "HEAD"], cwd=here,
                              check=False, capture_output=True, text=True, timeout=5)
        sha = head.stdout.strip() if head.returncode == 0 else ""
        dirty = subprocess.run(GIT + ["status", "--porcelain", "--untracked-files=no"], cwd=here,
                               check=False, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def make_attrs(kind: str, config: dict, backend: str, **extra) -> dict:
    """kind, config (JSON), backend, versions (JSON), git commit, UTC creation time, extras."""
    attrs = {
        "kind": kind,
        "config": json.dumps(config, sort_keys=True),
        "backend": backend,
        "versions": _versions_json(),
        "git_commit": git_commit(),  # read once per process
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": "sigprop",
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs
