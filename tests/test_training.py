"""The training loop on a micro Llama: outputs, PROD's effect, hard-kill resume, stale state,
and two processes (DDP on CPU) against one process with the same global batch."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import PYTHON, REPO
from prod_unlearn.data.batching import collate, encode
from prod_unlearn.data.examples import Example, examples_hash, write_jsonl
from prod_unlearn.methods import get_method
from prod_unlearn.data.batching import epoch_order
from prod_unlearn.training.loop import TrainConfig, unlearn


def forget_token_prob(model, tokenizer, examples, max_length=64) -> float:
    """Mean probability the model gives the forget token at each completion position."""
    enc = encode(examples, tokenizer, max_length)
    b = collate(enc, tokenizer.pad_token_id)
    with torch.no_grad():
        logp = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].log_softmax(-1)
    labels = b["labels"][:, 1:]
    keep = labels != -100
    return logp[keep].gather(1, labels[keep][:, None]).exp().mean().item()


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k}: max abs diff {(a[k] - b[k]).abs().max().item():.3g}"
        else:
            d = (a[k] - b[k]).abs().max().item()
            assert d <= atol, f"{k}: max abs diff {d:.3g} > {atol}"


# ------------------------------------------------------------------ one in-process run

def test_prod_run_outputs_and_effect(memorised_model, memorised_dir, tokenizer, forget_examples, tmp_path):
    micro_model, micro_dir = memorised_model, memorised_dir
    before = forget_token_prob(micro_model, tokenizer, forget_examples)
    assert before > 0.5                                   # the fixture memorised the forget set
    original = {k: v.clone() for k, v in micro_model.state_dict().items()}
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=2, max_length=64, save_steps=1, seed=0)
    run = unlearn(micro_model, tokenizer, forget_examples, get_method("prod"), cfg, tmp_path / "out",
                  model_name=str(micro_dir))
    after = forget_token_prob(micro_model, tokenizer, forget_examples)
    assert after < 0.5 * before, (before, after)          # PROD pushes the forget tokens down

    rec = json.loads((tmp_path / "out" / "run.json").read_text())
    assert rec["method"] == "prod" and rec["params"] == {"p": 0.8, "alpha": 0.0, "loss": "ce"}
    assert rec["config"]["epochs"] == 2 and rec["config"]["lr"] == 1e-2 and rec["config"]["batch_size"] == 2
    assert rec["forget_hash"] == examples_hash(forget_examples) and rec["forget_examples"] == 5
    assert rec["processes"] == 1 and rec["model"] == str(micro_dir)
    assert rec["reference"]["bytes"] > 0 and os.path.exists(rec["reference"]["path"])
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2]
    for e in rec["epochs"]:
        assert torch.isfinite(torch.tensor(e["loss"])) and e["loss"] > 0 and e["seconds"] >= 0
    assert rec["epochs"][1]["loss"] < rec["epochs"][0]["loss"]
    assert rec["total_seconds"] >= 0 and run["epochs"] == rec["epochs"]

    for ep in (1, 2):
        ck = tmp_path / "out" / "checkpoints" / f"epoch-{ep}"
        m = AutoModelForCausalLM.from_pretrained(ck)
        assert m.config.vocab_size == len(tokenizer) and (ck / "tokenizer.json").exists()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    for k, v in final.state_dict().items():
        assert torch.equal(v, micro_model.state_dict()[k]), k
    assert_same_weights(weights(tmp_path / "out"), weights(tmp_path / "out" / "checkpoints" / "epoch-2"))
    assert any(not torch.equal(v, original[k]) for k, v in final.state_dict().items())
    ck_files = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ck_files == ["epoch-1", "epoch-2", "state"]       # no .tmp / .old leftovers
    prog = json.loads((tmp_path / "out" / "checkpoints" / "state" / "progress.json").read_text())
    assert prog["epoch"] == 2 and prog["batch"] == 0

    # rerunning a finished run trains nothing and leaves the weights as they were
    again = AutoModelForCausalLM.from_pretrained(micro_dir, dtype=torch.float32)
    unlearn(again, tokenizer, forget_examples, get_method("prod"), cfg, tmp_path / "out")
    assert_same_weights(weights(tmp_path / "out"), weights(tmp_path / "out" / "checkpoints" / "epoch-2"))
    # ...and a different forget set in the same folder is refused
    with pytest.raises(ValueError, match="another method or forget set"):
        unlearn(again, tokenizer, forget_examples[:3], get_method("prod"), cfg, tmp_path / "out")


def test_epoch_order_is_a_pure_function():
    assert epoch_order(7, 3, 1) == epoch_order(7, 3, 1)
    assert sorted(epoch_order(7, 3, 1)) == list(range(7))
    assert epoch_order(7, 3, 1) != epoch_order(7, 3, 2)


def test_half_written_state_is_never_loaded(micro_dir, tokenizer, forget_examples, tmp_path):
    ex = forget_examples[:3]
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=1, max_length=48, save_steps=1, seed=1)
    clean = AutoModelForCausalLM.from_pretrained(micro_dir, dtype=torch.float32)
    unlearn(clean, tokenizer, ex, get_method("prod"), cfg, tmp_path / "clean")

    out = tmp_path / "dirty"
    # What a kill in the middle of save_state leaves: a plausible progress.json beside a partial
    # accelerate folder, under the temp name (and the previous state under state.old).
    for name in ("state.tmp", "state.old"):
        d = out / "checkpoints" / name
        (d / "accelerate").mkdir(parents=True)
        (d / "accelerate" / "model.safetensors").write_bytes(b"\x00garbage")
        (d / "progress.json").write_text(json.dumps({"epoch": 1, "batch": 0, "epochs": [], "partial_losses": [],
                                                     "method": "prod", "forget_hash": examples_hash(ex)}))
    (out / "checkpoints" / "epoch-1.tmp").mkdir()                 # a half-written checkpoint too
    dirty = AutoModelForCausalLM.from_pretrained(micro_dir, dtype=torch.float32)
    run = unlearn(dirty, tokenizer, ex, get_method("prod"), cfg, out)
    assert [e["epoch"] for e in run["epochs"]] == [1]             # it trained from the start
    assert_same_weights(weights(out), weights(tmp_path / "clean"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-1", "state"]


# ------------------------------------------------------------------ subprocess runs

SCRIPT = r"""
import dataclasses, json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from prod_unlearn.data.examples import load_examples
from prod_unlearn.methods import get_method
from prod_unlearn.training.loop import TrainConfig, unlearn

model_dir, forget, out, cfg_json, slow = sys.argv[1:6]
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
method = get_method("prod")
if float(slow) > 0:  # slows each step down (numerics unchanged) so the test can kill it mid-run
    inner = method.loss
    def slow_loss(*a, **k):
        time.sleep(float(slow))
        return inner(*a, **k)
    method = dataclasses.replace(method, loss=slow_loss)
unlearn(model, tok, load_examples(forget), method, TrainConfig(**json.loads(cfg_json)), out)
"""


@pytest.fixture
def script(tmp_path):
    f = tmp_path / "train_script.py"
    f.write_text(SCRIPT)
    return f


def _cmd(script, micro_dir, forget, out, cfg: dict, slow: float = 0.0):
    return [PYTHON, str(script), str(micro_dir), str(forget), str(out), json.dumps(cfg), str(slow)]


def _run(cmd, env, timeout=180):
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_resume_after_sigkill_matches_uninterrupted_run(script, micro_dir, forget_examples, subprocess_env,
                                                        tmp_path):
    forget = tmp_path / "forget.jsonl"
    write_jsonl(forget_examples, forget)
    # linear warm-up/decay, weight decay and gradient accumulation: everything a resume must restore
    cfg = dict(epochs=3, lr=5e-3, batch_size=1, grad_accum=2, max_length=48, save_steps=1, seed=7,
               scheduler="linear", warmup_steps=2, weight_decay=0.01, method_params={"p": 0.9})

    _run(_cmd(script, micro_dir, forget, tmp_path / "A", cfg), subprocess_env)          # uninterrupted

    out = tmp_path / "B"
    progress = out / "checkpoints" / "state" / "progress.json"
    proc = subprocess.Popen(_cmd(script, micro_dir, forget, out, cfg, slow=0.25), env=subprocess_env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"run B ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no resumable state appeared"
            if progress.exists():
                prog = json.loads(progress.read_text())
                if prog["batch"] > 0 or prog["epoch"] >= 1:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()        # it really was interrupted
    killed_at = json.loads(progress.read_text())

    r = _run(_cmd(script, micro_dir, forget, out, cfg), subprocess_env)                 # same command again
    assert f"resuming {out} at epoch {killed_at['epoch'] + 1}, batch {killed_at['batch']}" in " ".join(r.stderr.split())

    assert_same_weights(weights(out), weights(tmp_path / "A"))
    for ep in (1, 2, 3):
        assert_same_weights(weights(out / "checkpoints" / f"epoch-{ep}"), weights(tmp_path / "A" / "checkpoints" / f"epoch-{ep}"))
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (tmp_path / "A", out))
    assert [e["loss"] for e in rb["epochs"]] == pytest.approx([e["loss"] for e in ra["epochs"]], abs=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(script, micro_dir, tokenizer, subprocess_env, tmp_path):
    # Every completion is cut to the same number of loss tokens: each process's loss is a mean over
    # its own tokens and DDP averages the processes, which equals one process's mean over the
    # whole batch only when the shards hold equally many tokens.
    texts = [f"def f{i}(x, y):\n    z = x * {i} + y\n    for k in range({i + 2}):\n        z += k\n    return z\n"
             for i in range(5)]
    ex = [Example("", t, f"ex{i}") for i, t in enumerate(texts)]
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) >= 23 for t in texts)
    forget = tmp_path / "forget.jsonl"
    write_jsonl(ex, forget)   # 5 examples: the last global batch holds one example (an uneven tail)
    cfg = dict(epochs=2, lr=1e-2, max_length=24, seed=3, scheduler="linear", weight_decay=0.01,
               max_grad_norm=0.0)  # no clipping: it would hide a wrongly scaled gradient

    _run(_cmd(script, micro_dir, forget, tmp_path / "one", {**cfg, "batch_size": 2}), subprocess_env)
    env = {**subprocess_env, "ACCELERATE_DISABLE_RICH": "1"}
    # `accelerate launch --cpu` starts ONE process (the multi-CPU path needs MPI); with no GPU
    # visible, --multi_gpu runs torchrun and Accelerate picks MULTI_CPU (gloo).
    launch = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    _run(launch + _cmd(script, micro_dir, forget, tmp_path / "two", {**cfg, "batch_size": 1})[1:], env, timeout=300)

    rec = json.loads((tmp_path / "two" / "run.json").read_text())
    assert rec["processes"] == 2
    # Tolerance 5e-5: the runs differ only in float32 summation order (one batched forward vs two
    # shards + gloo all-reduce); measured max abs diff 2.5e-6 after 6 steps at lr 1e-2. A real
    # mismatch moves weights by ~1e-3..1e-2: the scheduler stepped once per process gave 1.5e-2,
    # the uneven tail batch weighted as a full one gave 5.8e-3.
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=5e-5)
    one = json.loads((tmp_path / "one" / "run.json").read_text())
    assert [e["loss"] for e in rec["epochs"]] == pytest.approx([e["loss"] for e in one["epochs"]], abs=1e-5)


def test_report_to_tensorboard_logs_every_step_and_evaluation(micro_model, tokenizer, forget_examples, tmp_path):
    """--report-to tensorboard: event files in OUT/tensorboard that TensorBoard's own reader reads, with
    loss, lr, gradient norm and seconds at every optimiser step and each evaluation's figures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=2, max_length=64, scheduler="linear", seed=0)
    out = tmp_path / "out"
    unlearn(micro_model, tokenizer, forget_examples, get_method("ga"), cfg, out, report_to="tensorboard",
            evaluate=lambda m, epoch: {"score": 1.0 / (epoch + 1), "nested": {"x": 2.0}, "skip": float("nan")})
    runs = [p.parent for p in out.glob("tensorboard/**/events.out.tfevents.*")]
    assert runs
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    steps = 2 * -(-len(forget_examples) // 2)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/seconds_per_step"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, steps + 1)), tag
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]           # the linear decay, as applied
    assert [e.step for e in acc.Scalars("eval/score")] == [0, steps // 2, steps]
    assert "eval/nested/x" in tags and "eval/skip" not in tags          # NaN is dropped, not plotted


def test_report_to_refuses_a_tracker_that_is_not_installed(tmp_path, monkeypatch):
    import importlib.util

    from prod_unlearn import tracking
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    assert "pip install 'prod-unlearn[wandb]'" in tracking.check_report_to("wandb")
    assert "expected one of none, tensorboard" in tracking.check_report_to("tb")
    assert tracking.check_report_to("none") is None


def test_rule_learning_rate_and_restore_reach_the_optimiser(micro_model, tokenizer, forget_examples, tmp_path):
    """The stopping rule's answers (until.py) as the loop applies them: ``lr_scale`` from the next
    step on, and after ``restored`` the optimiser starts from fresh moments on the put-back weights
    (Adam's first step moves every weight with a gradient by the learning rate exactly)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Rule:
        curve: list = []
        lr_scale, restored = 1.0, False

        def __call__(self, model, step):
            self.restored = step == 4
            if step == 2:
                self.lr_scale, self.at2 = 4.0, [p.detach().clone() for p in model.parameters()]
            if step == 4:   # put back the weights of step 2
                self.lr_scale = 0.5
                for p, w in zip(model.parameters(), self.at2):
                    p.data.copy_(w)
            if step == 5:
                self.moved = torch.cat([(p.detach() - w).flatten() for p, w in zip(model.parameters(), self.at2)])
            return None

    rule = Rule()
    cfg = TrainConfig(lr=1e-3, batch_size=1, max_length=64, seed=0, until_forgotten=True, max_steps=6,
                      eval_steps=[2, 4, 5], weight_decay=0.0)
    out = tmp_path / "out"
    unlearn(micro_model, tokenizer, forget_examples, get_method("ga"), cfg, out, step_evaluate=rule,
            report_to="tensorboard")
    acc = EventAccumulator(str(next(out.glob("tensorboard/**/events.out.tfevents.*")).parent))
    acc.Reload()
    assert [round(e.value, 6) for e in acc.Scalars("train/lr")] == [1e-3, 1e-3, 4e-3, 4e-3, 5e-4, 5e-4]
    moved = rule.moved[rule.moved != 0].abs()
    exact = ((moved - 5e-4).abs() < 5e-6).float().mean().item()
    assert len(moved) > 1000 and exact > 0.95


def test_items_the_rule_rests_train_no_forget_loss(micro_model, tokenizer, forget_examples, tmp_path):
    """After a guard trip the rule rests the items already forgotten (until.py ``resting``): from the
    next step on their batches carry no forget loss (here no retain term either: a loss of exactly 0),
    while the other items train as before."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from prod_unlearn.data.batching import epoch_order

    class Rule:
        curve: list = []
        lr_scale, restored, resting = 1.0, False, ()

        def __call__(self, model, step):
            self.resting = [0]
            return None

    n = len(forget_examples)
    cfg = TrainConfig(lr=1e-3, batch_size=1, max_length=64, seed=0, until_forgotten=True, max_steps=2 * n,
                      eval_steps=[2], weight_decay=0.0)
    out = tmp_path / "out"
    unlearn(micro_model, tokenizer, forget_examples, get_method("ga"), cfg, out, step_evaluate=Rule(),
            report_to="tensorboard")
    acc = EventAccumulator(str(next(out.glob("tensorboard/**/events.out.tfevents.*")).parent))
    acc.Reload()
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    item = {e * n + b + 1: i for e in range(2) for b, i in enumerate(epoch_order(n, 0, e))}  # step -> item
    assert sorted(loss) == list(range(1, 2 * n + 1))
    rested = [s for s in loss if s > 2 and item[s] == 0]
    assert rested and all(loss[s] == 0 for s in rested)
    assert all(loss[s] < 0 for s in loss if s not in rested)   # GA: minus the NLL of a trained item
