"""The sandbox contains what model-generated code can do wrong, and still runs correct code."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from prod_unlearn import sandbox
from prod_unlearn.sandbox import run_many, run_python
from prod_unlearn.sandbox.launch import launch

REPO_DIR = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX rlimits and process groups")


def _layers() -> list[str]:
    return sandbox.isolation()["layers"]


@pytest.fixture(autouse=True)
def _unsafe_where_isolation_is_impossible(monkeypatch):
    """On a machine that cannot isolate (no namespaces), the functional tests still run the sandbox's
    remaining layers; the containment tests below skip on the layers they need."""
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    if not sandbox.isolation()["isolated"]:
        monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")


def _need(*layers):
    missing = [n for n in layers if n not in _layers()]
    if missing:
        pytest.skip(f"this machine's sandbox lacks {missing}")


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
    """Without namespaces (only with the explicit unsafe switch) the best-effort preamble still refuses sockets."""
    monkeypatch.setenv("PROD_UNLEARN_SANDBOX", "plain")
    monkeypatch.setattr(sandbox, "_layers", None)      # re-probe; the cached layers come back after the test
    info = sandbox.isolation()
    assert "netns" not in info["layers"] and "preamble" in info["network"] and not info["isolated"]
    res = run_python("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", timeout=5,
                     allow_unsafe=True)
    assert res.status == "failed" and "network disabled by the sandbox" in res.stderr
    assert run_python("print(2 + 2)\n", allow_unsafe=True).stdout == "4\n"


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
    res, active = launch(code, 5.0, 256, 4, 4, 4096, layers, probe=True)
    assert "drop_caps" in active and res.passed, res
    uid, eff, bnd = res.stdout.splitlines()[0].split()
    assert uid == "0" and int(eff, 16) == 0 and int(bnd, 16) == 0
    assert res.stdout.splitlines()[1] == "-1"



# ---------------------------------------------------------------- the five escapes of issue 10

def test_memory_budget_bounds_all_processes_together():
    """Escape 1: the per-process limit x the process cap allowed several times the budget."""
    _need("seccomp")
    if os.getuid() == 0:
        _need("drop_uid")
    code = ("import os\n"
            "MB = 1 << 20\n"
            "try:\n"
            "    x, held = b'x' * (90 * MB), 1\n"
            "except MemoryError:\n"
            "    x, held = b'', 0\n"
            "r, w = os.pipe()\n"
            "kids = 0\n"
            "for i in range(6):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            "        del x\n"
            "        try:\n"
            "            y = b'y' * (90 * MB)\n"
            "            os.write(w, b'1')\n"
            "        except BaseException:\n"
            "            os.write(w, b'0')\n"
            "        import time; time.sleep(60)\n"
            "        os._exit(0)\n"
            "    kids += 1\n"
            "got = b''.join(os.read(r, 1) for _ in range(kids))\n"
            "print(kids, held + got.count(b'1'))\n")
    # every process tries to hold 90 MB: together they must stay under the 256 MB budget (the old
    # per-process limit let 4 processes hold 360 MB, 32 of them several GB)
    res = run_python(code, timeout=10, memory_mb=256, max_processes=4)
    assert res.passed, res
    kids, blocks = map(int, res.stdout.split())
    assert blocks * 90 <= 256, res.stdout
    # ... while the budget stays usable: 2 processes of 128 MB each
    res = run_python(code, timeout=10, memory_mb=256, max_processes=2)
    assert res.passed, res
    kids, blocks = map(int, res.stdout.split())
    assert 1 <= blocks and blocks * 90 <= 256, res.stdout


def test_no_nested_user_namespace():
    """Escape 2: a nested user + mount namespace gave the program a tmpfs outside every limit."""
    _need("seccomp")
    code = ("import ctypes, subprocess\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.unshare(0x10000000 | 0x20000), ctypes.get_errno())\n"    # CLONE_NEWUSER | CLONE_NEWNS
            "print(libc.unshare(0x20000000), ctypes.get_errno())\n"              # CLONE_NEWPID
            "r = subprocess.run(['unshare', '-Urm', 'sh', '-c', 'echo inside'], capture_output=True, text=True)\n"
            "print(r.returncode, r.stdout.strip() or '-')\n")
    res = run_python(code, timeout=10)
    assert res.passed, res
    first, second, third = res.stdout.splitlines()
    assert first == "-1 1" and second == "-1 1"          # EPERM
    assert "inside" not in third


def test_shared_memory_outside_the_address_space_limit_is_refused():
    """memfd and SysV shm hold memory that RLIMIT_AS does not count: refused."""
    _need("seccomp")
    code = ("import ctypes, os\n"
            "try:\n"
            "    os.memfd_create('x')\n"
            "    print('memfd')\n"
            "except OSError as e:\n"
            "    print('no memfd', e.errno)\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.shmget(0, 1 << 20, 0o1600), ctypes.get_errno())\n")      # IPC_PRIVATE, IPC_CREAT|0600
    res = run_python(code, timeout=10)
    assert res.passed, res
    assert res.stdout.splitlines() == ["no memfd 38", "-1 1"]


def test_host_unix_sockets_are_unreachable(tmp_path):
    """Escape 3: path-based Unix sockets of the host were reachable (the net namespace hides only
    abstract ones); the minimal root has no host paths at all."""
    _need("minimal_root", "netns")
    d = tempfile.mkdtemp(prefix="prod-unlearn-socktest-")      # world-traversable, as /tmp/.X11-unix is
    os.chmod(d, 0o755)
    path = os.path.join(d, "s.sock")
    name = "\0prod-unlearn-test-%d" % os.getpid()
    servers = []
    try:
        for addr in (path, name):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(addr)
            s.listen(4)
            s.setblocking(False)
            servers.append(s)
        os.chmod(path, 0o777)
        code = ("import os, socket\n"
                f"for addr in ({path!r}, {name!r}):\n"
                "    try:\n"
                "        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                "        s.connect(addr)\n"
                "        s.sendall(b'leak')\n"
                "        print('connected')\n"
                "    except OSError as e:\n"
                "        print('blocked', type(e).__name__)\n"
                "print([p for p in ('/run', '/var/run', '/dev/shm', '/home', '/var', %r) if os.path.exists(p)])\n"
                % (str(REPO_DIR / "pyproject.toml"),))
        res = run_python(code, timeout=10)
        assert res.passed, res
        lines = res.stdout.splitlines()
        assert lines[:2] == ["blocked FileNotFoundError", "blocked ConnectionRefusedError"], lines
        assert lines[2] == "[]"
        for s in servers:
            with pytest.raises(BlockingIOError):
                s.accept()          # nothing ever connected
    finally:
        for s in servers:
            s.close()
        shutil.rmtree(d, ignore_errors=True)


FORGER = ("    return x\n"
          "import os, re\n"
          "for tok in re.findall(r'[0-9a-f]{16,}', open(__file__).read()):\n"
          "    print(tok)\n"
          "stolen = b''\n"
          "for fd in range(3, 256):\n"
          "    try:\n"
          "        stolen += os.read(fd, 256)\n"
          "    except OSError:\n"
          "        pass\n"
          "for fd in range(3, 256):\n"
          "    for msg in (b'passed\\n', b'passed ' + stolen + b'\\n', stolen):\n"
          "        try:\n"
          "            os.write(fd, msg)\n"
          "        except OSError:\n"
          "            pass\n"
          "print('passed')\n"
          "import sys\n"
          "sys.stdout.flush()\n"
          "os._exit(0)\n")


INC = {"task_id": "t/0", "prompt": "def inc(x):\n", "entry_point": "inc",
       "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"}


def test_grading_cannot_be_forged_by_printing_or_exiting():
    """Escape 4: a wrong solution printed the nonce it read from its own file and exited 0."""
    from prod_unlearn.tasks.humaneval import check_completions
    right, forged, early = check_completions([INC] * 3, ["    return x + 1\n", FORGER,
                                                         "    return x\nimport sys\nsys.exit(0)\n"],
                                             strip_prompt=False, timeout=10)
    assert right["passed"] and right["status"] == "passed", right
    assert not forged["passed"] and forged["status"] == "failed", forged
    assert not early["passed"], early
    # the same through run_python: exit status 0 alone is not a pass when a judge decides
    judge = sandbox.Judge("f", "def check(candidate):\n    assert candidate() == 2\n")
    res = run_python("def f():\n    return 1\nimport os\nos._exit(0)\n", judge=judge, timeout=5)
    assert res.returncode == 0 and res.checked is False and not res.passed and res.status == "failed"
    res = run_python("def f():\n    return 2\n", judge=judge, timeout=5)
    assert res.passed and res.checked is True


# Wrong solutions that passed the in-process harness (probe of issue 23), one line each.
FORGED = {
    "builtins.exec made a no-op, so the tests never run":
        "    return x\nimport builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "the grading token read from the harness's frames":
        "    return x\nimport sys, os\nf = sys._getframe(0)\nwhile f:\n"
        "    for v in list(f.f_locals.values()):\n"
        "        if isinstance(v, bytes) and len(v) >= 16:\n"
        "            for fd in range(3, 64):\n"
        "                try:\n                    os.write(fd, b'passed ' + v + b'\\n')\n"
        "                except OSError:\n                    pass\n"
        "    f = f.f_back\nos._exit(0)\n",
    "the token searched for in /proc/self/mem":
        "    return x\nimport os, re\nfound = []\n"
        "for line in open('/proc/self/maps'):\n"
        "    lo, hi = (int(v, 16) for v in line.split()[0].split('-'))\n"
        "    if 'rw' in line.split()[1] and hi - lo < 1 << 24:\n"
        "        try:\n            m = open('/proc/self/mem', 'rb'); m.seek(lo); found += re.findall(rb'[0-9a-f]{32}', m.read(hi - lo))\n"
        "        except OSError:\n            pass\n"
        "for t in found[:50]:\n    for fd in range(3, 64):\n"
        "        try:\n            os.write(fd, b'passed ' + t + b'\\n')\n        except OSError:\n            pass\n"
        "os._exit(0)\n",
    "an object equal to everything":
        "    class Any:\n        def __eq__(self, other):\n            return True\n"
        "        def __ne__(self, other):\n            return False\n    return Any()\n",
    "an int subclass equal to everything":
        "    class Int(int):\n        def __eq__(self, other):\n            return True\n    return Int(0)\n",
    "the tests read from the caller's frames and answered":
        "    import sys\n    f = sys._getframe(1)\n    return f.f_locals.get('expected', x + 1)\n",
}


@pytest.mark.parametrize("way", list(FORGED))
def test_no_wrong_solution_is_graded_as_passed(way):
    """Each way a wrong `inc` was graded as passed by the harness that ran the tests in the
    completion's own process; the judge runs them elsewhere. (The last one is a right answer only
    by luck: it returns x + 1 when it finds nothing, so it must pass.)"""
    from prod_unlearn.tasks.humaneval import check_completions
    r = check_completions([INC], [FORGED[way]], strip_prompt=False, timeout=10)[0]
    if way.startswith("the tests read from the caller's frames"):
        assert r["passed"], r                   # no test value reached it: it computed the answer
    else:
        assert not r["passed"] and r["status"] in ("failed", "timeout"), (way, r)


# The probe's four forged passes on real HumanEval problems, each after a wrong body ("WRONG" is
# replaced by a wrong answer of the problem's type). /38's test calls the prompt's own helper.
HUMANEVAL_FORGED = {
    "exec_patched": "    return WRONG\nimport builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "token_from_frames_and_gc":        # the old harness kept its token (32 hex bytes) in a local
        "    return WRONG\nimport gc, os, sys\nfound = []\nf = sys._getframe(0)\nwhile f:\n"
        "    found += [v for v in list(f.f_locals.values()) if type(v) is bytes and len(v) == 32]\n"
        "    f = f.f_back\n"
        "for o in gc.get_objects():\n    if type(o) is dict:\n"
        "        found += [v for v in list(o.values()) if type(v) is bytes and len(v) == 32]\n"
        "for t in list(dict.fromkeys(found))[:1]:\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, b'passed ' + t + b'\\n')\n        except OSError:\n            pass\nos._exit(0)\n",
    "token_from_proc_self_mem":         # a bytes object of 32 hex digits: size 32, hash, then the data
        "    return WRONG\nimport os, re\nfound = []\nfor line in open('/proc/self/maps'):\n"
        "    lo, hi = (int(v, 16) for v in line.split()[0].split('-'))\n"
        "    if 'rw' in line.split()[1] and hi - lo < 1 << 26:\n        try:\n"
        "            m = open('/proc/self/mem', 'rb'); m.seek(lo)\n"
        "            found += re.findall(rb'(?s)\\x20\\x00{7}.{8}([0-9a-f]{32})\\x00', m.read(hi - lo))\n"
        "        except OSError:\n            pass\n"
        "for t in list(dict.fromkeys(found))[:1]:\n    for fd in range(3, 64):\n        try:\n"
        "            os.write(fd, b'passed ' + t + b'\\n')\n        except OSError:\n            pass\nos._exit(0)\n",
    "always_equal_result":
        "    class Any(str):\n        def __eq__(self, other):\n            return True\n"
        "        __hash__ = str.__hash__\n    return Any()\n",
}


@pytest.mark.parametrize("way", list(HUMANEVAL_FORGED))
def test_forged_pass_fails_on_real_humaneval(way):
    """Issue 23's probe: each way passed the harness that ran the tests in the completion's process."""
    from prod_unlearn.tasks.humaneval import check_completions, load_problems
    problems = load_problems()
    pick = [problems[0], problems[38]]                  # has_close_elements (bool), decode_cyclic (str)
    forged = [HUMANEVAL_FORGED[way].replace("WRONG", w) for w in ("False", "s")]
    res = check_completions(pick, forged, strip_prompt=False, timeout=10)
    assert [r["passed"] for r in res] == [False, False], res
    assert all(r["status"] in ("failed", "timeout") for r in res), res


def test_the_data_set_is_out_of_reach():
    """A completion that finds HumanEval's own file could run the canonical solution: the folder is
    hidden from the sandboxed program (covered by an empty one)."""
    _need("mountns")
    from prod_unlearn.tasks.humaneval import answer_key, check_completions, load_problems
    cheat = ("    import glob, gzip, json\n"
             "    for f in glob.glob(%r + '/*'):\n"
             "        for line in gzip.open(f, 'rt'):\n"
             "            p = json.loads(line)\n"
             "            if p['entry_point'] == 'has_close_elements':\n"
             "                g = {}\n"
             "                exec(p['prompt'] + p['canonical_solution'], g)\n"
             "                return g['has_close_elements'](numbers, threshold)\n"
             "    return False\n" % answer_key()[0])
    res = check_completions(load_problems(1), [cheat], strip_prompt=False, timeout=10)[0]
    assert not res["passed"] and res["status"] == "failed", res


def test_a_garbled_control_line_in_a_batch_of_three():
    """The probe's `__prod_unlearn_sandbox_layers__ {` on stderr crashed the grader and lost the
    batch; now it is that completion's own (failed) result and the other two are graded."""
    from prod_unlearn.tasks.humaneval import check_completions, load_problems
    first = load_problems(3)
    problems = [first[0], first[2], first[1]]        # has_close_elements, truncate_number, separate_paren_groups
    garbled = "    return 0.0\nimport sys\nsys.stderr.write('__prod_unlearn_sandbox_layers__ {\\n')\n"
    res = check_completions(problems, [problems[0]["canonical_solution"], garbled, "    return []\n"],
                            strip_prompt=False, timeout=10)
    assert [r["passed"] for r in res] == [True, False, False], res
    assert [r["status"] for r in res] == ["passed", "failed", "failed"], res
    res = check_completions(problems, [problems[0]["canonical_solution"], garbled.replace("0.0", "number % 1.0"),
                                       problems[2]["canonical_solution"]], strip_prompt=False, timeout=10)
    assert [r["passed"] for r in res] == [True, True, True], res   # the line itself decides nothing


def test_a_garbled_channel_fails_that_completion_only():
    """A fake layers line, garbage on the reply pipe, a reply of 2 MB: each is that completion's
    failure; the batch's other completions are graded as usual."""
    from prod_unlearn.tasks.humaneval import check_completions
    completions = ["    return x + 1\n",
                   "    return x + 1\nimport sys\nsys.stderr.write('__prod_unlearn_sandbox_layers__ {\\n')\n",
                   "    import os\n    for fd in range(3, 64):\n        try:\n"
                   "            os.write(fd, b'{not json\\n')\n        except OSError:\n            pass\n    return x + 1\n",
                   "    return 'x' * (2 << 20)\n",
                   "    return x + 2\n"]
    res = check_completions([INC] * len(completions), completions, strip_prompt=False, timeout=10)
    assert [r["passed"] for r in res] == [True, True, False, False, False], res


def test_io_uring_is_denied():
    _need("seccomp")
    import platform
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("io_uring syscall numbers are listed for x86_64 and aarch64")
    # io_uring_setup / _enter / _register (425-427 on both): the filter answers EPERM before the
    # kernel looks at the arguments (unfiltered, _enter and _register on fd -1 would say EBADF)
    code = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "params = ctypes.create_string_buffer(120)\n"
            "for args in ((425, 8, params), (426, -1, 0, 0, 0, None, 0), (427, -1, 0, None, 0)):\n"
            "    print(libc.syscall(*args), errno.errorcode[ctypes.get_errno()])\n")
    res = run_python(code, timeout=10)
    assert res.passed, res
    assert res.stdout.split("\n")[:3] == ["-1 EPERM"] * 3, res.stdout


def test_refuses_to_run_model_code_without_isolation(monkeypatch):
    """Escape 5: plain mode ran model code as root with write access; now it needs an explicit switch."""
    from prod_unlearn.tasks import humaneval
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    monkeypatch.setenv("PROD_UNLEARN_SANDBOX", "plain")
    monkeypatch.setattr(sandbox, "_layers", None)
    with pytest.raises(sandbox.SandboxUnavailable) as e:
        run_python("open('/tmp/should-not-exist', 'w')\n")
    msg = str(e.value)
    assert "missing" in msg and "netns" in msg and sandbox.UNSAFE_ENV in msg
    with pytest.raises(sandbox.SandboxUnavailable):
        run_many(["print(1)", "print(2)"])
    with pytest.raises(sandbox.SandboxUnavailable):    # before any model is asked to generate
        humaneval.humaneval(model=None, tokenizer=None, limit=1)
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    assert run_python("print(3)\n").stdout == "3\n"


def test_threads_and_subprocesses_still_work_under_the_filter():
    res = run_python("import threading, subprocess, sys\n"
                     "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
                     "print(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True, text=True)"
                     ".stdout.strip())\n", timeout=10)
    assert res.passed and res.stdout.split() == ["thread", "7"], res
