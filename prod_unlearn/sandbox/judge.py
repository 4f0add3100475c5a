"""The judge: grading that the graded code cannot decide (``sandbox.run_python(judge=...)``).

The sandboxed program only serves its function: it reads calls from a pipe and writes back the
results as plain data (``CODEC``). The judge, a fresh interpreter outside the sandbox, runs the
trusted tests with a proxy in place of the candidate and alone decides; the program never sees
the tests or the expected values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

# The sandboxed program's entry point when it serves a judge (child.py fills the placeholders with
# repr() literals): it runs the program, then answers calls of its function over the pipes.
SERVER = r"""
import os, sys, types
def _serve(req_fd, resp_fd, entry, codec, preamble):
    for fd in (req_fd, resp_fd):
        os.set_inheritable(fd, False)
    io = {}
    exec(codec, io)
    recv, send = io["recv"], io["send"]
    with open("prog.py", encoding="utf-8") as f:
        src = f.read()
    main = types.ModuleType("__main__")
    main.__file__ = os.path.abspath("prog.py")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = [main.__file__]
    if preamble:
        exec(compile(preamble, "<sandbox preamble>", "exec"), {})
    exec(compile(src, main.__file__, "exec"), main.__dict__)
    candidate = main.__dict__.get(entry)
    while True:
        call = recv(req_fd, 1 << 26)
        if call is None:
            return
        args, kwargs = call
        try:
            reply = ["ok", candidate(*args, **kwargs)]
        except BaseException as e:
            reply = ["raise", type(e).__name__]
        try:
            send(resp_fd, reply)
        except (TypeError, ValueError) as e:
            send(resp_fd, ["bad", str(e)])
_serve(%(req_fd)d, %(resp_fd)d, %(entry)r, %(codec)r, %(preamble)r)
"""

# Plain data over a pipe, one JSON line a message, for the program's server and the judge alike
# (exec'd on both sides: one source). Exact types only, so nothing with behaviour of its own
# (an __eq__, a subclass) crosses; ints travel as hex (no int-to-str digit limit), floats as
# float.hex (nan and inf included).
CODEC = r'''
import json as _json, os as _os
def enc(x, depth=0):
    if depth > 200:
        raise TypeError("nested too deeply")
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return {"i": hex(x)}
    if t is float:
        return {"f": x.hex()}
    if t is list:
        return [enc(v, depth + 1) for v in x]
    if t in (tuple, set, frozenset):
        return {{tuple: "t", set: "s", frozenset: "z"}[t]: [enc(v, depth + 1) for v in x]}
    if t is dict:
        return {"d": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
    if t is bytes:
        return {"b": x.hex()}
    raise TypeError("a %s is not plain data" % t.__name__)
def dec(x):
    if type(x) is list:
        return [dec(v) for v in x]
    if type(x) is dict:
        if len(x) != 1:
            raise ValueError("not a message")
        (k, v), = x.items()
        if k == "i":
            return int(v, 16)
        if k == "f":
            return float.fromhex(v)
        if k == "b":
            return bytes.fromhex(v)
        if k == "d":
            return {dec(a): dec(b) for a, b in v}
        return {"t": tuple, "s": set, "z": frozenset}[k](dec(e) for e in v)
    if x is None or type(x) in (bool, str, int, float):
        return x
    raise ValueError("not a message")
_buffers = {}
def send(fd, obj):
    data = (_json.dumps(enc(obj)) + "\n").encode()
    while data:
        data = data[_os.write(fd, data):]
def recv(fd, limit=1 << 20):
    """The next message, None at the end of the stream; ValueError when longer than limit."""
    buf = _buffers.get(fd, b"")
    while b"\n" not in buf:
        if len(buf) > limit:
            raise ValueError("a message of over %d bytes" % limit)
        chunk = _os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    _buffers[fd] = rest
    if len(line) > limit:
        raise ValueError("a message of over %d bytes" % limit)
    return dec(_json.loads(line))
'''

# The judge: a fresh interpreter outside the sandbox that runs only trusted tests, calling the
# sandboxed program's function through a proxy. A pass: exit status 0 and PASSED as its last line.
JUDGE = r"""
import json, resource, sys
cfg = json.loads(sys.stdin.read())     # not argv: no other process can read the tests from our cmdline
for res, lim in ((resource.RLIMIT_AS, cfg["mem"]), (resource.RLIMIT_CPU, cfg["cpu_s"])):
    resource.setrlimit(res, (lim, lim))   # trusted code, but it handles the program's data
codec = {}
exec(cfg["codec"], codec)
class CandidateFailed(BaseException):  # no `except Exception` in a test can turn a failure into a pass
    pass
def candidate(*args, **kwargs):
    codec["send"](cfg["req"], [list(args), kwargs])
    reply = codec["recv"](cfg["resp"], cfg["limit"])
    if reply is None:
        raise CandidateFailed("the program ended (crashed, exited or was killed) before answering")
    tag, value = reply
    if tag == "ok":
        return value
    raise CandidateFailed(("the candidate raised %s" if tag == "raise" else "its result is not plain data: %s") % value)
tests = {"__name__": "__judge__"}
exec(compile(cfg["source"], "<tests>", "exec"), tests)
tests[cfg["entry"]] = candidate   # a test that calls the function by its name calls the candidate too
tests["check"](candidate)
print("PASSED", flush=True)
"""


@dataclass(frozen=True)
class Judge:
    """Trusted tests for the function ``entry`` that the program defines: ``source`` defines
    ``check(candidate)`` (and whatever it needs), run by the judge with a proxy of the function."""

    entry: str
    source: str


def run_judge(
    judge: Judge, req_w: int, resp_r: int, limit: int, deadline: float, mem: int, cpu_s: int
) -> tuple[str, str, bool]:
    """Run the trusted tests in a fresh interpreter outside the sandbox: ("PASSED" or "", the
    reason of a failure, timed out). A pass needs exit status 0 *and* PASSED as the last line."""
    cfg = {
        "codec": CODEC,
        "source": judge.source,
        "entry": judge.entry,
        "req": req_w,
        "resp": resp_r,
        "limit": 1 << 20,
        "mem": mem,
        "cpu_s": cpu_s,
    }
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", JUDGE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        pass_fds=(req_w, resp_r),
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        out, err = proc.communicate(json.dumps(cfg).encode(), timeout=max(0.01, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        return "", "the tests did not finish within the time limit", True
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode == 0 and lines and lines[-1] == "PASSED":
        return "PASSED", "", False
    reason = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:limit]
    return "", reason or f"no verdict (exit status {proc.returncode})", False


def kill_group(pgid: int) -> None:
    """SIGKILL a sandboxed program's whole process group (gone already: nothing to do)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
