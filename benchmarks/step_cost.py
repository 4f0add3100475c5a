"""Measured cost of one optimisation step: PROD vs fine-tuning vs PROD the official way (+ NPO, DPO).

Every variant trains the same model on the same batches (same shape, no padding) with AdamW;
a step is forward + backward + grad clipping + optimiser step, as in ``training/loop.py``.

  sft                 plain fine-tuning, ``get_method("sft").loss``: the floor.
  prod                our PROD: the sparse target is built ONCE by ``compute_reference``
                      (timed separately) and training holds one model.
  prod-reference-way  PROD as the paper's official code runs it: a frozen second copy of the
                      model does a no-grad forward every step and the dense |V|-wide target is
                      rebuilt every step with a full-vocabulary sort. It computes the same loss
                      as ``prod`` (asserted on the first step).
  prod-logsumexp      ``prod`` with the sparse loss as first written (log pi = logit - logsumexp):
                      the "before" of the change this benchmark motivated (benchmarks/README.md);
                      same cache, same loss (asserted on the first step).
  npo, dpo            ``get_method("npo"/"dpo")`` with their cached reference log-probs (reported
                      as missing when the method is not registered).

Each variant runs in a fresh process (multiprocessing spawn) so its peak memory is its own.
Memory is measured over the warm-up steps, time over the steps after them:

- peak RSS: resident-set growth over the same post-load baseline (VmHWM, reset through
  /proc/self/clear_refs; ru_maxrss where that is unavailable), glibc's default malloc. It is
  what the OS sees, and it is noisy (heap reuse, +-10-20 % between identical runs).
- tensor peak: allocator-exact and deterministic, the CPU analogue of
  ``torch.cuda.max_memory_allocated``: tensors resident at the start of a step (AdamW state,
  cache, frozen copy) + the peak of bytes allocated minus freed during one profiled step.
  On CUDA only ``max_memory_allocated`` growth is reported.
- step time: median wall (and CPU) seconds of forward + backward + clip + AdamW step, with
  glibc told to keep freed memory for reuse (``--no-heap-cache`` to not): otherwise every
  |V|-wide buffer is a fresh mmap each step and, in a VM, page faults are half the step.
  With ``--rounds`` the variants run round-robin and each keeps its quickest round's median
  (load from other processes only adds time).

The one-time reference build is measured apart from the training steps; memory that stays
resident during training (the cache, a frozen copy) counts. Denormal floats are flushed
(``--keep-denormals`` to not): some kernels otherwise slow down ~100x on the tiny gradients of
a peaked softmax, which is noise, not method cost.

``--micro-vocab N`` replaces the embedded model by an in-process micro Llama with an N-token
vocabulary fed random token ids, to show how the costs scale with |V|. A randomly initialised
model predicts an almost uniform distribution (its p=0.8 nucleus would hold 0.8*|V| tokens,
unlike any trained model), so its logits are scaled (final-norm gain) until the mean nucleus size
matches ``--micro-entries`` (default 100; the embedded model averages ~106 at p=0.8).

    python benchmarks/step_cost.py                       # embedded 13.8M Llama, |V| = 8192
    python benchmarks/step_cost.py --micro-vocab 150000  # vocabulary scaling
    python benchmarks/step_cost.py --quick --json
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch

VARIANTS = ("sft", "prod", "prod-logsumexp", "prod-reference-way", "npo", "dpo")
REGISTERED = {"sft": "sft", "prod": "prod", "prod-logsumexp": "prod", "prod-reference-way": "prod",
              "npo": "npo", "dpo": "dpo"}


# ---------------------------------------------------------------- memory

class Memory:
    """Peak memory growth over a baseline: VmHWM on Linux CPU, the allocator's peak on CUDA."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.clear_refs = not self.cuda and os.path.exists("/proc/self/clear_refs")
        self.base = 0

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def _current(self) -> int:
        if self.cuda:
            return torch.cuda.memory_allocated()
        if os.path.exists("/proc/self/status"):
            return self._status("VmRSS")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    def _tidy(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        elif sys.platform.startswith("linux"):
            try:  # hand freed heap pages back so RSS follows live memory
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass

    def reset_peak(self) -> None:
        """Restart peak tracking from the current usage."""
        self._tidy()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.clear_refs:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def set_baseline(self) -> None:
        self.reset_peak()
        self.base = self._current()

    def peak_growth(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.clear_refs:
            peak = self._status("VmHWM")
        else:  # never reset: only meaningful because each variant runs in a fresh process
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return max(0, peak - self.base)


# ---------------------------------------------------------------- models and data

def micro_config(vocab: int, hidden: int, layers: int, seq_len: int):
    from transformers import LlamaConfig
    heads = max(1, hidden // 32)
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
                       max_position_embeddings=max(2048, seq_len), bos_token_id=0, eos_token_id=0, pad_token_id=1,
                       tie_word_embeddings=True)


def build_micro(cfg: dict, dtype: torch.dtype):
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(micro_config(cfg["micro_vocab"], cfg["micro_hidden"], cfg["micro_layers"], cfg["seq_len"]))
    with torch.no_grad():
        model.model.norm.weight.mul_(cfg.get("micro_scale", 1.0))
    return model.to(dtype)


def micro_data(cfg: dict):
    """Random token ids: ``pool`` forget sequences of seq_len (BOS + completion), short refusals."""
    from prod_unlearn.data.batching import Encoded
    g = torch.Generator().manual_seed(1234)
    v, t = cfg["micro_vocab"], cfg["seq_len"]
    forget = [Encoded([0] + torch.randint(2, v, (t - 1,), generator=g).tolist(), 1) for _ in range(cfg["pool"])]
    refusal = [Encoded([0] + torch.randint(2, v, (32,), generator=g).tolist(), 1) for _ in range(cfg["pool"])]
    return {"forget": forget, "refusal": refusal}


def embedded_data(cfg: dict, tokenizer):
    """The copyright forget set cut to exactly seq_len tokens (longer files only: no padding)."""
    from prod_unlearn.data.batching import encode
    from prod_unlearn.data.examples import load_examples
    from prod_unlearn.methods.base import refusal_view
    from prod_unlearn.methods.refusals import load_refusals
    from prod_unlearn.models.loading import ASSETS
    examples = load_examples(ASSETS / "data" / "copyright.jsonl")
    enc = encode(examples, tokenizer, cfg["seq_len"])
    full = [i for i, e in enumerate(enc) if len(e.input_ids) == cfg["seq_len"]]
    if len(full) < cfg["batch_size"]:
        raise SystemExit(f"--seq-len {cfg['seq_len']}: only {len(full)} forget files are that long "
                         f"(need --batch-size {cfg['batch_size']}); use a shorter --seq-len")
    chosen = full[:cfg["pool"]]
    refusals = load_refusals()
    return {"forget": [enc[i] for i in chosen],
            "refusal": encode([refusal_view(examples[i], refusals) for i in chosen], tokenizer, cfg["seq_len"])}


def load(cfg: dict):
    """(model in train mode, pad id, {view: [Encoded]}, model name, vocab)."""
    from prod_unlearn.models.loading import DEFAULT_MODEL, load_model, resolve_dtype
    if cfg["micro_vocab"]:
        model = build_micro(cfg, resolve_dtype(cfg["dtype"], cfg["device"])).to(cfg["device"])
        views, pad = micro_data(cfg), 1
        name = f"micro-llama(vocab={cfg['micro_vocab']}, hidden={cfg['micro_hidden']}, layers={cfg['micro_layers']})"
    else:
        model, tok = load_model(cfg["model"] or str(DEFAULT_MODEL), device=cfg["device"], dtype=cfg["dtype"])
        views, pad = embedded_data(cfg, tok), tok.pad_token_id
        name = "embedded" if not cfg["model"] else cfg["model"]
    model.config.use_cache = False
    model.train()
    return model, pad, views, name, model.config.vocab_size


def calibrate_scale(cfg: dict, target_entries: float, p: float) -> tuple[float, float]:
    """Logit scale at which the micro model's mean nucleus size (PROD target entries) is ~target."""
    from prod_unlearn.data.batching import collate
    from prod_unlearn.methods.base import completion_logits
    from prod_unlearn.methods.prod import sculpt_target
    model = build_micro({**cfg, "micro_scale": 1.0}, torch.float32).eval()
    batch = collate(micro_data({**cfg, "pool": 2})["forget"], 1)
    with torch.no_grad():
        logits, targets, _ = completion_logits(model, batch)
    del model

    def entries(s: float) -> float:
        return sculpt_target(logits * s, targets, p)[2].float().mean().item()

    lo, hi = 1.0, 2.0
    while entries(hi) > target_entries:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            break
    for _ in range(25):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if entries(mid) > target_entries else (lo, mid)
    return hi, entries(hi)


# ---------------------------------------------------------------- the official-way PROD

def dense_prod_target(frozen_logits: torch.Tensor, targets: torch.Tensor, p: float, alpha: float = 0.0):
    """The |V|-wide p_T the official code rebuilds every step (full-vocabulary sort per position)."""
    h = frozen_logits.float().clone()
    rows = torch.arange(h.size(0), device=h.device)
    h[rows, targets] = float("-inf")                                  # forget-data elimination
    q = torch.softmax(h, dim=-1)
    sorted_q, order = q.sort(dim=-1, descending=True)                 # noise elimination
    before = sorted_q.cumsum(-1) - sorted_q
    keep_sorted = (before < p) & (sorted_q > 0)
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    target = torch.softmax(h.masked_fill(~keep, float("-inf")), dim=-1)  # redistribution
    if alpha:
        target[rows, targets] = -alpha * torch.softmax(frozen_logits.float(), -1)[rows, targets]
    return target


def reference_way_loss(model, frozen, batch, params) -> torch.Tensor:
    from prod_unlearn.methods.base import completion_logits
    with torch.no_grad():
        frozen_logits, targets, _ = completion_logits(frozen, batch["forget"])
        target = dense_prod_target(frozen_logits, targets, params.p, params.alpha)
    logits, _, _ = completion_logits(model, batch["forget"])
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


# ---------------------------------------------------------------- the sparse loss as first written

def sparse_ce_logsumexp(logits: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor, counts: torch.Tensor):
    """``prod.sparse_loss(kind="ce")`` before it moved to log_softmax: log pi = logit - logsumexp.
    logsumexp is amax, sub, exp, sum, log forward and sub, exp, mul backward over [n, V], keeps the
    logits alive for backward, and its gradient is summed with the index_put one: two extra
    |V|-wide buffers at the peak."""
    n = logits.size(0)
    rows = torch.repeat_interleave(torch.arange(n, device=logits.device), counts.to(logits.device).long())
    ids = ids.to(logits.device).long()
    lse = torch.logsumexp(logits, dim=-1)
    log_pi = logits[rows, ids] - lse[rows]
    return -(probs.to(logits.device, logits.dtype) * log_pi).sum() / n


def prod_logsumexp_loss(model, batch, ref, params) -> torch.Tensor:
    from prod_unlearn.methods.base import completion_logits
    assert params.loss == "ce" and params.alpha == 0.0, "benchmarked for the default CE loss only"
    logits, _, _ = completion_logits(model, batch["forget"])
    idx = batch["index"]
    return sparse_ce_logsumexp(logits, ref.gather("forget", "ids", idx), ref.gather("forget", "probs", idx),
                               ref.gather("forget", "counts", idx))


# ---------------------------------------------------------------- one variant, in its own process

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_variant(variant: str, cfg: dict) -> dict:
    os.environ.setdefault("PROD_UNLEARN_NO_PROGRESS", "1")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.set_flush_denormal(cfg["flush_denormal"])
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from prod_unlearn.data.batching import collate
    from prod_unlearn.methods import get_method, make_params
    from prod_unlearn.training.reference import compute_reference

    device = cfg["device"]
    model, pad, views, name, vocab = load(cfg)
    method = get_method(REGISTERED[variant])
    params = make_params(method, cfg["params"].get(REGISTERED[variant], {}))
    needed = ("forget",) if variant in ("sft", "prod-reference-way") else method.views
    unknown = [v for v in needed if v not in views]
    if unknown:
        raise ValueError(f"{variant}: the benchmark does not build view(s) {unknown}")
    used = {v: views[v] for v in needed}
    b = cfg["batch_size"]
    batches = []
    for s in range(0, len(used["forget"]) - b + 1, b):
        idx = list(range(s, s + b))
        batch = {v: {k: t.to(device) for k, t in collate([items[i] for i in idx], pad).items()}
                 for v, items in used.items()}
        batch["index"] = torch.tensor(idx)
        batches.append(batch)
    completion_tokens = sum(len(e.input_ids) - e.prompt_len for e in used["forget"])

    mem = Memory(device)
    mem.set_baseline()
    out = {"variant": variant, "model": name, "vocab": vocab, "pool_examples": len(used["forget"]),
           "pool_completion_tokens": completion_tokens}

    # ---- one-time setup (not part of the step)
    ref, frozen = None, None
    t0 = time.perf_counter()
    if variant == "prod-reference-way":
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
    elif method.reference is not None:
        ref = compute_reference(model, used, method, params, pad, batch_size=cfg["reference_batch_size"])
        model.train()
    _sync(device)
    out["setup_seconds"] = time.perf_counter() - t0
    out["setup_peak_memory_mb"] = mem.peak_growth() / 2**20
    if ref is not None:
        out["cache_bytes"] = ref.nbytes()
        out["cache_bytes_per_token"] = ref.nbytes() / completion_tokens
        if variant.startswith("prod"):
            counts = ref.tensors["forget/counts/values"].float()
            out["target_entries_mean"] = counts.mean().item()
            out["target_entries_median"] = counts.median().item()
            out["target_entries_max"] = int(counts.max().item())
    mem.reset_peak()
    out["resident_after_setup_mb"] = (mem._current() - mem.base) / 2**20  # cache / frozen copy / leftovers

    if variant == "prod-reference-way":
        def loss_fn(batch):
            return reference_way_loss(model, frozen, batch, params)

        # Same loss as ours: compare with the library's sparse path on the first batch.
        first = batches[0]
        with torch.no_grad():
            dense = reference_way_loss(model, frozen, first, params)
            small = compute_reference(frozen, {"forget": [used["forget"][i] for i in first["index"].tolist()]},
                                      method, params, pad, batch_size=cfg["reference_batch_size"])
            sparse = method.loss(model, {**first, "index": torch.arange(b)}, small, params)
        model.train()
        out["check_dense_loss"], out["check_sparse_loss"] = dense.item(), sparse.item()
        if not torch.allclose(dense, sparse, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"official-way dense loss {dense.item():.6f} != sparse PROD loss {sparse.item():.6f}")
        del small
        mem.reset_peak()
    elif variant == "prod-logsumexp":
        def loss_fn(batch):
            return prod_logsumexp_loss(model, batch, ref, params)

        with torch.no_grad():  # must be the library's loss, to float tolerance
            ours, lib = loss_fn(batches[0]), method.loss(model, batches[0], ref, params)
        out["check_library_loss"], out["check_logsumexp_loss"] = lib.item(), ours.item()
        # rtol 1e-4: CPU log_softmax accumulates its sum in fp32 (|error| ~ 1e-5 at |V| = 150k, the
        # precision F.cross_entropy has); logsumexp is ~10x tighter there.
        if not torch.allclose(ours, lib, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"logsumexp sparse loss {ours.item():.6f} != library {lib.item():.6f}")
        mem.reset_peak()
    else:
        def loss_fn(batch):
            return method.loss(model, batch, ref, params)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])

    def step(batch):
        loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    # Memory phase: the warm-up steps (the first one allocates AdamW's state), glibc's default
    # malloc, so the RSS high-water mark follows live memory (|V|-wide buffers are mmapped and
    # handed back on free).
    losses = []
    for i in range(cfg["warmup"]):
        losses.append(step(batches[i % len(batches)]).item())
        _sync(device)
    out["peak_memory_mb"] = mem.peak_growth() / 2**20
    # Timing phase: a caching heap (what PyTorch's CUDA allocator, jemalloc or tcmalloc give), so a
    # step is not charged for page faults on buffers the previous step just handed back. In a VM a
    # fresh page is dear: at |V| = 32k half of glibc-default CPU step time is page faults.
    out["heap_cache"] = cfg["heap_cache"] and not device.startswith("cuda") and heap_cache()
    if out["heap_cache"]:
        losses.append(step(batches[cfg["warmup"] % len(batches)]).item())  # grow the heap once
    times, cpu_times = [], []
    for i in range(cfg["steps"]):
        batch = batches[(cfg["warmup"] + 1 + i) % len(batches)]
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        loss = step(batch)
        _sync(device)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        losses.append(loss.item())
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"{variant}: non-finite loss {losses}")
    out.update(step_seconds=statistics.median(times), step_seconds_all=times,
               step_cpu_seconds=statistics.median(cpu_times), first_loss=losses[0], last_loss=losses[-1],
               threads=torch.get_num_threads())
    if not device.startswith("cuda"):
        # Allocator-exact peak of live tensors (deterministic, unlike RSS): what is resident at the
        # start of a step beyond the baseline (optimiser state, cache, frozen copy) + the peak growth
        # over one more (untimed, profiled) step.
        resident = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                       if torch.is_tensor(t))
        resident += ref.nbytes() if ref is not None else 0
        if frozen is not None:
            resident += sum(t.numel() * t.element_size() for t in list(frozen.parameters()) + list(frozen.buffers()))
        out["tensor_peak_mb"] = (resident + step_tensor_peak(step, batches[0])) / 2**20
    return out


def heap_cache() -> bool:
    """Make glibc keep freed memory for reuse (no mmap per large buffer, no trimming); False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    big = ctypes.c_int(2**31 - 1)
    return bool(libc.mallopt(m_mmap_threshold, big)) and bool(libc.mallopt(m_trim_threshold, big))


def step_tensor_peak(step, batch) -> int:
    """Peak of (bytes allocated - bytes freed) by torch's CPU allocator during one step."""
    import warnings
    from torch.profiler import ProfilerActivity, profile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step(batch)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


# ---------------------------------------------------------------- driver

def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def available(variant: str) -> str | None:
    """None if the variant's method is registered, else why not."""
    try:
        from prod_unlearn.methods import get_method
        get_method(REGISTERED[variant])
        return None
    except Exception as e:  # not written yet, or broken on import
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model folder or hub id (default: the embedded model)")
    ap.add_argument("--micro-vocab", type=int, default=0, help="use an in-process micro Llama with this vocabulary")
    ap.add_argument("--micro-hidden", type=int, default=128)
    ap.add_argument("--micro-layers", type=int, default=2)
    ap.add_argument("--micro-entries", type=float, default=100.0,
                    help="calibrate the micro model's logit scale to this mean PROD nucleus size")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--pool", type=int, default=32, help="forget sequences the steps cycle through (and PROD caches)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps (>= 2), over which peak memory is measured (the 1st allocates AdamW state)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the whole variant sequence this many times (interleaved); report per-variant medians")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--reference-batch-size", type=int, default=4)
    ap.add_argument("--p", type=float, default=0.8, help="PROD nucleus threshold")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-heap-cache", action="store_true",
                    help="time steps with glibc's default malloc (every |V|-wide buffer a fresh mmap: page faults)")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush denormal floats to zero (x86 CPUs then run some kernels ~100x slower, "
                         "depending on how small a loss's gradients are: noise, not method cost)")
    ap.add_argument("--quick", action="store_true", help="few steps, small pool (about a minute or two on CPU)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.pool, args.rounds = 3, 2, min(args.pool, 2 * args.batch_size), 1
    if args.warmup < 2:
        ap.error("--warmup must be >= 2 (peak memory is measured over the warm-up steps)")
    if args.micro_vocab and args.model:
        ap.error("--micro-vocab and --model are exclusive")
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad} (expected some of {', '.join(VARIANTS)})")
    if args.pool < args.batch_size:
        args.pool = args.batch_size
    return args


def main(argv=None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from prod_unlearn.models.loading import resolve_device, resolve_dtype
    args = parse_args(argv)
    console = Console(stderr=True)
    device = resolve_device(args.device)
    cfg = {"model": args.model, "micro_vocab": args.micro_vocab, "micro_hidden": args.micro_hidden,
           "micro_layers": args.micro_layers, "batch_size": args.batch_size, "seq_len": args.seq_len,
           "pool": args.pool, "steps": args.steps, "warmup": args.warmup, "device": device, "dtype": args.dtype,
           "threads": args.threads, "lr": args.lr, "reference_batch_size": args.reference_batch_size,
           "params": {"prod": {"p": args.p}}, "flush_denormal": not args.keep_denormals,
           "heap_cache": not args.no_heap_cache}
    record = {"machine": machine(), "torch": torch.__version__, "device": device,
              "batch_shape": [args.batch_size, args.seq_len], "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "pool": args.pool, "p": args.p, "flush_denormal": not args.keep_denormals,
              "heap_cache": not args.no_heap_cache}
    if args.micro_vocab:
        scale, entries = calibrate_scale(cfg, args.micro_entries, args.p)
        cfg["micro_scale"] = scale
        record["micro_logit_scale"] = round(scale, 4)
        console.print(f"micro model: logit scale {scale:.3f} gives {entries:.1f} nucleus entries/position")

    variants = args.variants.split(",")
    missing = {v: why for v in variants if (why := available(v))}
    runs: dict[str, list[dict]] = {v: [] for v in variants if v not in missing}
    ctx = mp.get_context("spawn")
    for r in range(args.rounds):
        for v in runs:
            console.print(f"[round {r + 1}/{args.rounds}] {v} ...")
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                try:
                    runs[v].append(pool.submit(run_variant, v, cfg).result())
                except Exception as e:
                    if v in ("npo", "dpo"):  # another author's method failing is reported, not fatal
                        missing[v] = f"{type(e).__name__}: {e}"
                        continue
                    raise
    runs = {v: rs for v, rs in runs.items() if rs and v not in missing}
    record["machine"]["loadavg_end"] = machine().get("loadavg")

    results = {}
    for v, rs in runs.items():
        res = dict(rs[0])
        # Contention from other processes only ever adds time: keep the quietest round's median.
        res["step_seconds"] = min(x["step_seconds"] for x in rs)
        res["step_cpu_seconds"] = min(x["step_cpu_seconds"] for x in rs)
        res["peak_memory_mb"] = statistics.median(x["peak_memory_mb"] for x in rs)
        if "tensor_peak_mb" in res:
            res["tensor_peak_mb"] = statistics.median(x["tensor_peak_mb"] for x in rs)
        if len(rs) > 1:
            res["rounds_step_seconds"] = [x["step_seconds"] for x in rs]
            res["rounds_peak_memory_mb"] = [x["peak_memory_mb"] for x in rs]
            res["rounds_step_cpu_seconds"] = [x["step_cpu_seconds"] for x in rs]
            if "tensor_peak_mb" in res:
                res["rounds_tensor_peak_mb"] = [x["tensor_peak_mb"] for x in rs]
        results[v] = res
    floor = results.get("sft")
    for v, res in results.items():
        res["time_ratio"] = res["step_seconds"] / floor["step_seconds"] if floor else None
        res["memory_ratio"] = res["peak_memory_mb"] / floor["peak_memory_mb"] if floor else None
        res["cpu_time_ratio"] = res["step_cpu_seconds"] / floor["step_cpu_seconds"] if floor else None
        if "tensor_peak_mb" in res and floor:
            res["tensor_memory_ratio"] = res["tensor_peak_mb"] / floor["tensor_peak_mb"]

    any_res = next(iter(results.values()))
    record.update(model=any_res["model"], vocab=any_res["vocab"], threads=any_res["threads"],
                  dtype=str(resolve_dtype(args.dtype, device)).replace("torch.", ""))
    record["dense_bytes_per_token"] = 4 * any_res["vocab"]
    if "prod" in results:
        pr = results["prod"]
        record.update(cache_build_seconds=pr["setup_seconds"], cache_build_peak_memory_mb=pr["setup_peak_memory_mb"],
                      cache_bytes_per_token=pr["cache_bytes_per_token"],
                      cache_examples=pr["pool_examples"], cache_completion_tokens=pr["pool_completion_tokens"],
                      target_entries_mean=pr["target_entries_mean"], target_entries_median=pr["target_entries_median"],
                      target_entries_max=pr["target_entries_max"])
    if "prod-reference-way" in results:
        rw = results["prod-reference-way"]
        record["loss_check"] = {"dense": rw["check_dense_loss"], "sparse": rw["check_sparse_loss"]}
    if "prod-logsumexp" in results:
        pl = results["prod-logsumexp"]
        record["logsumexp_loss_check"] = {"library": pl["check_library_loss"], "logsumexp": pl["check_logsumexp_loss"]}
    keys = ("step_seconds", "peak_memory_mb", "time_ratio", "memory_ratio", "step_cpu_seconds", "cpu_time_ratio",
            "tensor_peak_mb", "tensor_memory_ratio",
            "setup_seconds", "setup_peak_memory_mb", "resident_after_setup_mb",
            "cache_bytes_per_token", "first_loss", "last_loss", "step_seconds_all", "rounds_step_seconds",
            "rounds_peak_memory_mb", "rounds_step_cpu_seconds", "rounds_tensor_peak_mb")
    record["variants"] = {v: {k: res[k] for k in keys if k in res} for v, res in results.items()}
    record["missing"] = missing

    if args.json:
        print(json.dumps(record, indent=2))
    else:
        out = Console(width=max(Console().width, 150))
        t = Table(title=f"step cost - {record['model']}, |V|={record['vocab']}, "
                        f"batch {args.batch_size}x{args.seq_len}, {device}, {record['dtype']}, "
                        f"{record['threads']} threads")
        tensor = any("tensor_peak_mb" in r for r in results.values())
        cols = ["variant", "step (s)", "x sft", "CPU (s)", "x sft", "peak RSS (MB)", "x sft"]
        cols += ["tensor peak (MB)", "x sft"] if tensor else []
        for col in cols + ["setup (s)"]:
            t.add_column(col, justify="left" if col == "variant" else "right")

        def ratio(x):
            return f"{x:.2f}" if x else "-"
        for v, res in results.items():
            row = [v, f"{res['step_seconds']:.3f}", ratio(res["time_ratio"]), f"{res['step_cpu_seconds']:.3f}",
                   ratio(res["cpu_time_ratio"]), f"{res['peak_memory_mb']:.0f}", ratio(res["memory_ratio"])]
            if tensor:
                row += [f"{res['tensor_peak_mb']:.0f}", ratio(res.get("tensor_memory_ratio"))]
            t.add_row(*row, f"{res['setup_seconds']:.2f}" if res.get("setup_seconds", 0) > 0.005 else "-")
        for v, why in missing.items():
            t.add_row(v, "missing", *[""] * (len(cols) - 2), why[:60])
        out.print(t)
        if "prod" in results:
            out.print(f"PROD cache: built once in {record['cache_build_seconds']:.2f} s for "
                      f"{record['cache_examples']} examples / {record['cache_completion_tokens']} tokens; "
                      f"{record['cache_bytes_per_token']:.0f} bytes/token vs dense fp32 "
                      f"{record['dense_bytes_per_token']} bytes/token "
                      f"({record['dense_bytes_per_token'] / record['cache_bytes_per_token']:.0f}x smaller); "
                      f"nucleus entries/position mean {record['target_entries_mean']:.1f}, "
                      f"median {record['target_entries_median']:.0f}, max {record['target_entries_max']}")
        if "loss_check" in record:
            out.print(f"first-step loss: official-way dense {record['loss_check']['dense']:.6f} = "
                      f"sparse {record['loss_check']['sparse']:.6f}")
        if "logsumexp_loss_check" in record:
            out.print(f"first-step loss: library sparse {record['logsumexp_loss_check']['library']:.6f} = "
                      f"logsumexp sparse {record['logsumexp_loss_check']['logsumexp']:.6f}")
        out.print(f"machine: {record['machine']['cpu']} ({record['machine']['cpu_count']} cores), "
                  f"torch {torch.__version__}, load {record['machine'].get('loadavg')} -> "
                  f"{record['machine'].get('loadavg_end')}")
    return record


if __name__ == "__main__":
    main()
