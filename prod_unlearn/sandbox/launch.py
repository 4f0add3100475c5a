"""Starting one sandboxed run: the child program (child.py) with its isolation plan (the minimal
root's links and binds), its own uid, output, time and size limits; cleaning up after it whatever
happened. The policy (which layers, the probe, the public API): sandbox/__init__.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prod_unlearn.sandbox.judge import CODEC, SERVER, Judge, kill_group, run_judge
from prod_unlearn.sandbox.seccomp import seccomp_program

NOBODY = 65534


# Each run gets its own uid from this range (root callers): RLIMIT_NPROC counts per uid, so a
# shared uid would let parallel runs (and a fork bomb in one of them) eat each other's budget.
RUN_UID_BASE, RUN_UID_SPAN = 1_900_000_000, 200_000_000


MIN_PROCESS_MB = 32  # the interpreter itself needs ~20 MB of address space


SETUP_ERROR_RC = 121


ERROR_MARK = "__prod_unlearn_sandbox_error__"


LAYERS_MARK = "__prod_unlearn_sandbox_layers__"


CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


_uid_counter = itertools.count()


@dataclass
class SandboxResult:
    passed: bool  # exited 0 within its limits (with ``judge``: the judge's tests passed)
    status: str  # passed | failed | timeout | error (the sandbox itself could not run it)
    stdout: str
    stderr: str
    returncode: int | None = None
    seconds: float = 0.0
    checked: bool | None = None  # with ``judge``: the judge's tests passed; else None


# Best-effort network cut for machines without a network namespace (see the module docstring).
NET_PREAMBLE = r"""
import socket as _s
def _no_net(*a, **k):
    raise OSError(101, "network disabled by the sandbox")
for _n in ("connect", "connect_ex", "bind", "sendto", "sendmsg", "listen"):
    setattr(_s.socket, _n, _no_net)
_s.create_connection = _s.getaddrinfo = _s.gethostbyname = _s.create_server = _no_net
del _s, _n, _no_net
"""


@lru_cache(maxsize=1)
def _need_paths() -> tuple[str, ...]:
    """Paths the program's interpreter must reach (for the root -> unprivileged uid switch)."""
    import sysconfig

    paths = {
        os.path.realpath(sys.executable),
        os.path.realpath(sys.prefix),
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sysconfig.get_paths()["stdlib"]),
        os.path.realpath(os.__file__),
    }
    return tuple(sorted(paths))


@lru_cache(maxsize=1)
def _root_plan() -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """What the minimal root holds: (symlinks, bind-mounted paths).

    The system folders the interpreter and its extension modules load from, ld.so's cache, and
    the Python install (venv and base interpreter, unresolved and resolved). Nothing else: no
    /tmp, /run, /var, /home, /root, /dev/shm or project folder of the host.
    """
    import sysconfig

    links, binds = [], set()
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            binds.add(top)
    for f in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"):
        if os.path.exists(f):
            binds.add(os.path.realpath(f))
    py = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(sys.executable),
        sysconfig.get_paths()["stdlib"],
        os.path.dirname(os.__file__),
    ]
    for p in py:
        if p and os.path.exists(p):
            binds.add(os.path.realpath(p))
    exe = sys.executable
    for _ in range(16):  # every hop of the interpreter's symlink chain
        binds.add(os.path.dirname(os.path.realpath(os.path.dirname(exe)) + "/x"))
        if not os.path.islink(exe):
            break
        exe = os.path.join(os.path.dirname(exe), os.readlink(exe))
    link_names = {a for a, _ in links}
    kept: list[str] = []
    for b in sorted(binds, key=len):
        if any(b == k or b.startswith(k.rstrip("/") + "/") for k in kept) or b in link_names:
            continue
        kept.append(b)
    for p in py + [sys.executable]:  # an unresolved path that is a symlink to a bound place
        if (
            p
            and os.path.islink(p.rstrip("/"))
            and os.path.isdir(p)
            and not any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept)
        ):
            links.append((p.rstrip("/"), os.path.realpath(p)))
    return tuple(links), tuple(kept)


def _run_uid() -> int:
    return RUN_UID_BASE + (os.getpid() * 4096 + next(_uid_counter)) % RUN_UID_SPAN


def _read(f, limit: int, tail: bool) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit) if tail else 0)
    return f.read(limit).decode("utf-8", "replace")


def _rmtree(path: str) -> None:
    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def launch(
    code: str,
    timeout: float,
    memory_mb: int,
    nproc: int,
    file_mb: int,
    max_output: int,
    layers: list[str],
    probe: bool,
    judge: Judge | None = None,
    hide: tuple[str, ...] = (),
) -> tuple[SandboxResult, list[str]]:
    t0 = time.time()
    deadline = time.monotonic() + timeout
    root = tempfile.mkdtemp(prefix="prod-unlearn-sandbox-")
    work = os.path.join(root, "work")
    drop = "drop_uid" in layers and os.getuid() == 0
    uid = _run_uid() if drop else NOBODY
    fds: list[int] = []
    verdict, judge_err, judge_timed_out = "", "", False
    try:
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "prog.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if drop:  # the run's uid must reach its cwd (also when no tmpfs is mounted over it)
            os.chmod(root, 0o711)
            for p in (work, os.path.join(work, "prog.py")):
                os.chown(p, uid, uid)
        if judge is not None:  # calls: judge -> program; results: program -> judge
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            fds = [req_r, req_w, resp_r, resp_w]
        links, binds = _root_plan()
        cfg: dict[str, Any] = {
            "layers": layers,
            "probe": probe,
            "work": work,
            "base": root,
            "python": sys.executable,
            "need": list(_need_paths()),
            "uid": uid,
            "cpu_s": int(math.ceil(timeout)) + 1,
            "mem": (int(memory_mb) << 20) // max(1, int(nproc)),
            "nproc": int(nproc),
            "file_mb": int(file_mb),
            "ppid": os.getpid(),
            "preamble": NET_PREAMBLE,
            "error_mark": ERROR_MARK,
            "layers_mark": LAYERS_MARK,
            "error_rc": SETUP_ERROR_RC,
            "root_links": [list(x) for x in links],
            "root_binds": list(binds),
            "hide": sorted({os.path.realpath(h) for h in hide if os.path.exists(h)}),
            "serve": {"entry": judge.entry, "codec": CODEC, "server": SERVER} if judge is not None else None,
            "seccomp": seccomp_program(os.uname().machine),
            "fds": [req_r, resp_w] if judge is not None else [],
        }
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", CHILD, json.dumps(cfg)],
                    cwd=work,
                    env={"PATH": "/usr/bin:/bin"},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=tuple(cfg["fds"]),
                )
            except OSError as e:
                return SandboxResult(
                    False, "error", "", f"sandbox: could not start: {e}", None, round(time.time() - t0, 3)
                ), []
            for fd in cfg["fds"]:  # only the program holds its ends: its death is the judge's EOF
                os.close(fd)
                fds.remove(fd)
            if judge is not None:
                verdict, judge_err, judge_timed_out = run_judge(
                    judge, req_w, resp_r, max_output, deadline, int(memory_mb) << 20, cfg["cpu_s"]
                )
                for fd in fds:
                    os.close(fd)
                fds = []  # the program's calls end (EOF): a server exits, a hung one is killed below
            timed_out = _wait_unreaped(proc, deadline) or judge_timed_out
            kill_group(proc.pid)  # leader not reaped yet (Linux): its group id cannot have been reused
            rc = proc.wait()
            stdout = _read(out, max_output, tail=False)
            stderr = _read(err, max_output, tail=True)
    finally:
        for fd in fds:
            os.close(fd)
        _rmtree(root)
    active: list[str] = []
    lines = []
    for line in stderr.splitlines(keepends=True):
        if line.startswith(LAYERS_MARK) and not active:
            try:  # the child's own report comes first; a program may print a fake one
                active = [str(x) for x in json.loads(line[len(LAYERS_MARK) :])]
                continue
            except (ValueError, TypeError):
                pass
        lines.append(line)
    stderr = "".join(lines) + (f"judge: {judge_err}\n" if judge_err else "")
    checked = None if judge is None else verdict == "PASSED"
    if timed_out or rc in (-signal.SIGXCPU,):
        status = "timeout"
    elif rc == SETUP_ERROR_RC and ERROR_MARK in stderr:
        status = "error"
    elif checked or (checked is None and rc == 0):
        status = "passed"
    else:
        status = "failed"
    return SandboxResult(status == "passed", status, stdout, stderr, rc, round(time.time() - t0, 3), checked), active


def _wait_unreaped(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for ``proc`` to exit without reaping it; True if the deadline (monotonic) came first."""
    if not hasattr(os, "waitid"):  # macOS: reap, then kill the group (tiny pid-reuse window)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            return False
        except subprocess.TimeoutExpired:
            return True
    delay = 0.001
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return False
        except ChildProcessError:
            return False
        now = time.monotonic()
        if now >= deadline:
            return True
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)
