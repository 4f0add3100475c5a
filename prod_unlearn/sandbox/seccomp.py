"""The seccomp filter of every sandboxed program (installed by child.py, built here by the caller):
no new namespaces of any kind, no mounts, no SysV/memfd shared memory that would hold memory
outside RLIMIT_AS, no ptrace, no io_uring (a large kernel surface no test needs)."""

from __future__ import annotations

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
# (CLONE_NEWTIME is left out: in clone(2)'s flags its bit is part of the exit-signal byte.)
NS_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET

# The syscalls the seccomp filter refuses. Those numbered from 424 on (the table every
# architecture shares since Linux 5.1) have the same number everywhere.
UNIFIED = {
    "clone3": 435,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "pidfd_getfd": 438,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
}
# Per architecture: audit arch, then its own numbers of the others.
SYSCALLS = {
    "x86_64": (
        0xC000003E,
        {
            "unshare": 272,
            "setns": 308,
            "clone": 56,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "memfd_create": 319,
            "shmget": 29,
            "shmat": 30,
            "bpf": 321,
            "userfaultfd": 323,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "ptrace": 101,
            **UNIFIED,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "unshare": 97,
            "setns": 268,
            "clone": 220,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "memfd_create": 279,
            "shmget": 194,
            "shmat": 196,
            "bpf": 280,
            "userfaultfd": 282,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "ptrace": 117,
            **UNIFIED,
        },
    ),
}


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]] | None:
    """A classic-BPF seccomp filter (code, jt, jf, k) for ``machine`` (``os.uname().machine``);
    None when there is no syscall table for it (the seccomp layer then fails)."""
    if machine not in SYSCALLS:
        return None
    arch, nrs = SYSCALLS[machine]
    LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL = 0x7FFF0000, 0x80000000
    EPERM, ENOSYS = 0x00050000 | 1, 0x00050000 | 38
    denied = sorted({nr for name, nr in nrs.items() if name not in ("clone", "clone3", "memfd_create")})
    # Body first with symbolic targets, then resolve jumps to the return block at the end.
    body: list[tuple[int, int | str, int | str, int]] = [(LD_ABS, 0, 0, 4), (JEQ, 0, "kill", arch), (LD_ABS, 0, 0, 0)]
    if machine == "x86_64":
        body.append((JGE, "eperm", 0, 0x40000000))  # x32 ABI: refuse outright
    for nr in denied:
        body.append((JEQ, "eperm", 0, nr))
    body.append((JEQ, "enosys", 0, nrs["clone3"]))  # libc falls back to clone(2), which we can inspect
    body.append((JEQ, "enosys", 0, nrs["memfd_create"]))
    body.append((JEQ, 0, "allow", nrs["clone"]))
    body.append((LD_ABS, 0, 0, 16))  # clone flags: low 32 bits of args[0]
    body.append((JSET, "eperm", "allow", NS_FLAGS))
    rets = {"allow": ALLOW, "eperm": EPERM, "enosys": ENOSYS, "kill": KILL}
    order = ["allow", "eperm", "enosys", "kill"]
    where = {name: len(body) + i for i, name in enumerate(order)}
    out: list[tuple[int, int, int, int]] = []
    for i, (code, jt, jf, k) in enumerate(body):
        jt = where[jt] - i - 1 if isinstance(jt, str) else jt
        jf = where[jf] - i - 1 if isinstance(jf, str) else jf
        out.append((code, jt, jf, k))
    out += [(RET, 0, 0, rets[name]) for name in order]
    return out
