"""Greedy generation at the speed of the machine (the paper decodes greedily everywhere).

One algorithm in five modules: this one (stop rules, the decoding loop), batch_plan.py (the
batching cost model), kv_cache.py (the pre-allocated cache), drafts.py (exact speculative
decoding from a hint), threads.py (the thread count).

``greedy_continue`` is its own decoding loop around ``model(...)`` (any ``AutoModelForCausalLM``),
not ``model.generate``. Measured on the embedded 13.8 M model (``benchmarks/eval_throughput.py``,
figures in ``benchmarks/README.md``), the time of ``generate`` went to:

- **cache growth**: the default ``DynamicCache`` concatenates every layer's keys and values at
  every step, i.e. copies the whole cache per token; at batch 32-64 and a few hundred cached
  tokens that copy costs more than the step's matmuls, so throughput *fell* past batch 16.
  Here every attention layer writes into one buffer allocated for the batch's whole length and
  attends over a view of the filled part (``_BufferLayer``): no copy, no attention over unused
  columns.
- **budget waste**: a batch ran until its longest budget (and past EOS) for every row. Here each
  row stops on its own budget, at EOS, or at a stop string; finished rows leave the batch (the
  cache is compacted by ``index_select`` once a few have finished), and columns that became
  padding for every remaining row are dropped at the same time.
- **padding**: every decode step reads the batch's whole cache, padding included (on a small
  model that read, not the matmuls, bounds a step); prompts are sorted by length and cut into
  batches by a cost model (``batch_plan.decode_batches``: fixed cost per step vs cache read per
  row, from the model's size); the prefill of a batch is split further into sub-batches under
  ``PREFILL_PAD`` of padding, each written into its rows of the shared buffer.
- **per-step overhead**: one forward call per step with prepared position ids and mask views
  (``generate`` also runs logits processors, stopping criteria and input preparation per step),
  so large batches, which amortise it, pay.
- **one token per step** where the answer is known: an evaluation passes each prompt's
  reference as a *hint*, and a step verifies a draft taken from it (exact speculative decoding
  without a second model, ``Drafter`` and ``plan_step``): a model that reproduces a memorised
  file decodes 256 tokens in ~6 steps; one that forgot it decodes as before.

Rows are left-padded and get explicit ``position_ids`` (their own positions, whatever their
padding), so a row's tokens do not depend on the batch it is in, up to floating-point near-ties
(measured agreement with one-sequence-at-a-time decoding in ``benchmarks/README.md``; tested in
``tests/test_generation.py``). Models whose cache is not plain full attention (sliding windows,
linear attention/SSM layers) or that do not take a ``Cache`` object get the same loop with the
model's own ``DynamicCache`` (compaction through ``Cache.batch_select_indices``); a model that
ignores the cache entirely falls back to ``model.generate``; ``threads.default_threads`` (per
batch) chooses the intra-op thread count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prod_unlearn.data.tokenize import pad_id
from prod_unlearn.evaluation.batch_plan import PREFILL_TOKENS, decode_batches, prefill_groups, step_costs
from prod_unlearn.evaluation.drafts import DRAFT_LENGTHS, HOLE_SHARE, LOGITS_BYTES, Drafter, plan_step
from prod_unlearn.evaluation.kv_cache import DynamicCache, Window, buffer_cache, forward_kwargs
from prod_unlearn.evaluation.threads import default_threads, keeps_threads
from prod_unlearn.progress import progress

DEFAULT_BATCH = 64  # at most this many rows decoded together (measured: benchmarks/README.md)
CACHE_BYTES = 2 * 2**30  # a batch's preallocated cache stays under this (rows x columns x bytes)
COMPACT_FRACTION = 0.125  # finished rows leave the batch once they are this share of it


def model_context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 4096)


class _Stops:
    """Per-row stop strings: true once the generated text contains one (checked on a tail of
    tokens long enough to hold the longest stop string with a token to spare on each side)."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.tail = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 2

    def hit(self, generated: list[int]) -> bool:
        if not self.stops:
            return False
        text = self.tokenizer.decode(generated[-self.tail :], skip_special_tokens=False)
        return any(s in text for s in self.stops)


# ---------------------------------------------------------------- decoding


@keeps_threads
@torch.no_grad()
def greedy_continue(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: list[int],
    batch_size: int | None = None,
    desc: str = "generating",
    stop_at_eos: bool = True,
    stop_sequences: Sequence[str] | None = None,
    prefill_tokens: int = PREFILL_TOKENS,
    hints: Sequence[Sequence[int] | None] | None = None,
) -> list[list[int]]:
    """Greedy continuation of token-id prompts; returns each prompt's new token ids.

    Row ``i`` stops after ``max_new_tokens[i]`` tokens, at EOS (``stop_at_eos``; EOS is not
    returned) or once its generated text contains one of ``stop_sequences`` (the tokens up to
    and including the one that completed it are returned; cut the text yourself, as with
    ``generate(stop_strings=...)``). A prompt longer than the context minus its budget keeps its
    last tokens. At most ``batch_size`` rows (default ``DEFAULT_BATCH``) are decoded together, in order
    of prompt length. The model's train/eval mode is restored on return.

    ``hints[i]``: token ids the caller expects row i's continuation may repeat (e.g. the true
    remainder of a file whose memorisation is measured). They turn on exact speculative decoding
    without a second model: a step may feed a row a draft taken from its hint (``Drafter``) and
    keeps the drafted tokens the model itself chooses greedily, so the output is that of one
    token per step (up to floating-point near-ties): a hint changes the time, never the tokens.

    ``torch.no_grad`` rather than ``inference_mode``: a model that creates or updates a buffer
    during the forward (dynamic RoPE) would otherwise keep an inference tensor that breaks the
    next training step, and the difference in speed is not measurable here.
    """
    if len(prompts) != len(max_new_tokens):
        raise ValueError(f"{len(prompts)} prompts but {len(max_new_tokens)} budgets")
    if hints is not None and len(hints) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(hints)} hints")
    batch_size = max(1, int(batch_size or DEFAULT_BATCH))
    default_threads()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = model_context(model)
    eos = tokenizer.eos_token_id if stop_at_eos else None
    stops = _Stops(tokenizer, stop_sequences or ())
    out: list[list[int]] = [[] for _ in prompts]
    todo = [i for i in range(len(prompts)) if max_new_tokens[i] > 0]
    trimmed = {}
    for i in todo:
        if not prompts[i]:
            raise ValueError(f"prompt {i} is empty (encode prompts with data.tokenize: BOS + text)")
        trimmed[i] = list(prompts[i][-max(1, ctx - max_new_tokens[i]) :])
    order = sorted(todo, key=lambda i: len(trimmed[i]))
    kw = forward_kwargs(model)
    try:
        with progress() as bar:
            task = bar.add_task(desc, total=len(prompts))
            bar.advance(task, len(prompts) - len(todo))
            fixed, per_token = step_costs(model)
            for rows in decode_batches(
                order,
                [len(trimmed[i]) for i in order],
                [max_new_tokens[i] for i in order],
                batch_size,
                fixed,
                max(1, CACHE_BYTES // per_token),
            ):
                default_threads()  # re-decided at most once a minute
                row_hints = [hints[i] if hints else None for i in rows]
                prompts, budgets = [trimmed[i] for i in rows], [max_new_tokens[i] for i in rows]
                # On a GPU our loop's per-step host work costs more than `generate`'s when there is
                # nothing to draft (embedded model on an H200: 0.43-0.79x of `generate`, README "GPU")
                done = (
                    None
                    if device.type == "cuda" and not any(row_hints)
                    else _decode_batch(
                        model,
                        prompts,
                        budgets,
                        eos,
                        stops,
                        device,
                        kw,
                        prefill_tokens,
                        pad_id(tokenizer),
                        on_finish=lambda n: bar.advance(task, n),
                        hints=row_hints,
                    )
                )
                if done is None:  # a GPU without hints, or a model that ignored the cache: let generate do it
                    done = _generate_batch(model, tokenizer, prompts, budgets, eos, stops, device)
                    bar.advance(task, len(rows))
                for i, toks in zip(rows, done):
                    out[i] = toks
    finally:
        model.train(was_training)
    return out


def _finished(toks: list[int], budget: int, eos, stops: _Stops) -> bool:
    return len(toks) >= budget or (eos is not None and toks and toks[-1] == eos) or stops.hit(toks)


def _decode_batch(
    model,
    prompts: list[list[int]],
    budgets: list[int],
    eos,
    stops: _Stops,
    device,
    kw: dict,
    prefill_tokens: int,
    pad: int,
    on_finish,
    hints: list,
) -> list[list[int]] | None:
    """One length-sorted batch: prefill, then steps until every row has finished; a step verifies
    each row's draft (``Drafter``, width chosen by ``plan_step``) and keeps the drafted tokens up
    to the first one the model would not have chosen, plus the model's own next token."""
    b = len(prompts)
    lens = [len(p) for p in prompts]
    width = max(lens)
    capacity = width + max(budgets)
    window = Window(b, capacity)
    cache = buffer_cache(model, window)
    generic = cache is None
    if generic:
        try:
            cache = DynamicCache(config=model.config)
        except Exception:  # older transformers, or a config the cache cannot read
            cache = None
    mask = torch.zeros((b, capacity), dtype=torch.long)
    for r, n in enumerate(lens):
        mask[r, width - n : width] = 1
    mask = mask.to(device)
    ids = torch.full((b, width), pad, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)

    def forward(input_ids, attn, pos, **extra):
        args = {"input_ids": input_ids, "attention_mask": attn, "use_cache": True, kw["cache_arg"]: cache, **extra}
        if kw["position_ids"]:
            args["position_ids"] = pos
        return model(**args)

    extra = {"logits_to_keep": 1} if kw["logits_to_keep"] else {}
    # ---- prefill: sub-batches of similar length (buffer cache), else the whole batch at once
    first = torch.empty(b, dtype=torch.long, device=device)
    if generic:
        logits = forward(ids, mask[:, :width], positions, **extra).logits
        first[:] = logits[:, -1].argmax(-1)
    else:
        for s, e in prefill_groups(lens, prefill_tokens):
            w = max(lens[s:e])
            window.rows, window.start, window.write = slice(s, e), width - w, width - w
            logits = forward(
                ids[s:e, width - w :], mask[s:e, width - w : width], positions[s:e, width - w :], **extra
            ).logits
            first[s:e] = logits[:, -1].argmax(-1)
        window.rows, window.start, window.write = slice(None), 0, width
        if not all(layer.is_initialized for layer in cache.layers):
            return None
    if generic and (cache is None or cache.get_seq_length() != width):
        return None
    # ---- decode: each step feeds every row its last token plus (buffer cache) a draft to verify
    vocab = logits.shape[-1]
    gen: list[list[int]] = [[] for _ in range(b)]
    alive = list(range(b))  # batch row -> original row
    finished = [False] * b
    drafters = None if generic or not any(hints) else [Drafter(p, h) for p, h in zip(prompts, hints)]
    filled = list(lens)  # columns holding a row's tokens (not padding, not rejected drafts)
    next_pos = list(lens)  # position of each batch row's next input token
    new = [[t] for t in first.tolist()]  # tokens each batch row produced in the last call
    col = width  # next column to write
    while True:
        n_done = 0
        for r, o in enumerate(alive):
            if finished[o]:
                n_done += 1
                continue
            took = []
            for t in new[r]:
                gen[o].append(t)
                took.append(t)
                if _finished(gen[o], budgets[o], eos, stops):
                    finished[o] = True
                    n_done += 1
                    on_finish(1)
                    break
            if drafters:
                drafters[o].extend(took)
        if n_done == len(alive):
            break
        left = max(budgets[o] - len(gen[o]) for o in alive if not finished[o])
        widest = 1 + (min(DRAFT_LENGTHS[-1], left - 1) if drafters else 0)
        holes = drafters and col - max(filled[o] for o in alive if not finished[o]) > HOLE_SHARE * col
        if (
            (n_done and n_done >= max(1, COMPACT_FRACTION * len(alive)))
            or holes
            or (not generic and col + widest > window.capacity)
        ):
            keep = [r for r, o in enumerate(alive) if not finished[o]]
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            if generic:
                cache.batch_select_indices(idx)
                mask = mask.index_select(0, idx)
            else:  # every row's filled columns, right-aligned: padding and rejected drafts leave the cache
                full = mask.index_select(0, idx)[:, :col].bool()
                col = int(full.sum(1).max())
                columns = torch.argsort(full.to(torch.int8), dim=1, stable=True)[:, full.shape[1] - col :]
                capacity = col + left + 1
                for layer in cache.layers:
                    layer.realign(idx, columns, capacity)
                mask = torch.zeros((len(keep), capacity), dtype=torch.long, device=device)
                mask[:, :col] = full.gather(1, columns)
                window.batch, window.capacity = len(keep), capacity
            alive, new, next_pos = [alive[r] for r in keep], [new[r] for r in keep], [next_pos[r] for r in keep]
        rows = len(alive)
        if drafters:
            drafts = [None if finished[o] else drafters[o].propose(widest - 1) for o in alive]
            cap = min(widest, max(1, LOGITS_BYTES // (rows * vocab * 4)))
            width_now = plan_step(drafts, [drafters[o].rate() for o in alive], cap)
        else:
            drafts, width_now = [None] * rows, 1
        inputs = [[new[r][-1]] + (d or [])[: width_now - 1] for r, d in enumerate(drafts)]
        slots = torch.tensor([[1] * len(x) + [0] * (width_now - len(x)) for x in inputs], dtype=torch.long)
        ids = torch.tensor([x + [pad] * (width_now - len(x)) for x in inputs], dtype=torch.long, device=device)
        pos = (torch.tensor(next_pos, dtype=torch.long)[:, None] + torch.arange(width_now)).to(device)
        mask[:, col : col + width_now] = slots.to(device)
        if not generic:
            window.write = col
        pred = forward(ids, mask[:, : col + width_now], pos).logits.argmax(-1).tolist()
        for r, o in enumerate(alive):
            d, m = inputs[r][1:], 0
            while m < len(d) and d[m] == pred[r][m]:
                m += 1
            if drafters:
                drafters[o].record(len(d), m)
            new[r] = d[:m] + [pred[r][m]]
            next_pos[r] += m + 1
            filled[o] += m + 1
            if m < len(d):
                slots[r, m + 1 :] = 0
        if width_now > 1:  # rejected drafts become holes, hidden by the mask
            mask[:, col : col + width_now] = slots.to(device)
        col += width_now
    for o in range(b):
        if eos is not None and gen[o] and gen[o][-1] == eos:
            gen[o].pop()
    return gen


def _generate_batch(model, tokenizer, prompts, budgets, eos, stops: _Stops, device) -> list[list[int]]:
    """``model.generate`` for a model that manages its own state (left padding, per-batch budget)."""
    width = max(len(p) for p in prompts)
    pad = pad_id(tokenizer)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    gen = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=False,
        max_new_tokens=max(budgets),
        pad_token_id=pad,
        eos_token_id=eos,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    outs = []
    for r, budget in enumerate(budgets):
        new = gen[r, width:].tolist()[:budget]
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        for k in range(1, len(new) + 1):
            if stops.hit(new[:k]):
                new = new[:k]
                break
        outs.append(new)
    return outs
