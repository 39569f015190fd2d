"""Attributes that record how a dataset was made (ArviZ-style ``make_attrs``)."""

from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

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


def git_commit() -> str:
    """The commit of the sigprop checkout (``+dirty`` when modified), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=here, check=False,
                              capture_output=True, text=True, timeout=5)
        sha = head.stdout.strip() if head.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               check=False,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def make_attrs(kind: str, config: dict, backend: str, **extra) -> dict:
    """kind, config (JSON), backend, versions (JSON), git commit, UTC creation time, extras."""
    attrs = {
        "kind": kind,
        "config": json.dumps(config, sort_keys=True),
        "backend": backend,
        "versions": json.dumps(versions(), sort_keys=True),
        "git_commit": git_commit(),  # read every time: the checkout may change in a session
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": "sigprop",
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs
