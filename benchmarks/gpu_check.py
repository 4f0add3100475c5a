"""The GPU path in one script: step cost, the frozen pass, generation, evaluation and FSDP on real shapes.

On one GPU (no download: every model is random-initialised from a config with a real model's shapes):

    python benchmarks/gpu_check.py --out benchmarks/gpu --deadline-s 420

writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Parts, in order (each is skipped,
and says so, once the deadline is near; each writes its figures as soon as it ends):

- ``steps_1b``: sft, prod, npo, undial on a Llama-3.2-1B-shaped model, full fine-tuning, bf16:
  median step time and peak GPU memory, each as a ratio against ``sft`` in the same run.
- ``steps_7b_lora``: the same on a CodeLlama-7B-shaped model with LoRA (r 16) and gradient
  checkpointing; also whether the LoRA weights changed.
- ``reference``: the frozen reference pass (PROD's sparse target) against a plain no-grad forward
  over the same forget batches, and its cache bytes per token, at vocab 32 016 (CodeLlama-7B) and
  152 064 (Qwen2.5-Coder-7B).
- ``generation``: our ``greedy_continue`` against ``model.generate`` (greedy) on the 1B model at
  batch 1 / 16 / 64: tokens/s and token agreement.
- ``embedded_eval``: the shipped model's copyright evaluation (as ``unlearn`` scores it: one 50 %
  line cut per file) on this GPU; compare with the 2-core CPU figure in benchmarks/README.md.
- ``fsdp``: ``prod-unlearn unlearn`` through ``accelerate launch --config_file
  configs/accelerate/fsdp.yaml --num_processes 1`` on a 1B-shaped model (with the embedded
  vocabulary, so the tokenizer matches), then the saved folder loaded with AutoModelForCausalLM.

A random model predicts an almost uniform distribution (PROD's p = 0.8 nucleus would hold 0.8 |V|
tokens, unlike any trained model), so the final norm's gain is scaled until the mean nucleus is
about 100 entries, as ``step_cost.py --micro-vocab`` does.

``--smoke`` runs every part with tiny shapes on CPU: the test that the script works the first
time it meets a GPU (tests/test_gpu_check.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # real models' shapes (config.json of each), bf16
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
    "codellama-7b": dict(vocab_size=32016, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "qwen2.5-coder-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                             num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
SMOKE = {name: dict(shape, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2 if shape["num_key_value_heads"] < shape["num_attention_heads"] else 4,
                    vocab_size=shape["vocab_size"] // 64)
         for name, shape in SHAPES.items()}
METHODS = ("sft", "prod", "npo", "undial")


class Clock:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_mb(self, base: int) -> float:
        return (torch.cuda.max_memory_allocated() - base) / 2**20 if self.cuda else float("nan")


def build(shape: dict, device: str, dtype, seq_len: int, entries: float = 100.0):
    """A random model with ``shape``, its logits scaled so PROD's nucleus holds ~``entries`` tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(**shape, max_position_embeddings=max(2048, seq_len), bos_token_id=0, eos_token_id=0,
                      pad_token_id=1)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.config.use_cache = False
    from prod_unlearn.methods.prod import sculpt_target
    ids = torch.randint(2, shape["vocab_size"], (1, min(seq_len, 128)), device=device)
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        base = model.lm_head(hidden)[0, :-1].float()
    targets = ids[0, 1:]

    def size(scale: float) -> float:
        return sculpt_target(base * scale, targets, 0.8)[2].float().mean().item()
    lo, hi = 1.0, 2.0
    while size(hi) > entries and hi < 1e5:
        lo, hi = hi, hi * 2
    for _ in range(20):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if size(mid) > entries else (lo, mid)
    with torch.no_grad():  # the logits are linear in the final norm's gain
        model.model.norm.weight.mul_(hi)
    return model


def forget_batches(vocab: int, n: int, seq_len: int, batch: int, device: str):
    from prod_unlearn.data.batching import Encoded, collate
    g = torch.Generator().manual_seed(1234)
    items = [Encoded([0] + torch.randint(2, vocab, (seq_len - 1,), generator=g).tolist(), 1) for _ in range(n)]
    batches = []
    for s in range(0, n - batch + 1, batch):
        b = {"forget": {k: t.to(device) for k, t in collate(items[s:s + batch], 1).items()},
             "index": torch.arange(s, s + batch)}
        batches.append(b)
    return items, batches


def time_steps(model, method_name: str, items, batches, clock: Clock, steps: int, lr: float = 1e-5) -> dict:
    """Median step (forward + backward + clip + AdamW) and peak memory over the steps, reference apart."""
    from prod_unlearn.methods import get_method, make_params
    from prod_unlearn.training.reference import compute_reference
    method = get_method(method_name)
    params = make_params(method, {})
    ref, ref_s = None, 0.0
    if method.reference is not None:
        t = clock.now()
        ref = compute_reference(model, {"forget": items}, method, params, 1, batch_size=len(batches[0]["index"]))
        ref_s = clock.now() - t
    trainable = [p for p in model.parameters() if p.requires_grad]
    base = clock.reset_peak()
    opt = torch.optim.AdamW(trainable, lr=lr)
    model.train()
    times, losses = [], []
    for i in range(steps + 2):
        b = batches[i % len(batches)]
        t = clock.now()
        loss = method.loss(model, b, ref, params)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = clock.now() - t
        losses.append(loss.item())
        if i >= 2:
            times.append(dt)
    peak = clock.peak_mb(base)
    del opt
    clock.reset_peak()
    return {"step_s": round(statistics.median(times), 4), "step_s_spread": [round(min(times), 4), round(max(times), 4)],
            "peak_mb": round(peak, 1), "reference_s": round(ref_s, 3),
            "reference_bytes_per_token": round(ref.nbytes() / sum(len(x.input_ids) - 1 for x in items), 1) if ref else None,
            "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}


def with_ratios(rows: dict) -> dict:
    floor = rows.get("sft")
    for r in rows.values():
        if floor and "step_s" in r:
            r["time_x_sft"] = round(r["step_s"] / floor["step_s"], 3)
            if floor["peak_mb"] == floor["peak_mb"] and floor["peak_mb"] > 0:
                r["memory_x_sft"] = round(r["peak_mb"] / floor["peak_mb"], 3)
    return rows


# ---------------------------------------------------------------- parts

def part_steps_1b(a, clock):
    shape = a.shapes["llama-1b"]
    model = build(shape, a.device, a.dtype, a.seq_len)
    items, batches = forget_batches(shape["vocab_size"], a.pool, a.seq_len, a.batch, a.device)
    return with_ratios({m: time_steps(model, m, items, batches, clock, a.steps) for m in METHODS})


def part_steps_7b_lora(a, clock):
    from peft import LoraConfig, get_peft_model
    shape = a.shapes["codellama-7b"]
    model = build(shape, a.device, a.dtype, a.seq_len)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    items, batches = forget_batches(shape["vocab_size"], a.pool, a.seq_len, a.batch, a.device)
    rows = {}
    for m in METHODS:
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        rows[m] = time_steps(model, m, items, batches, clock, a.steps)
        after = dict(model.named_parameters())
        rows[m]["lora_changed"] = sum(not torch.equal(before[n], after[n]) for n in before)
        rows[m]["lora_tensors"] = len(before)
        del before
    return with_ratios(rows)


def part_reference(a, clock):
    from prod_unlearn.methods import get_method, make_params
    from prod_unlearn.training.reference import compute_reference
    out = {}
    for name in ("codellama-7b", "qwen2.5-coder-7b"):
        shape = a.shapes[name]
        model = build(shape, a.device, a.dtype, a.seq_len).eval()
        items, batches = forget_batches(shape["vocab_size"], a.pool, a.seq_len, a.batch, a.device)
        method = get_method("prod")
        params = make_params(method, {})
        compute_reference(model, {"forget": items[:a.batch]}, method, params, 1, batch_size=a.batch)  # warm
        t = clock.now()
        with torch.no_grad():
            for b in batches:
                model(input_ids=b["forget"]["input_ids"], attention_mask=b["forget"]["attention_mask"]).logits.float()
        fwd = clock.now() - t
        t = clock.now()
        ref = compute_reference(model, {"forget": items}, method, params, 1, batch_size=a.batch)
        ref_s = clock.now() - t
        tokens = sum(len(x.input_ids) - 1 for x in items)
        out[name] = {"vocab": shape["vocab_size"], "tokens": tokens, "forward_s": round(fwd, 3),
                     "reference_s": round(ref_s, 3), "reference_x_forward": round(ref_s / fwd, 3),
                     "cache_bytes_per_token": round(ref.nbytes() / tokens, 1),
                     "dense_fp32_bytes_per_token": 4 * shape["vocab_size"]}
        del model
        clock.reset_peak()
    return out


def part_generation(a, clock):
    from prod_unlearn.evaluation.generation import greedy_continue
    from prod_unlearn.models.loading import load_tokenizer, DEFAULT_MODEL
    shape = a.shapes["llama-1b"]
    model = build(shape, a.device, a.dtype, a.seq_len).eval()
    model.config.use_cache = True
    tok = load_tokenizer(str(DEFAULT_MODEL))
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = None  # a random model: every row runs its full budget
    g = torch.Generator().manual_seed(7)
    rows = {}
    for bs in a.gen_batches:
        n = max(bs, 4) if bs == 1 else bs
        prompts = [torch.randint(2, shape["vocab_size"], (a.gen_prompt,), generator=g).tolist() for _ in range(n)]
        t = clock.now()
        ours = greedy_continue(model, tok, prompts, [a.gen_new] * n, batch_size=bs, stop_at_eos=False)
        ours_s = clock.now() - t
        t = clock.now()
        ref = []
        for s in range(0, n, bs):
            x = torch.tensor(prompts[s:s + bs], device=a.device)  # equal lengths: no padding
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=a.gen_new,
                               min_new_tokens=a.gen_new, do_sample=False)
            ref += [r[x.shape[1]:].tolist() for r in y]
        hf_s = clock.now() - t
        agree = sum(sum(p == q for p, q in zip(o, r)) for o, r in zip(ours, ref)) / (n * a.gen_new)
        rows[str(bs)] = {"rows": n, "new_tokens": a.gen_new, "ours_tok_s": round(n * a.gen_new / ours_s, 1),
                         "generate_tok_s": round(n * a.gen_new / hf_s, 1), "speedup": round(hf_s / ours_s, 2),
                         "token_agreement": round(agree, 4)}
    return rows


def part_generation_embedded(a, clock):
    """Our loop against ``model.generate`` on a trained model (the shipped one): the copyright files
    cut at 50 % of their lines, 128 new tokens, no hints; tokens/s and token agreement."""
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.data.tokenize import encode_prompt, line_cut
    from prod_unlearn.evaluation.generation import greedy_continue
    from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL, load_model
    model, tok = load_model(str(DEFAULT_MODEL), device=a.device, dtype="auto")
    model.eval()
    files = load_examples(ASSETS / "data" / "copyright.jsonl")[:a.eval_files]
    prompts = [encode_prompt(tok, e.completion[:line_cut(e.completion, 0.5)]) for e in files]
    new = a.gen_new
    rows = {}
    for bs in a.gen_batches:
        ps = prompts[:max(bs, 4)] if bs == 1 else (prompts * (1 + bs // len(prompts)))[:bs]
        t = clock.now()
        ours = greedy_continue(model, tok, ps, [new] * len(ps), batch_size=bs, stop_at_eos=False)
        ours_s = clock.now() - t
        t = clock.now()
        ref = []
        for p in ps if bs == 1 else [None]:
            group = [p] if bs == 1 else ps
            width = max(len(x) for x in group)   # left padding, as generate expects
            x = torch.tensor([[tok.pad_token_id] * (width - len(q)) + q for q in group], device=a.device)
            mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in group], device=a.device)
            y = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=tok.pad_token_id)
            ref += [r[width:].tolist() for r in y]
        hf_s = clock.now() - t
        agree = sum(sum(p == q for p, q in zip(o, r)) for o, r in zip(ours, ref)) / sum(len(r) for r in ref)
        rows[str(bs)] = {"rows": len(ps), "new_tokens": new, "ours_tok_s": round(len(ps) * new / ours_s, 1),
                         "generate_tok_s": round(len(ps) * new / hf_s, 1), "speedup": round(hf_s / ours_s, 2),
                         "token_agreement": round(agree, 4),
                         "rows_identical": sum(o == r for o, r in zip(ours, ref))}
    return rows


def part_embedded_eval(a, clock):
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL, load_model
    from prod_unlearn.tasks.copyright import continuation_bleu
    model, tok = load_model(str(DEFAULT_MODEL), device=a.device, dtype="auto")
    model.eval()
    files = load_examples(ASSETS / "data" / "copyright.jsonl")[:a.eval_files]
    out = {"files": len(files), "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    for run in ("first", "second"):  # the first includes CUDA warm-up and thread probing
        t = clock.now()
        res = continuation_bleu(model, tok, files, cuts=(0.5,), desc="copyright eval")
        out[f"{run}_s"] = round(clock.now() - t, 2)
    out["bleu"] = round(res["bleu"], 4)
    out["threads"] = torch.get_num_threads()
    return out


def part_fsdp(a, clock):
    import shutil
    from transformers import AutoModelForCausalLM
    from prod_unlearn.data.examples import load_examples, write_jsonl
    from prod_unlearn.models.loading import ASSETS, DEFAULT_MODEL, load_tokenizer
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tok = load_tokenizer(str(DEFAULT_MODEL))
    shape = dict(a.shapes["llama-1b"], vocab_size=len(tok))
    model = build(shape, a.device, a.dtype, a.seq_len)
    model.config.bos_token_id = model.config.eos_token_id = tok.bos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    del model
    clock.reset_peak()
    write_jsonl(load_examples(ASSETS / "data" / "copyright.jsonl")[:4], work / "forget.jsonl")
    launcher = work / "launch.py"
    launcher.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom prod_unlearn.cli import app\napp()\n")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs/accelerate/fsdp.yaml"), "--num_processes", "1",
           str(launcher), "unlearn", "--model", str(work / "model"), "--forget", str(work / "forget.jsonl"),
           "--method", "prod", "--epochs", "1", "--lr", "1e-5", "--max-length", "512", "--no-evaluate",
           "--out", str(work / "out"), "--device", a.device if a.smoke else "auto"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.fsdp_timeout,
                       env={**os.environ, "PROD_UNLEARN_NO_PROGRESS": "1", "PYTHONPATH": str(ROOT)})
    (a.out / "fsdp.log").write_text(p.stdout + p.stderr)
    errors = [line for line in (p.stdout + p.stderr).splitlines() if "rror" in line][:8]
    res = {"argv": cmd[3:], "rc": p.returncode, "seconds": round(time.perf_counter() - t, 1),
           "errors": errors, "tail": (p.stdout + p.stderr)[-800:]}
    if p.returncode == 0:
        m = AutoModelForCausalLM.from_pretrained(work / "out")
        res["loads"] = True
        res["parameters"] = sum(x.numel() for x in m.parameters())
    return res


PARTS = {"steps_1b": (part_steps_1b, 40), "steps_7b_lora": (part_steps_7b_lora, 90),
         "reference": (part_reference, 80), "generation": (part_generation, 60),
         "embedded_eval": (part_embedded_eval, 60), "generation_embedded": (part_generation_embedded, 60),
         "fsdp": (part_fsdp, 90)}  # name: (fn, seconds it needs)


def markdown(rec: dict) -> str:
    lines = [f"# GPU check ({rec['device_name']}, torch {rec['torch']}, {rec['date']})", ""]
    for part in ("steps_1b", "steps_7b_lora"):
        r = rec["parts"].get(part)
        if isinstance(r, dict) and "sft" in r:
            lines += [f"## {part}", "", "| method | step s (min-max) | x sft | peak MB | x sft | reference s |",
                      "|---|---|---|---|---|---|"]
            for m, x in r.items():
                if not isinstance(x, dict):
                    continue
                lines.append(f"| {m} | {x['step_s']} ({x['step_s_spread'][0]}-{x['step_s_spread'][1]}) | "
                             f"{x.get('time_x_sft')} | {x['peak_mb']} | {x.get('memory_x_sft')} | {x['reference_s']} |")
            lines.append("")
    for part in ("reference", "generation", "embedded_eval", "fsdp"):
        if part in rec["parts"]:
            lines += [f"## {part}", "", "```json", json.dumps(rec["parts"][part], indent=1)[:3000], "```", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline-s", type=float, default=420)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (tests the script)")
    ap.add_argument("--work", default="/tmp/gpu_check")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method [default 5; smoke 2]")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    a.device = "cpu" if a.smoke else "cuda"
    a.dtype = torch.float32 if a.smoke else torch.bfloat16
    a.shapes = SMOKE if a.smoke else SHAPES
    a.seq_len, a.batch, a.pool, steps = (64, 2, 4, 2) if a.smoke else (512, 4, 16, 5)
    a.steps = a.steps or steps
    a.gen_batches, a.gen_prompt, a.gen_new = ((1, 4), 16, 8) if a.smoke else ((1, 16, 64), 128, 128)
    a.eval_files = 3 if a.smoke else 50
    a.fsdp_timeout = 300
    if not a.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --smoke on CPU)")
    torch.backends.cuda.matmul.allow_tf32 = True
    import datetime
    rec = {"device_name": torch.cuda.get_device_name() if a.device == "cuda" else "cpu (smoke)",
           "torch": torch.__version__, "date": datetime.date.today().isoformat(), "smoke": a.smoke, "parts": {}}
    a.out.mkdir(parents=True, exist_ok=True)
    clock = Clock(a.device)
    for name in a.parts.split(","):
        fn, need = PARTS[name]
        left = a.deadline_s - (time.perf_counter() - t0)
        if left < need and not a.smoke:
            rec["parts"][name] = f"skipped: {left:.0f} s left of the deadline, the part needs about {need} s"
            continue
        t = time.perf_counter()
        try:
            rec["parts"][name] = fn(a, clock)
        except Exception as e:  # a failed part is a finding, reported; the others still run
            import traceback
            rec["parts"][name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        if isinstance(rec["parts"][name], dict):
            rec["parts"][name]["part_seconds"] = round(time.perf_counter() - t, 1)
        print(f"[{time.perf_counter() - t0:.0f}s] {name}: {json.dumps(rec['parts'][name])[:600]}", flush=True)
        clock.reset_peak()
        (a.out / "gpu_check.json").write_text(json.dumps(rec, indent=1))
        (a.out / "gpu_check.md").write_text(markdown(rec))
    return rec


if __name__ == "__main__":
    main()
