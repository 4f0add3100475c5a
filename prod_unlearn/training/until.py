"""Unlearn until forgotten: the stopping rule `unlearn` trains under by default.

A fixed epoch count cannot serve forget sets of different sizes (one epoch is 50 optimiser steps
on the 50-file copyright set and one step on a single file), so `unlearn` trains toward a target
instead: every ``check_every`` optimiser steps it scores extraction on the forget set (line-cut
BLEU, the worst of the 25 / 50 / 75 % cuts of `eval`; a set of more than ``screen_above`` items
is screened at the 50 % cut, as `unlearn` reports it, and the other cuts are scored once that
meets the target) and held-out bits per byte (on the held-out tokens `unlearn` reports,
``guard_tokens``, scored on the original model first: a check costs a few optimiser steps), and
stops when

- ``target``: extraction is at or below ``until_bleu`` at every cut (and, with ``until_auc``, the
  Min-K%++ membership AUC of the forget files against the held-out files is at most ``until_auc``:
  a model that no longer completes a file can still tell it from unseen code, README "When a file
  must really be gone");
- ``guard``: held-out bits per byte rose by more than ``max_utility_loss`` over the original
  model;
- ``stalled``: extraction has not fallen by ``min_progress`` over the last ``patience`` checks
  (a method whose gradient vanished, e.g. NPO once its sigmoid saturates, would spend the budget);

The last two are first answered by changing the training, not by stopping: a stall doubles the
learning rate, or applies the method's own answer where it declares one (``Method.on_stall``: NPO
divides beta by 10, since its stall is a saturated sigmoid, not a small step), and, when the run
has a retain term, halves its weight (``raises`` times at most: a learning rate tuned on one
forget set is too small for another, and a retain term can hold a method in place well inside
the guard); a guard trip goes back to the last check whose rise was at most ``headroom`` of the
guard, halves the learning rate, when the run has a retain term doubles its weight, and from then
on trains only the items not yet forgotten (``resting``: those at most ``rest_below`` x the target
at every cut scored at the latest check within the guard are left out; one that comes back trains
again), at most
``backtracks`` times. Why: the forgetting that remains is taken in smaller steps, held closer
to the original on general code (a smaller rate alone follows the same utility-for-forgetting
path); it needs room (from the last check within the guard, often at 3/4 of it, the gentler path
has none); and an ascent on a file that is already gone only spends the guard. Only when these
are spent does the run stop. After every check the loop applies ``lr_scale`` (relative to
``--lr``) and ``retain_scale`` (relative to ``--retain-weight``), trains with ``params`` (the
method's, after its answers), gives the ``resting`` items no forget loss and clears the
optimiser's moments when ``restored`` is set.
- ``budget``: ``max_steps`` optimiser steps are spent (TrainConfig; the model folder's
  unlearn_defaults.json may set it).

A run that ends above the target saves its most-forgotten check within the guard (the lowest
screened BLEU; its weights are restored when it is not the last check): within the user's
tolerance, less extraction is what was asked for (GA on 50 files with ``--retain-weight 4`` was at
BLEU 0.121 at +9.4 % before its budget ran out at 0.174).

The loop calls the rule through its ``step_evaluate`` hook (``training/loop.py``), which writes a
resumable state after every check.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prod_unlearn.progress import console
from prod_unlearn.tasks.ppl import PPL_TOKENS

EXIT_NOT_FORGOTTEN = 3  # `unlearn`'s exit status when the run ended above the target (model still saved)
RETAIN_FILES = 64  # general code the rule's retain term keeps the model close to the original on


def default_retain():
    """The retain set of a run under the rule when the user gives none: ``RETAIN_FILES`` files of this
    Python's standard library (its training split, disjoint from the held-out files the guard
    reads), trained with the KL term to the original model (``--retain-weight 0`` turns it off).
    Ascent on a few files otherwise spends the utility guard before extraction reaches the target
    (GA on 5 files: BLEU 0.26 at the guard without it, the target at +7.6 % with it)."""
    from prod_unlearn.training.memorise import default_replay

    return default_replay(RETAIN_FILES)


@dataclass
class StopRule:
    until_bleu: float = 0.10  # stop once line-cut BLEU on the forget set is at most this, at every cut
    until_auc: float | None = None  # and Min-K%++ AUC of forget vs held-out files at most this (None: not scored)
    max_utility_loss: float = 0.10  # past this relative rise of held-out bits per byte: back to the last good check
    check_every: int = 0  # optimiser steps between checks; 0: from the forget set's size (auto_check_every)
    # held-out tokens the guard scores at each check: the ones `unlearn` reports (the first 15 k passed GA on
    # 50 files at +9.3 % where the reported 60 k read +13.8 %: a method's damage is not spread evenly)
    guard_tokens: int = PPL_TOKENS
    patience: int = 6  # checks without extraction falling by min_progress before the run is stalled
    screen_above: int = 16  # larger forget sets are screened at the 50 % cut (one prompt per item)
    min_progress: float = 0.005  # BLEU
    raises: int = 2  # stalls answered (lr x2 or the method's answer, retain weight x0.5) before the run stops
    backtracks: int = 2  # guard trips answered (back, lr x0.5, retain weight x2) before the run stops
    headroom: float = 0.5  # a trip goes back to the last check whose rise was at most this share of the guard
    rest_below: float = 0.5  # after a trip, items at most this share of until_bleu rest (no forget loss)


def auto_check_every(steps_per_epoch: int) -> int:
    """About five checks per pass over the forget set, never more often than every 5 steps (a check
    costs about as much as 5-10 steps on the embedded model) nor less than every 25."""
    return max(5, min(25, math.ceil(steps_per_epoch / 5)))


def check_steps(every: int, max_steps: int) -> list[int]:
    return sorted(set(range(every, max_steps + 1, every)) | {max_steps})


def plan(cfg, n_items: int, **given) -> StopRule:
    """The rule for a run on ``n_items`` (options left out are None: the defaults); sets ``cfg`` to
    train until forgotten with a check at each of the rule's steps."""
    rule = StopRule(**{k: v for k, v in given.items() if v is not None})
    rule.check_every = rule.check_every or auto_check_every(-(-n_items // (cfg.batch_size * cfg.grad_accum)))
    cfg.until_forgotten = True
    cfg.eval_steps = check_steps(rule.check_every, cfg.max_steps)
    return rule


class UntilForgotten:
    """``step_evaluate`` for the loop: scores, decides, keeps the last weights within the guard."""

    def __init__(
        self,
        rule: StopRule,
        model,
        tokenizer,
        forget,
        max_steps: int,
        heldout: str | Path | None = None,
        retain: bool = False,
        membership=None,
        params=None,
        on_stall=None,
    ):
        self.rule, self.tok, self.forget, self.max_steps, self.heldout = rule, tokenizer, forget, max_steps, heldout
        self.retain = retain  # the run has a retain term (a guard trip doubles its weight, a stall halves it)
        # model -> membership AUC of the forget set (attacks.mia.heldout_auc; the caller builds it: this
        # layer does not import the attacks); needed with ``until_auc``
        self.membership = membership
        # the method's params as given, its own answer to a stall (Method.on_stall) and how many stalls it
        # answered (``params`` derives the ones the loop trains with); a stall it answers keeps the learning rate
        self._params0, self.on_stall, self.answers = params, on_stall, 0
        if rule.until_auc is not None and membership is None:
            raise ValueError("until_auc: the rule needs a membership scorer (attacks.mia.heldout_auc)")
        self.base_bpb = self._bpb(model)  # the original model on the guard's tokens
        self.curve: list[dict] = []
        # name -> CPU copy of the trainable weights at the most-forgotten check within the guard (the original
        # at first), saved when the run ends above the target, and at the last check within ``headroom`` of
        # the guard, where an answered guard trip goes back to (one copy where they are the same check)
        self.kept = self.camp = self._copy(model)
        self.kept_step = self.camp_step = 0  # (step 0: the original weights; its figures are not in the curve)
        self.camp_items: dict = {}  # item id -> BLEU at the camp's check
        self.resting: list[int] = []  # forget items (positions) the loop no longer trains on (``_rest``)
        self.reason: str | None = None
        self.lr_scale = 1.0  # the learning rate now, relative to --lr
        self.retain_scale = 1.0  # the retain term's weight now, relative to --retain-weight
        self.restored = False  # this check put back the last good weights (the loop resets the optimiser)
        self.raised = self.backed = 0
        self.since = 0  # the first check at the current learning rate (stalls are judged from it)
        console.print(
            f"training until forgotten: BLEU <= {rule.until_bleu:g} at every cut"
            + (f", membership AUC <= {rule.until_auc:g}" if rule.until_auc is not None else "")
            + f", held-out bits per byte within +{100 * rule.max_utility_loss:g} %, at most {max_steps} steps, "
            f"a check every {rule.check_every}"
        )

    def _kept_point(self) -> dict | None:
        """The curve's point of the kept check (None: the original weights)."""
        return next((p for p in self.curve if p["step"] == self.kept_step), None)

    @staticmethod
    def _copy(model) -> dict:
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def _restore(self, model, weights: dict) -> None:
        params = dict(model.named_parameters())
        for n, w in weights.items():
            params[n].data.copy_(w)
        self.restored = True

    def _bpb(self, model) -> float:
        from prod_unlearn.tasks.ppl import heldout_ppl

        return heldout_ppl(model, self.tok, self.heldout, ppl_tokens=self.rule.guard_tokens)["heldout_bpb"]

    def _extraction(self, model, cuts) -> tuple[float, dict, dict]:
        """(the worst cut's mean BLEU, {bleu_cutNN: mean}, {item id: its worst cut's BLEU})"""
        from prod_unlearn.tasks.copyright import continuation_bleu

        fig = continuation_bleu(model, self.tok, self.forget, cuts=cuts, batch_size=None)
        per_cut = {k: round(v, 4) for k, v in fig.items() if k.startswith("bleu_cut")}
        worst: dict[str, float] = {}
        for r in fig["rows"]:
            worst[r["id"]] = max(worst.get(r["id"], 0.0), r["bleu"])
        return max(per_cut.values()), per_cut, worst

    def _rest(self, per_item: dict) -> list[int]:
        """The forget items (positions) at most ``rest_below`` x the target at every cut scored (a set
        screened at one cut: at that cut): after a guard trip the run no longer trains on them (ascent
        on a file that is already gone only spends the guard)."""
        gone = {k for k, v in per_item.items() if v <= self.rule.rest_below * self.rule.until_bleu}
        return [i for i, e in enumerate(self.forget) if e.id in gone]

    def __call__(self, model, step: int) -> str | None:
        from prod_unlearn.tasks.copyright import CUTS, POINT_CUTS

        t0 = time.time()
        screened = len(self.forget) > self.rule.screen_above
        bleu, per_cut, per_item = self._extraction(model, POINT_CUTS if screened else CUTS)
        bpb = self._bpb(model)
        rise = bpb / self.base_bpb - 1
        point: dict[str, Any] = {
            "step": step,
            "bleu": bleu,
            "screen": bleu,
            "bleu_cuts": per_cut,
            "guard_bpb": bpb,
            "bpb_rise": round(rise, 4),
        }
        if self.rule.until_auc is not None:  # progress is the distance to the farther of the two targets
            point["auc"] = round(self.membership(model), 4)
            point["screen"] = max(bleu - self.rule.until_bleu, point["auc"] - self.rule.until_auc)
        reason, self.restored, changed = None, False, None
        action: tuple[float, float] | None = None
        if rise > self.rule.max_utility_loss:
            reason = "guard"
            answered = self.backed < self.rule.backtracks and step < self.max_steps
            # answered: back to the check with headroom; stopping: to the most-forgotten check within the guard
            self._restore(model, self.camp if answered else self.kept)
            if answered:
                self.backed += 1
                self.resting = self._rest(self.camp_items)
                reason, action = None, (0.5, 2.0)
                n = len(self.forget)
                changed = f"back to step {self.camp_step}, training {n - len(self.resting)} of {n} items"
        else:
            now = None  # this check's weights, copied once if a restore point needs them
            if rise <= self.rule.headroom * self.rule.max_utility_loss:
                now = self._copy(model)
                self.camp, self.camp_step, self.camp_items = now, step, per_item
            if self.backed:  # after a trip: a file forgotten rests, one that came back trains again
                self.resting = self._rest(per_item)
            if screened and bleu <= self.rule.until_bleu:  # the other cuts must agree before the run stops
                bleu, per_cut, _ = self._extraction(model, CUTS)
                point.update(bleu=bleu, bleu_cuts=per_cut)
            kept = self._kept_point()
            if kept is None or point["screen"] < kept["screen"]:  # the most-forgotten check within the guard so far
                self.kept = now if now is not None else self._copy(model)
                self.kept_step = step
            if bleu <= self.rule.until_bleu and point.get("auc", 0.0) <= (self.rule.until_auc or 0.0):
                reason = "target"
            if reason is None and step >= self.max_steps:
                reason = "budget"
            # the same figure at every check: no new best by min_progress within the last `patience` checks
            # (judged at the current learning rate only)
            cut = len(self.curve) + 1 - self.rule.patience
            if reason is None and cut > self.since:
                earlier = min(p["screen"] for p in self.curve[self.since : cut])
                window = min([p["screen"] for p in self.curve[cut:]] + [point["screen"]])
                if earlier - window < self.rule.min_progress:
                    reason = "stalled"
                    if self.raised < self.rule.raises:
                        self.raised += 1
                        changed = self._answer() if self.on_stall and self._params0 is not None else None
                        reason, action = None, (1.0 if changed else 2.0, 0.5)
            if reason in ("budget", "stalled") and self.kept_step != step:  # save the most-forgotten check
                self._restore(model, self.kept)
        label = None
        if action:  # (learning-rate factor, retain-weight factor); the latter only where there is a retain term
            lr_f, retain_f = action[0], action[1] if self.retain else 1.0
            self.lr_scale *= lr_f
            self.retain_scale *= retain_f
            parts = ([changed] if changed else []) + ([f"lr x{lr_f:g}"] if lr_f != 1 else [])
            label = ", ".join(parts + ([f"retain x{retain_f:g}"] if retain_f != 1 else []))
            self.since = len(self.curve) + 1
        point.update(
            seconds=round(time.time() - t0, 1),
            stop=reason,
            lr_scale=self.lr_scale,
            retain_scale=self.retain_scale,
            action=label,
            resting=len(self.resting),
        )
        self.curve.append(point)
        console.print(
            f"check at step {step}: BLEU {bleu:.3f} (worst cut of {', '.join(per_cut)}; target "
            f"{self.rule.until_bleu:g})"
            + (f", membership AUC {point['auc']:.3f} (target {self.rule.until_auc:g})" if "auc" in point else "")
            + ", held-out "
            f"bits per byte {bpb:.4f} ({100 * rise:+.1f} %, guard "
            f"+{100 * self.rule.max_utility_loss:g} %)"
            + (f" -> stop: {reason}" if reason else "")
            + (
                f" -> {changed + ', ' if changed else ''}lr now {self.lr_scale:g}x --lr"
                + (f", retain weight {self.retain_scale:g}x" if self.retain_scale != 1 else "")
                if label
                else ""
            )
        )
        self.reason = reason
        return reason

    @property
    def params(self):
        """The method's params after the stall answers so far (None: the caller gave none)."""
        params = self._params0
        for _ in range(self.answers if params is not None else 0):
            params = self.on_stall(params)
        return params

    def _answer(self) -> str:
        """Apply the method's stall answer; say what changed (e.g. 'beta 0.01')."""
        before = vars(self.params)
        self.answers += 1
        return ", ".join(
            f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in vars(self.params).items() if before[k] != v
        )

    _RESUMED = ("curve", "reason", "resting", "lr_scale", "retain_scale", "raised", "backed", "since", "answers")

    def state_dict(self) -> dict:
        """What a resumed run needs to go on deciding as the interrupted one would (the kept weights
        are not carried: until the next check within the guard, a guard trip goes back to the original, and
        the run's most-forgotten check is sought among the checks after the resume)."""
        return {k: getattr(self, k) for k in self._RESUMED}

    def load_state_dict(self, state: dict) -> None:
        for k in self._RESUMED:
            if k in state:  # (a state saved before retain_scale existed resumes at 1)
                setattr(self, k, state[k])

    def record(self) -> dict:
        return {
            "rule": {
                "until_bleu": self.rule.until_bleu,
                "until_auc": self.rule.until_auc,
                "max_utility_loss": self.rule.max_utility_loss,
                "max_steps": self.max_steps,
                "check_every": self.rule.check_every,
                "guard_tokens": self.rule.guard_tokens,
                "guard_bpb_before": self.base_bpb,
            },
            "stopped_by": self.reason,
            "kept_step": self.curve[-1]["step"] if self.reason == "target" else self.kept_step,  # the saved model's
            "lr_scale": self.lr_scale,
            "retain_scale": self.retain_scale,
            "params": vars(self.params) if self.params is not None else None,  # after the method's stall answers
            "forgotten": self.reason == "target",
            "curve": self.curve,
        }

    def verdict(self) -> str | None:
        """One plain sentence when the run ended above the target (None when it reached it)."""
        if self.reason == "target":
            return None
        last = self.curve[-1] if self.curve else None
        kept = self._kept_point()
        saved = "no check was within the guard, so the saved model is the original one"
        if kept:
            saved = (
                f"the saved model is step {self.kept_step}'s, the lowest BLEU within the guard: "
                f"{kept['bleu']:.3f} (target {self.rule.until_bleu:g})"
            )
            if "auc" in kept:
                saved += f" and membership AUC {kept['auc']:.3f} (target {self.rule.until_auc:g})"
        assert last is not None  # set by a check, which added its point to the curve
        if self.reason == "guard":
            return (
                f"not forgotten: held-out bits per byte rose {100 * last['bpb_rise']:+.1f} % "
                f"at step {last['step']}, "
                f"past the {100 * self.rule.max_utility_loss:g} % guard ({self.backed} time(s) before, each "
                f"answered by going back to a check within {100 * self.rule.headroom:g} % of it, halving the "
                f"learning rate{', doubling the retain weight' if self.retain else ''} and training only the "
                f"items not yet forgotten); {saved}. "
                + (
                    "Try a smaller --lr or another --method"
                    if self.retain
                    else "Try a smaller --lr, a retain set (--retain), or another --method"
                )
            )
        if self.reason == "stalled":
            return (
                f"not forgotten: BLEU has not improved for {self.rule.patience} checks up to step {last['step']}, "
                f"at {self.lr_scale:g}x --lr"
                + (f" and {self.retain_scale:g}x the retain weight" if self.retain else "")
                + f": the method has stopped making progress; {saved}; try a larger --lr or another --method"
            )
        return f"not forgotten: {self.max_steps} optimiser steps spent; {saved}; try a larger --max-steps or --lr"
