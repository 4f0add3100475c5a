"""The sandbox's child: builds the isolation, then execs the untrusted program.

(A standalone program run with ``python -I -S``: it cannot import helpers from the package; the
caller builds what can be built outside, the seccomp filter and the judge's server.)

Run by ``sandbox/launch.py`` as ``python -I -S sandbox/child.py CFG_JSON`` (never imported by
the rest of the package; standard library only, and nothing on its own folder is imported). In
order it: dies with its caller; unshares the namespaces; hides directories ``nobody`` cannot
enter (``unhide``); makes every mount read-only (``readonly_fs``); builds a minimal root (a
read-only tmpfs holding only the Python install, the system libraries, a few /dev nodes and the
program's size-capped tmpfs working directory: ``minimal_root``), so no host path -- Unix
sockets under /tmp, /run, the caller's folders -- exists for the program; forks the PID
namespace's init, which mounts a fresh /proc and pivots into the minimal root; then, in the
process that becomes the program: switches to the run's own unprivileged uid (``drop_uid``),
sets the rlimits, sets NO_NEW_PRIVS, installs a seccomp filter (``seccomp``: no new
namespaces of any kind -- so no nested user namespace with its own tmpfs --, no mounts, no
SysV/memfd shared memory that would hold memory outside RLIMIT_AS) and execs the program.
Paths in ``cfg["hide"]`` (the tests' data set) are covered with empty ones in the mount namespace.

In probe mode every layer is best effort and the active ones are reported on stderr; otherwise
every requested layer must succeed or the run is a setup error (exit ``error_rc``).

With ``cfg["serve"]`` the program runs under ``judge.SERVER``: it runs the program, then answers
calls of its ``entry`` read from one inherited pipe with results written to another, as plain data
(``judge.py``: CODEC). The tests run in the judge, outside the sandbox: nothing here decides a verdict.
"""

import sys

if sys.path and sys.path[0]:
    sys.path.pop(0)  # this file's folder: nothing there may shadow the standard library

import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
MNT_DETACH = 2


def install_seccomp(libc, prog) -> None:
    """Install the filter the caller built (sandbox/seccomp.py); None: no table for this architecture."""
    if prog is None:
        raise OSError(f"seccomp: no syscall table for architecture {os.uname().machine}")

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    arr = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), ctypes.cast(arr, ctypes.POINTER(SockFilter)))
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS (required for seccomp)
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        e = ctypes.get_errno()
        raise OSError(e, "seccomp: " + os.strerror(e))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    want = set(cfg["layers"])
    probe = cfg["probe"]
    done = set()
    libc = ctypes.CDLL(None, use_errno=True)

    def fail(msg):
        os.write(2, f"{cfg['error_mark']} {msg}\n".encode())
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
                fail(f"{name}: {e}")
            return False

    if os.getppid() != cfg["ppid"]:
        os._exit(cfg["error_rc"])
    try:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the caller
    except Exception:
        pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    work = cfg["work"]
    with open(os.path.join(work, "prog.py"), "rb") as f:
        program = f.read()
    uid, gid = os.getuid(), os.getgid()
    root = uid == 0
    run_uid = cfg["uid"]

    def mount(src, target, fstype, flags, data):
        call(
            libc.mount,
            src and src.encode(),
            target.encode(),
            fstype and fstype.encode(),
            ctypes.c_ulong(flags),
            data and data.encode(),
        )

    def userns():
        call(libc.unshare, CLONE_NEWUSER)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
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

    # Directories the run's uid cannot enter on the way to the interpreter: hide them under a
    # tmpfs and bind the interpreter's subtree back (root only, inside our own mount namespace).
    def blockers():
        out = []
        for p in cfg["need"]:
            parts = p.strip("/").split("/")
            for i in range(len(parts) - 1):
                d = "/" + "/".join(parts[: i + 1])
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
                    if os.path.isdir(f"/proc/self/fd/{fd}"):
                        os.mkdir(target)
                    else:
                        open(target, "w").close()
                    mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None)
                    os.close(fd)
        if blockers():
            raise OSError("could not open a path to the interpreter")

    class MountAttr(ctypes.Structure):
        _fields_ = [
            ("attr_set", ctypes.c_uint64),
            ("attr_clr", ctypes.c_uint64),
            ("propagation", ctypes.c_uint64),
            ("userns_fd", ctypes.c_uint64),
        ]

    def readonly():
        attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
        r = libc.syscall(442, -100, b"/", 0x8000, ctypes.byref(attr), ctypes.sizeof(attr))  # mount_setattr
        if r == 0:
            return
        flagmap = {
            "nosuid": MS_NOSUID,
            "nodev": MS_NODEV,
            "noexec": MS_NOEXEC,
            "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME,
            "relatime": MS_RELATIME,
            "strictatime": MS_STRICTATIME,
        }
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
                if e.errno not in (2, 20):  # vanished / not a directory: nothing to protect
                    raise

    owner = f"uid={run_uid},gid={run_uid}," if root and "drop_uid" in want else ""
    newroot = cfg["base"]  # the minimal root is a tmpfs mounted over the run's own temp folder

    def minimal_root():
        # Everything below is created in our private mount namespace; the host sees nothing.
        mount("tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")

        def inside(p):
            return os.path.join(newroot, p.lstrip("/"))

        for link, target in cfg["root_links"]:  # /bin -> usr/bin and the like
            os.makedirs(os.path.dirname(inside(link)), exist_ok=True)
            os.symlink(target, inside(link))
        for src in cfg["root_binds"]:
            dst = inside(src)
            if os.path.isdir(src):
                os.makedirs(dst, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                open(dst, "w").close()
            mount(src, dst, None, MS_BIND | MS_REC, None)
        for d in ("proc", "tmp", "dev"):
            os.makedirs(inside(d), exist_ok=True)
        for node in ("null", "zero", "full", "random", "urandom"):
            src = "/dev/" + node
            if os.path.exists(src):
                open(inside(src), "w").close()
                mount(src, inside(src), None, MS_BIND, None)
        os.makedirs(inside(work), exist_ok=True)
        # read-only from now on: the program's only writable place is its working directory
        mount(None, newroot, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)

    def workdir():
        target = os.path.join(newroot, work.lstrip("/")) if "minimal_root" in done else work
        mount(
            "tmpfs",
            target,
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"{owner}mode=0700,size={cfg['file_mb'] * 2 + 8}m,nr_inodes=4096",
        )
        with open(os.path.join(target, "prog.py"), "wb") as f:
            f.write(program)
        if owner:
            os.chown(os.path.join(target, "prog.py"), run_uid, run_uid)

    if "mountns" in done:
        if root:
            layer("unhide", unhide)
        layer("readonly_fs", readonly)
        if "readonly_fs" in done:
            layer("minimal_root", minimal_root)
        layer("tmpfs_workdir", workdir)
        for path in cfg["hide"]:  # e.g. the tests' data set, with their answers: covered by an empty one
            target = os.path.join(newroot, path.lstrip("/")) if "minimal_root" in done else path
            try:
                if os.path.isdir(target):
                    mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
                elif os.path.exists(target):
                    mount("/dev/null", target, None, MS_BIND, None)
            except OSError as e:
                fail(f"hide {path}: {e}")

    def enter_root():
        # pivot_root(".", ".") then detach the old root: nothing of the host's tree stays reachable.
        os.chdir(newroot)
        call(libc.syscall, {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, -1), b".", b".")
        call(libc.umount2, b".", MNT_DETACH)
        os.chdir("/")

    def program_argv():
        argv = [cfg["python"], "-I"]
        preamble = "" if "netns" in done else cfg["preamble"]
        if cfg.get("serve"):
            src = cfg["serve"]["server"] % {
                "req_fd": cfg["fds"][0],
                "resp_fd": cfg["fds"][1],
                "entry": cfg["serve"]["entry"],
                "codec": cfg["serve"]["codec"],
                "preamble": preamble,
            }
            return argv + ["-c", src]
        if not preamble:
            return argv + ["prog.py"]
        return argv + ["-c", preamble + "\nimport runpy\nrunpy.run_path('prog.py', run_name='__main__')\n"]

    def become_program():
        # Limits, privileges, then exec; runs in the process that becomes the program.
        os.chdir(work)
        if root and "drop_uid" in want:
            try:
                os.setgroups([])
                os.setresgid(run_uid, run_uid, run_uid)
                os.setresuid(run_uid, run_uid, run_uid)
                done.add("drop_uid")
            except Exception as e:
                if not probe:
                    fail(f"drop_uid: {e}")
        elif root and "drop_caps" in want:
            # Still uid 0 but without any capability, now or after execve: it cannot undo the mounts.
            def drop_caps():
                call(libc.prctl, 28, 0x3F, 0, 0, 0)  # PR_SET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, KEEP_CAPS, locked
                call(libc.prctl, 47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
                with open("/proc/sys/kernel/cap_last_cap") as f:
                    last = int(f.read())
                for cap in range(last + 1):
                    call(libc.prctl, 24, cap, 0, 0, 0)  # PR_CAPBSET_DROP

            layer("drop_caps", drop_caps)
        cpu = cfg["cpu_s"]
        for res, lim in (
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            (resource.RLIMIT_AS, (cfg["mem"], cfg["mem"])),
            (resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"])),
            (resource.RLIMIT_NOFILE, (256, 256)),
            (resource.RLIMIT_FSIZE, (cfg["file_mb"] << 20, cfg["file_mb"] << 20)),
        ):
            resource.setrlimit(res, lim)
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        argv = program_argv()
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work}
        try:
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        except Exception:
            pass
        layer("seccomp", lambda: install_seccomp(libc, cfg["seccomp"]))
        if probe:
            os.write(2, f"{cfg['layers_mark']} {json.dumps(sorted(done))}\n".encode())
        try:
            os.execve(cfg["python"], argv, env)
        except Exception as e:
            fail(f"exec {cfg['python']}: {e}")

    def pivot():
        # Not best effort: once the root is built, the program's cwd only exists inside it.
        if "minimal_root" in done:
            try:
                enter_root()
            except Exception as e:
                fail(f"minimal_root: pivot_root: {e}")

    if not (privileged and layer("pidns", lambda: call(libc.unshare, CLONE_NEWPID))):
        pivot()
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
                target = os.path.join(newroot, "proc") if "minimal_root" in done else "/proc"
                mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)

            layer("proc", newproc)
        pivot()
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
            fail(f"namespace init killed by signal {os.WTERMSIG(st)}")
        os._exit(os.WEXITSTATUS(st) if os.WIFEXITED(st) else cfg["error_rc"])
    st = int(raw)
    if os.WIFSIGNALED(st):
        sig = os.WTERMSIG(st)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(st))


if __name__ == "__main__":
    main()
