"""runtime/cli.py: a user error is one line, anything else is a bug with its traceback."""

import subprocess
import sys

import pytest

_SCRIPT = r"""
import errno, sys
from electra_jax import errors
from electra_jax.runtime import cli

class BadInput(errors.Error, ValueError):
  pass

RAISE = {
    "project": lambda: BadInput("config.x=3: must be positive"),
    "missing": lambda: FileNotFoundError(2, "No such file or directory", "/nowhere/vocab.txt"),
    "denied": lambda: PermissionError(13, "Permission denied", "/root/x"),
    "full": lambda: OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints/4"),
    "diverged": lambda: FloatingPointError("loss is nan at step 7"),
    "valueerror": lambda: ValueError("too many values to unpack"),
    "keyerror": lambda: KeyError("params"),
    "oserror": lambda: OSError(errno.EIO, "Input/output error"),
}

def main(argv):
  raise RAISE[sys.argv.pop()]()

cli.run(main)
"""


def _run(kind: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _SCRIPT, kind], capture_output=True, text=True, timeout=120,
                        check=False)


@pytest.mark.parametrize("kind, fragment", [
    ("project", "config.x=3: must be positive"),
    ("missing", "/nowhere/vocab.txt"),
    ("denied", "Permission denied: '/root/x'"),
    ("full", "disk full: [Errno 28] No space left on device: '/w/checkpoints/4'"),
    ("diverged", "loss is nan at step 7"),
])
def test_user_errors_are_one_line(kind, fragment):
  proc = _run(kind)
  assert proc.returncode == 1, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert lines[0].startswith("-c: error: ") or ": error: " in lines[0], lines[0]
  assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("kind, name", [("valueerror", "ValueError"), ("keyerror", "KeyError"),
                                        ("oserror", "OSError")])
def test_anything_else_is_a_bug_with_its_traceback(kind, name):
  proc = _run(kind)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback (most recent call last)" in proc.stderr, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert f"internal error: {name}" in last and "This is a bug" in last and "report it" in last, last
