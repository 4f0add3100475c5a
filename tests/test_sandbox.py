"""The sandbox contains what model-generated code can do wrong, and still runs correct code."""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from prod_unlearn.evaluation import sandbox
from prod_unlearn.evaluation.sandbox import run_many, run_python

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX rlimits and process groups")


def _layers() -> list[str]:
    return sandbox.isolation()["layers"]


def _processes_with(tag: str) -> int:
    """Processes whose command line contains ``tag`` (Linux /proc; -1 where there is none)."""
    if not os.path.isdir("/proc/self"):
        return -1
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    n += tag.encode() in f.read()
            except OSError:
                pass
    return n


def test_correct_program_passes():
    res = run_python("import math\nassert math.gcd(12, 18) == 6\nprint('ok', sum(range(10)))\n", timeout=5)
    assert res.passed and res.status == "passed", res
    assert res.stdout == "ok 45\n"


def test_failing_program_and_exit_status():
    res = run_python("assert 1 + 1 == 3\n", timeout=5)
    assert res.status == "failed" and not res.passed
    assert "AssertionError" in res.stderr
    assert run_python("raise SystemExit(3)\n", timeout=5).returncode == 3


def test_infinite_loop_times_out():
    t0 = time.time()
    res = run_python("while True:\n    pass\n", timeout=1.5)
    assert res.status == "timeout" and not res.passed
    assert time.time() - t0 < 5


def test_memory_bomb_is_contained():
    res = run_python("x = bytearray(4 * 1024 ** 3)\nprint('allocated')\n", timeout=5, memory_mb=256)
    assert res.status == "failed" and "MemoryError" in res.stderr
    res = run_python("chunks = []\nwhile True:\n    chunks.append(b' ' * 10 ** 7)\n", timeout=5, memory_mb=256)
    assert res.status in ("failed", "timeout") and not res.passed


def test_fork_bomb_is_contained_and_nothing_survives():
    tag = "produnlearnforkbomb%d" % os.getpid()
    if os.getuid() == 0 and "drop_uid" not in _layers():
        pytest.skip("running as root without a uid switch: RLIMIT_NPROC does not apply to root")
    # exec so that every forked copy carries the tag in its command line
    bomb = ("import os, sys\n"
            f"os.execv(sys.executable, [sys.executable, '-c', 'import os\\nwhile True:\\n    os.fork()', {tag!r}])\n")
    t0 = time.time()
    res = run_python(bomb, timeout=3, max_processes=16)
    assert res.status in ("failed", "timeout") and not res.passed
    assert time.time() - t0 < 8
    time.sleep(0.2)
    assert _processes_with(tag) in (0, -1)


def test_background_children_are_killed():
    tag = "produnlearnbackground%d" % os.getpid()
    code = ("import os, sys\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {tag!r}])\n"
            "print('parent done')\n")
    res = run_python(code, timeout=5)
    assert res.passed
    if "pidns" not in _layers():
        pytest.skip("no PID namespace: a child that calls setsid() leaves the process group")
    time.sleep(0.2)
    assert _processes_with(tag) in (0, -1)


def test_write_outside_the_sandbox_is_blocked(tmp_path):
    layers = _layers()
    if "readonly_fs" not in layers and "drop_uid" not in layers:
        pytest.skip("no filesystem isolation on this machine (no mount namespace, not root)")
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    created = tmp_path / "created.txt"
    code = (f"open({str(victim)!r}, 'w').write('overwritten')\n"
            f"open({str(created)!r}, 'w').write('new')\n")
    res = run_python(code, timeout=5)
    assert res.status == "failed" and not res.passed
    assert victim.read_text() == "original"
    assert not created.exists()
    # ... while its own directory is writable
    assert run_python("open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())\n").stdout == "x\n"


def test_network_is_cut():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        code = ("import socket\n"
                f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                "s.sendall(b'leak')\n")
        res = run_python(code, timeout=5)
        assert res.status == "failed" and not res.passed
        with pytest.raises(BlockingIOError):
            server.accept()        # nothing ever connected
    finally:
        server.close()


def test_output_is_capped():
    res = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 100000)\n", timeout=5, max_file_mb=1,
                     max_output=1000)
    assert not res.passed and len(res.stdout) <= 1000


def test_run_many_keeps_order_and_isolates():
    codes = ["print(1)", "raise ValueError('boom')", "while True: pass", "print(4)"]
    res = run_many(codes, workers=2, timeout=1.5)
    assert [r.status for r in res] == ["passed", "failed", "timeout", "passed"]
    assert res[0].stdout == "1\n" and res[3].stdout == "4\n"


def test_environment_is_empty_and_cwd_private():
    code = ("import os, sys, tempfile\n"
            "print(sorted(os.environ))\n"
            "print(os.getcwd() == os.path.dirname(os.path.abspath(__file__)))\n")
    res = run_python(code, timeout=5)
    assert res.passed, res
    env, same_dir = res.stdout.splitlines()
    assert set(eval(env)) <= {"PATH", "HOME", "TMPDIR", "LC_CTYPE"}
    assert same_dir == "True"


def test_isolation_report_lists_active_layers():
    info = sandbox.isolation()
    assert set(info) >= {"layers", "missing", "network", "filesystem"}
    if sys.platform == "linux":
        # whatever the machine allows is reported, and never the same layer as both
        assert not set(info["layers"]) & set(info["missing"])


def test_plain_mode_falls_back_to_the_socket_preamble(monkeypatch):
    """Without namespaces the (best-effort) preamble still refuses socket connections."""
    monkeypatch.setenv("PROD_UNLEARN_SANDBOX", "plain")
    monkeypatch.setattr(sandbox, "_layers", None)      # re-probe; the cached layers come back after the test
    info = sandbox.isolation()
    assert "netns" not in info["layers"] and "preamble" in info["network"]
    res = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", timeout=5)
    assert res.status == "failed" and "network disabled by the sandbox" in res.stderr
    assert run_python("print(2 + 2)\n").stdout == "4\n"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0 or sys.platform != "linux",
                    reason="the capability drop is the fallback for root")
def test_root_fallback_without_uid_switch_has_no_capabilities():
    """If nobody cannot run the interpreter, root keeps uid 0 but loses every capability."""
    layers = [n for n in sandbox.isolation()["layers"] if n not in ("drop_uid", "unhide")] + ["drop_caps"]
    code = ("import ctypes, os\n"
            "status = open('/proc/self/status').read()\n"
            "print(os.getuid(), status.split('CapEff:')[1].split()[0], status.split('CapBnd:')[1].split()[0])\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.mount(None, b'/', None, 32 | 4096, None))\n")   # MS_REMOUNT | MS_BIND: undo read-only
    res, active = sandbox._launch(code, 5.0, 256, 16, 4, 4096, layers, probe=True)
    assert "drop_caps" in active and res.passed, res
    uid, eff, bnd = res.stdout.splitlines()[0].split()
    assert uid == "0" and int(eff, 16) == 0 and int(bnd, 16) == 0
    assert res.stdout.splitlines()[1] == "-1"
