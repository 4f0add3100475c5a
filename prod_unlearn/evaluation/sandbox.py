"""Run untrusted, model-generated Python in a contained child process.

``run_python(code)`` writes ``code`` to a fresh directory and runs it with the current
interpreter (``python -I``) under a small bootstrap that builds the sandbox first. Layers, the
strongest the machine allows (probed once per process; ``isolation()`` says which are active):

Always (any POSIX system):
  * a separate process in its own session; at the end (normal exit or timeout) the whole
    process group gets SIGKILL, with the leader still unreaped so its group id cannot be reused;
  * wall-time limit (``timeout``), RLIMIT_CPU (timeout + 1 s), RLIMIT_AS (``memory_mb``),
    RLIMIT_NPROC (``max_processes``: a fork bomb hits EAGAIN), RLIMIT_FSIZE (``max_file_mb``,
    also caps stdout/stderr, which go to unlinked temporary files), RLIMIT_NOFILE, no core files;
  * cwd = its own temporary directory, empty environment (PATH=/usr/bin:/bin, and HOME/TMPDIR
    pointing into the sandbox directory), stdin = /dev/null.

Linux, where the kernel lets us (``unshare(2)`` through ctypes; no external binary needed):
  * ``userns``: when not root, a user namespace in which the rest is allowed (uid mapped to
    itself, so ``execve`` of the program drops every capability);
  * ``netns``: a network namespace with nothing but a down loopback -- no network at all, not
    even 127.0.0.1;
  * ``mountns`` + ``readonly_fs``: a mount namespace in which every mount is read-only
    (``mount_setattr(AT_RECURSIVE)``, per-mount remount as a fallback);
  * ``tmpfs_workdir``: the working directory is a fresh tmpfs (size-capped, the only writable
    place), gone with the namespace;
  * ``pidns``: a PID namespace; its init is a tiny reaper, so when the program exits (or is
    killed) the kernel kills every process it left behind, even ones that escaped with setsid();
    ``proc``: a fresh /proc showing only the sandbox's processes;
  * ``ipcns``: private SysV IPC;
  * ``drop_uid``: when the caller is root (RLIMIT_NPROC does not apply to uid 0 and root owns
    every file), the program runs as ``nobody`` (65534). Directories on the interpreter's path
    that ``nobody`` cannot enter (e.g. /root with a pyenv under it) are covered with a tmpfs in
    the mount namespace and only the interpreter's subtree is bind-mounted back (``unhide``): the
    rest of root's home is invisible to the program. If that fails, ``drop_caps``: the program
    stays uid 0 but with an empty capability bounding set and the NOROOT securebits, so it cannot
    undo the read-only mounts (RLIMIT_NPROC then does not bind: ``isolation()`` says so).

Without a network namespace a preamble replaces socket connect/bind/sendto/getaddrinfo with
functions that raise ``OSError``. That preamble is *best-effort only* (``_socket``, ``ctypes``
or a subprocess get around it); only ``netns`` really cuts the network. Likewise, without a
mount namespace (or uid drop) the program can write wherever the caller can; check
``isolation()`` before trusting it with hostile code. Reads stay possible in every mode: of
world-readable files (the stdlib, /etc), and, for a non-root caller, of whatever that user can
read (only root's home is hidden, by ``unhide``); with ``netns`` nothing read can leave except
through stdout/stderr, which only the caller sees.

The environment variable ``PROD_UNLEARN_SANDBOX=plain`` disables the namespaces (rlimits, the
process-group kill, uid drop when it works, and the socket preamble remain).

Cost: ~0.05-0.1 s per program on a 2-core machine with every layer on (the probe, once per
process, ~0.15 s). Checked here as root (layers: mountns, netns, pidns, ipcns, readonly_fs,
tmpfs_workdir, proc, unhide, drop_uid) and as an unprivileged user (userns instead of unhide +
drop_uid; the program then has no capabilities and cannot remount anything).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

NOBODY = 65534
SETUP_ERROR_RC = 121
ERROR_MARK = "__prod_unlearn_sandbox_error__"
LAYERS_MARK = "__prod_unlearn_sandbox_layers__"
NS_LAYERS = ("userns", "mountns", "netns", "pidns", "ipcns", "readonly_fs", "tmpfs_workdir", "proc", "unhide")


@dataclass
class SandboxResult:
    passed: bool          # the program exited with status 0 within its limits
    status: str           # passed | failed | timeout | error (the sandbox itself could not run it)
    stdout: str
    stderr: str
    returncode: int | None = None
    seconds: float = 0.0


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

# Runs as the child process (`python -I -S -c BOOTSTRAP cfg`) before the untrusted program:
# builds the namespaces and mounts, sets limits, drops privileges, then execs the program.
# In probe mode every layer is best effort and the active ones are reported on stderr;
# otherwise every requested layer must succeed or the run is a setup error.
BOOTSTRAP = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
want = set(cfg["layers"])
probe = cfg["probe"]
done = set()
libc = ctypes.CDLL(None, use_errno=True)

def fail(msg):
    os.write(2, ("%s %s\n" % (cfg["error_mark"], msg)).encode())
    os._exit(cfg["error_rc"])

def call(fn, *args):
    r = fn(*args)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

def layer(name, fn):
    if name not in want:
        return False
    try:
        fn()
        done.add(name)
        return True
    except Exception as e:
        if not probe:
            fail("%s: %s" % (name, e))
        return False

if os.getppid() != cfg["ppid"]:
    os._exit(cfg["error_rc"])
try:
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG: die with the caller
except Exception:
    pass
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
work = cfg["work"]
with open(os.path.join(work, "prog.py"), "rb") as f:
    program = f.read()
uid, gid = os.getuid(), os.getgid()
root = uid == 0

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x20000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24

def mount(src, target, fstype, flags, data):
    call(libc.mount, src and src.encode(), target.encode(), fstype and fstype.encode(), ctypes.c_ulong(flags),
         data and data.encode())

def userns():
    call(libc.unshare, CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)

def mountns():
    call(libc.unshare, CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)

if not root:
    layer("userns", userns)
privileged = root or "userns" in done
if privileged:
    layer("mountns", mountns)
    layer("netns", lambda: call(libc.unshare, CLONE_NEWNET))
    layer("ipcns", lambda: call(libc.unshare, CLONE_NEWIPC))

# Directories nobody cannot enter on the way to the interpreter: hide them under a tmpfs and
# bind the interpreter's subtree back (root only, and only inside our own mount namespace).
def blockers():
    out = []
    for p in cfg["need"]:
        parts = p.strip("/").split("/")
        for i in range(len(parts) - 1):
            d = "/" + "/".join(parts[:i + 1])
            st = os.stat(d)
            if not st.st_mode & 0o001:
                out.append((d, parts[i + 1]))
                break
    return out

def unhide():
    for _ in range(8):
        todo = blockers()
        if not todo:
            return
        parents = {}
        for d, child in todo:
            parents.setdefault(d, set()).add(child)
        for d, children in parents.items():
            fds = {c: os.open(os.path.join(d, c), os.O_PATH) for c in children}
            mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            for c, fd in fds.items():
                target = os.path.join(d, c)
                if os.path.isdir("/proc/self/fd/%d" % fd):
                    os.mkdir(target)
                else:
                    open(target, "w").close()
                mount("/proc/self/fd/%d" % fd, target, None, MS_BIND | MS_REC, None)
                os.close(fd)
    if blockers():
        raise OSError("could not open a path to the interpreter")

class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

def readonly():
    attr = MountAttr(1, 0, 0, 0)                     # MOUNT_ATTR_RDONLY
    r = libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr))  # mount_setattr
    if r == 0:
        return
    flagmap = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    for row in rows:
        target = row[4].encode().decode("unicode_escape")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in row[5].split(","):
            flags |= flagmap.get(opt, 0)
        try:
            mount(None, target, None, flags, None)
        except OSError as e:
            if e.errno not in (2, 20):              # vanished / not a directory: nothing to protect
                raise

def workdir():
    owner = "uid=%d,gid=%d," % (cfg["nobody"], cfg["nobody"]) if root and "drop_uid" in want else ""
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV,
          "%smode=0700,size=%dm,nr_inodes=4096" % (owner, cfg["file_mb"] * 2 + 8))
    os.chdir(work)
    with open("prog.py", "wb") as f:
        f.write(program)
    if owner:
        os.chown("prog.py", cfg["nobody"], cfg["nobody"])

if "mountns" in done:
    if root:
        layer("unhide", unhide)
    layer("readonly_fs", readonly)
    layer("tmpfs_workdir", workdir)
os.chdir(work)

def program_argv():
    argv = [cfg["python"], "-I"]
    if "netns" in done:
        return argv + ["prog.py"]
    return argv + ["-c", cfg["preamble"] + "\nimport runpy\nrunpy.run_path('prog.py', run_name='__main__')\n"]

def become_program():
    # Limits, privileges, then exec; runs in the process that becomes the program.
    if root and "drop_uid" in want:
        try:
            os.setgroups([])
            os.setresgid(cfg["nobody"], cfg["nobody"], cfg["nobody"])
            os.setresuid(cfg["nobody"], cfg["nobody"], cfg["nobody"])
            done.add("drop_uid")
        except Exception as e:
            if not probe:
                fail("drop_uid: %s" % e)
    elif root and "drop_caps" in want:
        # Still uid 0 but without any capability, now or after execve: it cannot undo the mounts.
        def drop_caps():
            call(libc.prctl, 28, 0x3F, 0, 0, 0)     # PR_SET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, locked
            call(libc.prctl, 47, 4, 0, 0, 0)        # PR_CAP_AMBIENT_CLEAR_ALL
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last = int(f.read())
            for cap in range(last + 1):
                call(libc.prctl, 24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
        layer("drop_caps", drop_caps)
    cpu = cfg["cpu_s"]
    for res, lim in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (cfg["mem"], cfg["mem"])),
                     (resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"])), (resource.RLIMIT_NOFILE, (256, 256)),
                     (resource.RLIMIT_FSIZE, (cfg["file_mb"] << 20, cfg["file_mb"] << 20))):
        resource.setrlimit(res, lim)
    try:
        libc.prctl(38, 1, 0, 0, 0)                  # PR_SET_NO_NEW_PRIVS
    except Exception:
        pass
    for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    if probe:
        os.write(2, ("%s %s\n" % (cfg["layers_mark"], json.dumps(sorted(done)))).encode())
    env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work}
    try:
        os.execve(cfg["python"], program_argv(), env)
    except Exception as e:
        fail("exec %s: %s" % (cfg["python"], e))

if not (privileged and layer("pidns", lambda: call(libc.unshare, CLONE_NEWPID))):
    become_program()

# PID namespace: fork its init (a reaper), which forks the program. When the program ends, init
# exits and the kernel kills whatever the program left in the namespace. The program's raw wait
# status comes back through a pipe so this process can exit the same way.
rd, wr = os.pipe()
init = os.fork()
if init == 0:
    os.close(rd)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    if "proc" in want:
        def newproc():
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        layer("proc", newproc)
    child = os.fork()
    if child == 0:
        os.close(wr)
        become_program()
    while True:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            os._exit(cfg["error_rc"])
        if pid == child:
            os.write(wr, str(st).encode())
            os._exit(0)
os.close(wr)
_, st = os.waitpid(init, 0)
raw = os.read(rd, 64)
if not raw:
    if os.WIFSIGNALED(st):
        fail("namespace init killed by signal %d" % os.WTERMSIG(st))
    os._exit(os.WEXITSTATUS(st) if os.WIFEXITED(st) else cfg["error_rc"])
st = int(raw)
if os.WIFSIGNALED(st):
    sig = os.WTERMSIG(st)
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)
os._exit(os.WEXITSTATUS(st))
"""

_lock = threading.Lock()
_layers: list[str] | None = None


@lru_cache(maxsize=1)
def _need_paths() -> tuple[str, ...]:
    """Paths the program's interpreter must reach (for the root -> nobody switch)."""
    import sysconfig
    paths = {os.path.realpath(sys.executable), os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
             os.path.realpath(sysconfig.get_paths()["stdlib"]), os.path.realpath(os.__file__)}
    return tuple(sorted(paths))


def _all_layers() -> list[str]:
    if sys.platform != "linux" or os.environ.get("PROD_UNLEARN_SANDBOX", "").lower() == "plain":
        base = []
    else:
        root_only, user_only = ("unhide",), ("userns",)
        base = [n for n in NS_LAYERS if n not in (user_only if os.getuid() == 0 else root_only)]
    return base + (["drop_uid", "drop_caps"] if os.getuid() == 0 else [])


def isolation() -> dict:
    """Which isolation layers are active on this machine (probed once, by running a probe program).

    Returns ``{"layers": [...active...], "missing": [...wanted but unavailable...],
    "network": "namespace" | "preamble (best-effort)", "filesystem": "read-only" | "uid nobody" |
    "none"}``.
    """
    layers = _probe()
    missing = [n for n in _all_layers() if n not in layers and not (n == "drop_caps" and "drop_uid" in layers)]
    fs = "read-only except the sandbox dir" if "readonly_fs" in layers else (
        "uid nobody (writes limited to world-writable places)" if "drop_uid" in layers else "none")
    return {"layers": layers, "missing": missing,
            "network": "namespace (no interfaces)" if "netns" in layers else "socket preamble (best-effort)",
            "filesystem": fs}


def _probe() -> list[str]:
    global _layers
    with _lock:
        if _layers is not None:
            return list(_layers)
        check = "import json, socket, sys\nprint('probe-ok')\n"
        wanted = _all_layers()
        ns = [n for n in wanted if n not in ("drop_uid", "drop_caps")]
        if os.getuid() == 0:   # best first: nobody, else root without capabilities; namespaces, else none
            attempts = [ns + ["drop_uid"], [n for n in ns if n != "unhide"] + ["drop_caps"], ["drop_uid"],
                        ["drop_caps"], []]
        else:
            attempts = [ns, []]
        layers: list[str] = []
        for attempt in attempts:
            res, active = _launch(check, 10.0, 256, 16, 4, 4096, attempt, probe=True)
            if res.status == "passed" and "probe-ok" in res.stdout:
                layers = [n for n in attempt if n in active]
                break
        _layers = layers
        return list(layers)


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 512, max_processes: int = 32,
               max_file_mb: int = 16, max_output: int = 65536) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox; ``passed`` iff it exits 0 within the limits.

    status: ``passed``; ``failed`` (non-zero exit, an exception, killed by a signal other than
    the CPU limit); ``timeout`` (wall time or CPU time exceeded); ``error`` (the sandbox could not
    be built: nothing of the program ran). stdout keeps its first ``max_output`` characters,
    stderr its last.
    """
    return _launch(code, timeout, memory_mb, max_processes, max_file_mb, max_output, _probe(), probe=False)[0]


def run_many(codes: list[str], workers: int = 2, **kw) -> list[SandboxResult]:
    """``run_python`` over many programs, ``workers`` at a time; results in input order."""
    _probe()
    if workers <= 1 or len(codes) <= 1:
        return [run_python(c, **kw) for c in codes]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_python(c, **kw), codes))


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


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _launch(code: str, timeout: float, memory_mb: int, nproc: int, file_mb: int, max_output: int,
            layers: list[str], probe: bool) -> tuple[SandboxResult, list[str]]:
    t0 = time.time()
    root = tempfile.mkdtemp(prefix="prod-unlearn-sandbox-")
    work = os.path.join(root, "work")
    drop = "drop_uid" in layers and os.getuid() == 0
    try:
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "prog.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if drop:  # nobody must reach its cwd (also when no tmpfs is mounted over it)
            os.chmod(root, 0o711)
            for p in (work, os.path.join(work, "prog.py")):
                os.chown(p, NOBODY, NOBODY)
        cfg = {"layers": layers, "probe": probe, "work": work, "python": sys.executable, "need": list(_need_paths()),
               "nobody": NOBODY, "cpu_s": int(math.ceil(timeout)) + 1, "mem": int(memory_mb) << 20,
               "nproc": int(nproc), "file_mb": int(file_mb), "ppid": os.getpid(), "preamble": NET_PREAMBLE,
               "error_mark": ERROR_MARK, "layers_mark": LAYERS_MARK, "error_rc": SETUP_ERROR_RC}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", BOOTSTRAP, json.dumps(cfg)],
                                        cwd=work, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True, close_fds=True)
            except OSError as e:
                return SandboxResult(False, "error", "", f"sandbox: could not start: {e}", None,
                                     round(time.time() - t0, 3)), []
            timed_out = _wait_unreaped(proc, time.monotonic() + timeout)
            _kill_group(proc.pid)          # leader not reaped yet (Linux): its group id cannot have been reused
            rc = proc.wait()
            stdout = _read(out, max_output, tail=False)
            stderr = _read(err, max_output, tail=True)
    finally:
        _rmtree(root)
    active: list[str] = []
    lines = []
    for line in stderr.splitlines(keepends=True):
        if line.startswith(LAYERS_MARK):
            active = json.loads(line[len(LAYERS_MARK):])
        else:
            lines.append(line)
    stderr = "".join(lines)
    if timed_out or rc in (-signal.SIGXCPU,):
        status = "timeout"
    elif rc == SETUP_ERROR_RC and ERROR_MARK in stderr:
        status = "error"
    elif rc == 0:
        status = "passed"
    else:
        status = "failed"
    return SandboxResult(status == "passed", status, stdout, stderr, rc, round(time.time() - t0, 3)), active


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

