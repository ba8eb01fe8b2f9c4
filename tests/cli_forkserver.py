"""Run many `hf-reflow` command lines fast, each in its own process: import once, then fork per command.

`python -m hf_reflow` spends most of a short test importing torch and LeRobot (~5-10 s on 2 cores). The
server imports them once, then for every request forks a child that runs `hf_reflow.cli.main(args)` as
`python -m hf_reflow` does: its own process, exit code, stdout and stderr (captured to files), environment
overrides, working directory and optional file-size limit (a full disk). `ForkServer` is the client.

Protocol: one JSON request per stdin line, {"args", "cwd", "env", "fsize", "timeout"}; one JSON answer per
stdout line, {"returncode", "stdout", "stderr"}.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ForkServer:
    """Client: starts the server on first use; `run` answers like `subprocess.run(..., capture_output=True)`."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo, self.env, self.proc = repo, env, None

    def run(self, args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            fsize: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=self.repo, env=self.env,
            )  # fmt: skip
        request = {"args": list(args), "cwd": str(cwd or self.repo), "env": env or {}, "fsize": fsize, "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return subprocess.CompletedProcess(["hf-reflow", *args], answer["returncode"], answer["stdout"], answer["stderr"])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _warm_imports() -> None:
    import lerobot.policies.factory  # noqa: F401  (the slow part of every command that loads a checkpoint)
    import torch  # noqa: F401

    import hf_reflow.cli  # noqa: F401
    import hf_reflow.configs  # noqa: F401


def _child(request: dict, out: str, err: str) -> None:
    """In the forked child: redirect stdout / stderr, apply the request's env, cwd and file-size limit, run."""
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    if request.get("env"):  # the caller's whole environment (modules imported by the server read theirs at import)
        os.environ.clear()
        os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request.get("fsize"):  # a full disk, as the process sees it: a write past this size fails (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    from hf_reflow.cli import main

    code = 1
    try:
        code = main(list(request["args"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.02)


def _read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def serve() -> None:
    _warm_imports()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # answers; fd 1 itself is left to the children
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as tmp:
            out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            pid = os.fork()
            if pid == 0:
                _child(request, out, err)
            code = _wait(pid, float(request.get("timeout") or 300))
            protocol.write(json.dumps({"returncode": code, "stdout": _read(out), "stderr": _read(err)}) + "\n")


if __name__ == "__main__":
    serve()
