"""Run untrusted, model-generated Python in a contained child process.

(~450 lines: the isolation probes and their fallbacks are one security argument, kept in one place.)

``run_python(code)`` writes ``code`` to a fresh directory and runs it with the current
interpreter (``python -I``) under ``sandbox/child.py``, which builds the sandbox first. Layers,
the strongest the machine allows (probed once per process; ``isolation()`` says which are active):

Always (any POSIX system):
  * a separate process in its own session; at the end (normal exit or timeout) the whole
    process group gets SIGKILL, with the leader still unreaped so its group id cannot be reused;
  * wall-time limit (``timeout``), RLIMIT_CPU (timeout + 1 s), RLIMIT_NPROC (``max_processes``,
    threads included: a fork bomb hits EAGAIN), RLIMIT_AS per process = ``memory_mb`` /
    ``max_processes``, so every process the program starts *together* stays under ``memory_mb``
    (a cgroup would allow one shared budget, but the machines we run on either have no writable
    cgroup v2 memory controller or reserve it for their own supervisor); RLIMIT_FSIZE
    (``max_file_mb``, also caps stdout/stderr, which go to unlinked temporary files),
    RLIMIT_NOFILE, no core files;
  * cwd = its own temporary directory, empty environment (PATH=/usr/bin:/bin, and HOME/TMPDIR
    pointing into the sandbox directory), stdin = /dev/null.

Linux, where the kernel lets us (``unshare(2)`` through ctypes; no external binary needed):
  * ``userns``: when not root, a user namespace in which the rest is allowed (uid mapped to
    itself, so ``execve`` of the program drops every capability);
  * ``netns``: a network namespace with nothing but a down loopback -- no network at all, not
    even 127.0.0.1, and no abstract Unix sockets of the host;
  * ``mountns`` + ``readonly_fs``: a mount namespace in which every mount is read-only
    (``mount_setattr(AT_RECURSIVE)``, per-mount remount as a fallback);
  * ``minimal_root``: the program's root is a read-only tmpfs holding only the Python install,
    the system library folders (/usr, /lib...), /dev/null-like nodes and its own working
    directory (``pivot_root``; the host tree is detached). Host paths -- path-based Unix sockets
    under /tmp or /run, the caller's home and project -- do not exist for it;
  * ``tmpfs_workdir``: the working directory is a fresh tmpfs (size-capped, the only writable
    place), gone with the namespace;
  * ``pidns``: a PID namespace; its init is a tiny reaper, so when the program exits (or is
    killed) the kernel kills every process it left behind, even ones that escaped with setsid();
    ``proc``: a fresh /proc showing only the sandbox's processes;
  * ``ipcns``: private SysV IPC;
  * ``seccomp``: a filter that refuses new namespaces of every kind (so no nested user + mount
    namespace with a tmpfs of its own), mounts, pivot_root/chroot, ptrace, bpf, keyrings and the
    shared memory that RLIMIT_AS does not see (SysV shm, memfd);
  * ``drop_uid``: when the caller is root (RLIMIT_NPROC does not apply to uid 0 and root owns
    every file), the program runs as an unprivileged uid of its own (one per run, so parallel
    runs never share a process count). Directories on the interpreter's path that this uid
    cannot enter (e.g. /root with a pyenv under it) are covered with a tmpfs in the mount
    namespace and only the interpreter's subtree is bind-mounted back (``unhide``). If that
    fails, ``drop_caps``: the program stays uid 0 but with an empty capability bounding set and
    the NOROOT securebits (RLIMIT_NPROC then does not bind: ``isolation()`` says so).

Refusal: model-generated code is only run when ``isolation()["isolated"]`` (every layer of
``REQUIRED`` active). Otherwise ``run_python`` raises ``SandboxUnavailable`` naming what is
missing, unless the caller passes ``allow_unsafe=True`` or the user sets
``PROD_UNLEARN_SANDBOX_UNSAFE=1``. ``PROD_UNLEARN_SANDBOX=plain`` disables the namespaces
(rlimits, the process-group kill, the uid switch when it works, and a best-effort socket
preamble remain) and therefore needs the unsafe switch too.

Grading (``judge=``): a verdict that untrusted code cannot decide. The program's own output, exit
status and memory belong to it (it can print anything, exit 0 early, patch ``builtins.exec``,
read a secret from the harness's frames or ``/proc/self/mem``, or return an object whose
``__eq__`` is always true), so the tests never run in its process. The sandboxed program only
*serves* its function: it reads calls from a pipe, runs them and writes back the results as plain
data (``CODEC``: None, bool, int, float, str, bytes and lists, tuples, dicts and sets of them,
exact types only; anything else is refused). A second, fresh interpreter outside the sandbox --
the judge -- runs the trusted tests (``Judge.source``, e.g. HumanEval's ``check``) with a proxy
in place of the candidate and decides alone (exit status 0 and a last line PASSED; it gets the tests
on stdin, under the run's memory and CPU limits). The program never sees the tests or the expected
values -- nor, with ``hide=``, the data set they come from -- and a crash, a garbled or oversized
reply, or a hang is a failure of that program only.

Cost: ~0.05-0.1 s per program on a 2-core machine with every layer on (the probe, once per
process, ~0.15 s). Checked here as root (layers: mountns, netns, pidns, ipcns, readonly_fs,
minimal_root, tmpfs_workdir, proc, unhide, seccomp, drop_uid).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from prod_unlearn.sandbox.judge import Judge
from prod_unlearn.sandbox.launch import MIN_PROCESS_MB, SandboxResult, launch

__all__ = ["Judge", "SandboxResult", "SandboxUnavailable", "isolation", "require_isolation", "run_many", "run_python"]

NS_LAYERS = (
    "userns",
    "mountns",
    "netns",
    "pidns",
    "ipcns",
    "readonly_fs",
    "minimal_root",
    "tmpfs_workdir",
    "proc",
    "unhide",
    "seccomp",
)
# Without every one of these, hostile code could write host files, reach the network or host
# sockets, outlive its run, escape the memory budget, or make namespaces of its own.
REQUIRED = ("mountns", "netns", "pidns", "readonly_fs", "minimal_root", "tmpfs_workdir", "seccomp")
UNSAFE_ENV = "PROD_UNLEARN_SANDBOX_UNSAFE"


class SandboxUnavailable(RuntimeError):
    """The machine cannot isolate model-generated code and the caller did not accept the risk."""


_lock = threading.Lock()
_layers: list[str] | None = None


def _all_layers() -> list[str]:
    if sys.platform != "linux" or os.environ.get("PROD_UNLEARN_SANDBOX", "").lower() == "plain":
        base = []
    else:
        root_only, user_only = ("unhide",), ("userns",)
        base = [n for n in NS_LAYERS if n not in (user_only if os.getuid() == 0 else root_only)]
    return base + (["drop_uid", "drop_caps"] if os.getuid() == 0 else [])


def _required() -> list[str]:
    if sys.platform != "linux":
        return list(REQUIRED) + ["linux"]
    return list(REQUIRED) + (["drop_uid"] if os.getuid() == 0 else ["userns"])


def isolation() -> dict:
    """Which isolation layers are active on this machine (probed once, by running a probe program).

    Returns ``{"layers": [...active...], "missing": [...wanted but unavailable...],
    "isolated": bool (every required layer active), "missing_required": [...],
    "network": ..., "filesystem": ..., "memory": ...}``.
    """
    layers = _probe()
    missing = [n for n in _all_layers() if n not in layers and not (n == "drop_caps" and "drop_uid" in layers)]
    missing_required = [n for n in _required() if n not in layers]
    fs = (
        "minimal read-only root; writable only in the sandbox dir"
        if "minimal_root" in layers
        else (
            "read-only except the sandbox dir"
            if "readonly_fs" in layers
            else ("unprivileged uid (writes limited to world-writable places)" if "drop_uid" in layers else "none")
        )
    )
    nproc_binds = "drop_uid" in layers or os.getuid() != 0
    return {
        "layers": layers,
        "missing": missing,
        "isolated": not missing_required,
        "missing_required": missing_required,
        "network": "namespace (no interfaces)" if "netns" in layers else "socket preamble (best-effort)",
        "filesystem": fs,
        "memory": "whole program: processes x per-process limit"
        if nproc_binds and "seccomp" in layers
        else "per process only (the process cap does not bind or shared memory is not blocked)",
    }


def require_isolation(allow_unsafe: bool | None = None) -> dict:
    """Raise ``SandboxUnavailable`` unless model code can be isolated here (or the user accepted the risk)."""
    info = isolation()
    if info["isolated"] or allow_unsafe or os.environ.get(UNSAFE_ENV, "") in ("1", "true", "yes"):
        return info
    why = []
    if os.environ.get("PROD_UNLEARN_SANDBOX", "").lower() == "plain":
        why.append("PROD_UNLEARN_SANDBOX=plain disables the namespaces")
    elif sys.platform != "linux":
        why.append("namespaces need Linux")
    else:
        why.append(
            "the kernel or the container refused them (user namespaces, mount/pid/net namespaces, "
            "seccomp or pivot_root)"
        )
    raise SandboxUnavailable(
        f"the sandbox cannot isolate model-generated code on this machine: missing "
        f"{', '.join(info['missing_required'])} ({'; '.join(why)}); without them the code could write your files, "
        f"reach the network and leave processes running. Set {UNSAFE_ENV}=1 to run it anyway"
    )


def _probe() -> list[str]:
    global _layers
    with _lock:
        if _layers is not None:
            return list(_layers)
        check = "import json, socket, sys\nprint('probe-ok')\n"
        wanted = _all_layers()
        ns = [n for n in wanted if n not in ("drop_uid", "drop_caps")]
        no_root = [n for n in ns if n != "minimal_root"]
        if os.getuid() == 0:  # best first: own uid, else root without capabilities; namespaces, else none
            attempts = [
                ns + ["drop_uid"],
                no_root + ["drop_uid"],
                [n for n in ns if n != "unhide"] + ["drop_caps"],
                ["drop_uid"],
                ["drop_caps"],
                [],
            ]
        else:
            attempts = [ns, no_root, []]
        layers: list[str] = []
        for attempt in attempts:
            res, active = launch(check, 10.0, 256, 4, 4, 4096, attempt, probe=True)
            if res.status == "passed" and "probe-ok" in res.stdout:
                layers = [n for n in attempt if n in active]
                break
        _layers = layers
        return list(layers)


def run_python(
    code: str,
    timeout: float = 5.0,
    memory_mb: int = 512,
    max_processes: int = 4,
    max_file_mb: int = 16,
    max_output: int = 65536,
    judge: Judge | None = None,
    hide: tuple[str, ...] = (),
    allow_unsafe: bool | None = None,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox.

    ``memory_mb`` bounds the whole program (all its processes together): each of at most
    ``max_processes`` processes/threads gets ``memory_mb / max_processes`` of address space.
    status: ``passed``; ``failed`` (non-zero exit, an exception, killed by a signal other than
    the CPU limit, or -- with ``judge`` -- the judge's tests did not pass);
    ``timeout`` (wall time or CPU time exceeded); ``error`` (the sandbox could not be built:
    nothing of the program ran). stdout keeps its first ``max_output`` characters, stderr its last.

    ``judge``: the program then only serves ``judge.entry`` and the judge's verdict alone decides
    (module docstring); stderr ends with the judge's reason for a failure. ``hide``: host files or
    folders the program must not read (the tests' own data set: its answers, canonical solutions)
    are covered with empty ones (in the mount namespace; without one, i.e. only when unsafe, they
    stay readable). Raises
    ``SandboxUnavailable`` where the code cannot be isolated, unless ``allow_unsafe``.
    """
    for name, v, lo in (
        ("timeout", timeout, 1e-3),
        ("memory_mb", memory_mb, 1),
        ("max_processes", max_processes, 1),
        ("max_file_mb", max_file_mb, 1),
        ("max_output", max_output, 1),
    ):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo):
            raise ValueError(f"run_python: {name}={v!r}: expected a positive number")
    if memory_mb / max_processes < MIN_PROCESS_MB:
        raise ValueError(
            f"run_python: memory_mb={memory_mb} over max_processes={max_processes} leaves "
            f"{memory_mb / max_processes:.0f} MB a process; expected at least {MIN_PROCESS_MB}"
        )
    require_isolation(allow_unsafe)
    return launch(
        code, timeout, memory_mb, max_processes, max_file_mb, max_output, _probe(), probe=False, judge=judge, hide=hide
    )[0]


def run_many(codes: list[str], workers: int = 2, judges: list[Judge | None] | None = None, **kw) -> list[SandboxResult]:
    """``run_python`` over many programs, ``workers`` at a time; results in input order. One
    program's failure of any kind is its own result, never the batch's."""
    require_isolation(kw.get("allow_unsafe"))
    judges = list(judges) if judges is not None else [None] * len(codes)
    if len(judges) != len(codes):
        raise ValueError(f"run_many: {len(codes)} programs but {len(judges)} judges")

    def one(cj):
        try:
            return run_python(cj[0], judge=cj[1], **kw)
        except SandboxUnavailable:
            raise
        except Exception as e:  # a bug that one program triggers must not lose the batch
            return SandboxResult(
                False, "error", "", f"sandbox: {type(e).__name__}: {e}", None, 0.0, None if cj[1] is None else False
            )

    if workers <= 1 or len(codes) <= 1:
        return [one(cj) for cj in zip(codes, judges)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, zip(codes, judges)))
