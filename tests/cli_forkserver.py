"""Run many `hf-reflow` command lines fast, each in its own process: import once, then fork per command.

`python -m hf_reflow` spends most of a short test importing torch and LeRobot (~15-20 s on 2 cores). The
server imports them once, then for every request forks a child that runs `hf_reflow.cli.main(args)` as
`python -m hf_reflow` does: its own process, exit code, stdout and stderr (captured to files), environment
overrides, working directory and optional file-size limit (a full disk). `ForkServer` is the client.

A "stock" server (`ForkServer(..., stock=True)`) imports only torch and LeRobot, never hf_reflow or its plugin,
and runs `python -c CODE ARGV...` requests: a stock LeRobot process that has not seen hf-reflow, for the tests
that load our checkpoints the way a LeRobot user's script does.

Protocol: one JSON request per stdin line, {"args" or "code", "cwd", "env", "fsize", "timeout", "interrupt_when"}; one
JSON answer per stdout line, {"returncode", "stdout", "stderr"}. `interrupt_when`: a path; the server sends
the child SIGINT (Ctrl-C) once it exists. `nprocs` > 1: that many children, each given the environment
torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so they
form one gloo process group; the answer joins their outputs, rank by rank, with the first non-zero exit code.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class ForkServer:
    """Client: starts the server on first use; `run` answers like `subprocess.run(..., capture_output=True)`."""

    def __init__(self, repo: Path, env: dict[str, str], *, stock: bool = False) -> None:
        self.repo, self.env, self.stock, self.proc = repo, env, stock, None

    def run(self, args: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
            fsize: int | None = None, timeout: float = 300,
            interrupt_when: str | Path | None = None, nprocs: int = 1) -> subprocess.CompletedProcess:  # fmt: skip
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, *(["--stock"] if self.stock else [])], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
                cwd=self.repo, env=self.env,
            )  # fmt: skip
        key = "code" if self.stock else "args"  # stock: args = [CODE, *ARGV], as `python -c CODE ARGV...`
        request = {key: list(args), "cwd": str(cwd or self.repo), "env": env or {}, "fsize": fsize, "timeout": timeout,
                   "interrupt_when": None if interrupt_when is None else str(interrupt_when), "nprocs": nprocs}  # fmt: skip
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        command = ["python", "-c", *args] if self.stock else ["hf-reflow", *args]
        return subprocess.CompletedProcess(command, answer["returncode"], answer["stdout"], answer["stderr"])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _warm_imports(stock: bool) -> None:
    import lerobot.policies.factory  # noqa: F401  (the slow part of every command that loads a checkpoint)
    import torch  # noqa: F401

    if stock:
        return
    import hf_reflow.cli  # noqa: F401
    import hf_reflow.configs  # noqa: F401


def _reread_hub_settings() -> None:
    """huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME and the cache paths into
    `huggingface_hub.constants` at import, i.e. in the server: re-read them from the child's environment
    (its functions read `constants.X` at call time), as a fresh `python -m hf_reflow` would."""
    import importlib

    import huggingface_hub.constants

    importlib.reload(huggingface_hub.constants)


def _start_like_python(env: dict) -> None:
    """What a fresh interpreter does with the child's PYTHONPATH: its folders go first on sys.path, and the
    first `sitecustomize.py` among them runs (tests use one to build pi0 at tiny sizes)."""
    folders = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    sys.path[:0] = folders
    hook = next((Path(p) / "sitecustomize.py" for p in folders if (Path(p) / "sitecustomize.py").is_file()), None)
    if hook is not None:
        runpy.run_path(str(hook), run_name="sitecustomize")


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
        _reread_hub_settings()
        _start_like_python(request["env"])
    os.chdir(request["cwd"])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt, as in `python -m`
    if request.get("fsize"):  # a full disk, as the process sees it: a write past this size fails (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], request["fsize"]))
    code = 1
    try:
        code = _run(request)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(request: dict) -> int:
    """`python -c CODE ARGV...` (a stock request) or `python -m hf_reflow ARGS`; the exit code."""
    if "code" in request:
        source, *argv = request["code"]
        sys.argv = ["-c", *argv]
        exec(compile(source, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        return 0
    from hf_reflow.cli import main

    return main(list(request["args"]))


def _wait(pid: int, timeout: float, interrupt_when: str | None) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if interrupt_when and os.path.lexists(interrupt_when):
            os.kill(pid, signal.SIGINT)
            interrupt_when = None
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


def _rank_env(request: dict, rank: int, port: int) -> dict:
    """The request with torchrun's per-worker variables for `rank` of `nprocs` on this host."""
    n = int(request.get("nprocs") or 1)
    if n == 1:
        return request
    env = {**(request.get("env") or os.environ), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
           "LOCAL_WORLD_SIZE": str(n), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
    return {**request, "env": env}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group or a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answer(request: dict, tmp: str) -> dict:
    """Fork the request's process(es), wait, and read back exit code and outputs."""
    port, children = free_port(), []
    for rank in range(int(request.get("nprocs") or 1)):
        out, err = os.path.join(tmp, f"out{rank}"), os.path.join(tmp, f"err{rank}")
        pid = os.fork()
        if pid == 0:
            _child(_rank_env(request, rank, port), out, err)
        children.append((pid, out, err))
    codes = [_wait(pid, float(request.get("timeout") or 300), request.get("interrupt_when")) for pid, _, _ in children]
    return {"returncode": next((c for c in codes if c), 0), "stdout": "".join(_read(out) for _, out, _ in children),
            "stderr": "".join(_read(err) for _, _, err in children)}  # fmt: skip


def serve(stock: bool) -> None:
    _warm_imports(stock)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # answers; fd 1 itself is left to the children
    for line in sys.stdin:
        with tempfile.TemporaryDirectory() as tmp:
            protocol.write(json.dumps(_answer(json.loads(line), tmp)) + "\n")


if __name__ == "__main__":
    serve(stock="--stock" in sys.argv[1:])
