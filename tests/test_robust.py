"""Methods that aim to remove rather than suppress: SimNPO, RMU, sharpness-aware unlearning (--sam) and
distillation after unlearning (distill)."""
from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from prod_unlearn.data.batching import collate, encode
from prod_unlearn.methods import get_method, make_params
from prod_unlearn.training.loop import TrainConfig, unlearn
from prod_unlearn.training.sam import sharpness_aware


def _batch(tokenizer, examples):
    return {"forget": collate(encode(examples, tokenizer, 64), tokenizer.pad_token_id),
            "index": torch.arange(len(examples))}


def test_simnpo_is_npo_on_the_length_normalised_nll(micro_model, tokenizer, forget_examples):
    """L = -(2/beta) log sigmoid(beta (NLL/|y| - delta)), per example, averaged (open-unlearning's form;
    the agreement with its code on the same tensors is in the README)."""
    m = get_method("simnpo")
    batch = _batch(tokenizer, forget_examples)
    for beta, delta in ((4.5, 0.0), (1.0, 8.0)):
        got = m.loss(micro_model, batch, None, make_params(m, {"beta": beta, "delta": delta}))
        want = []
        for e in forget_examples:
            b = collate(encode([e], tokenizer, 64), tokenizer.pad_token_id)
            nll = micro_model(**b).loss  # mean token NLL over the completion (prompt labels are ignored)
            want.append(-(2 / beta) * torch.nn.functional.logsigmoid(beta * (nll - delta)))
        torch.testing.assert_close(got, torch.stack(want).mean(), rtol=1e-5, atol=1e-6)



def test_rmu_steers_the_layer_output_onto_a_fixed_vector(micro_model, tokenizer, forget_examples):
    """L = mean over examples of the completion-mean of ||h_l - c u||^2 / d, h_l taken by a hook on the
    decoder layer (as open-unlearning's RMU); u fixed by its seed, |c u| = c."""
    from prod_unlearn.methods.rmu import direction
    m = get_method("rmu")
    params = make_params(m, {"steering": 5.0})
    batch = _batch(tokenizer, forget_examples)
    seen = []
    hook = micro_model.model.layers[0].register_forward_hook(
        lambda mod, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    got = m.loss(micro_model, batch, None, params)
    hook.remove()
    h = seen[0]
    cu = direction(h.size(-1), params, h.device, h.dtype)
    assert cu.norm().item() == pytest.approx(5.0, rel=1e-5) and (cu > 0).all()
    torch.testing.assert_close(cu, direction(h.size(-1), params, h.device, h.dtype))   # fixed by the seed
    mask = (batch["forget"]["labels"] != -100).float()
    want = (((h - cu) ** 2).mean(-1) * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(got, want.mean(), rtol=1e-5, atol=1e-6)
    other = make_params(m, {"steering": 5.0, "direction_seed": 1})
    assert not torch.allclose(direction(h.size(-1), other, h.device, h.dtype), cu)


def test_rmu_trains_only_the_steered_layers_mlp_output(micro_model, tokenizer, forget_examples, tmp_path):
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    run = unlearn(micro_model, tokenizer, forget_examples, get_method("rmu"), TrainConfig(epochs=3, lr=1e-2),
                  tmp_path / "rmu")
    changed = {n for n, p in micro_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}
    assert all(p.requires_grad for p in micro_model.parameters())      # the caller's model is given back as it was
    assert run["epochs"][-1]["loss"] < run["epochs"][0]["loss"]          # the activations move toward c u
    with pytest.raises(ValueError, match="layer 3 out of range"):
        unlearn(micro_model, tokenizer, forget_examples, get_method("rmu"),
                TrainConfig(epochs=1, method_params={"layer": 3}), tmp_path / "bad")

def test_sharpness_aware_gradient_is_taken_at_the_perturbed_weights(micro_model, tokenizer, forget_examples):
    m, rho = get_method("ga"), 0.05
    params = make_params(m, {})
    batch = _batch(tokenizer, forget_examples)
    probe = copy.deepcopy(micro_model).train()
    micro_model.train()

    def objective():
        return m.loss(micro_model, batch, None, params)
    objective().backward()
    g = {n: p.grad.clone() for n, p in micro_model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([v.norm() for v in g.values()]))
    with torch.no_grad():  # the worst-case point, by hand
        for n, p in probe.named_parameters():
            p.add_(g[n] * rho / norm)
    m.loss(probe, batch, None, params).backward()
    before = {n: p.detach().clone() for n, p in micro_model.named_parameters()}
    sharpness_aware(micro_model, objective, rho, Accelerator(cpu=True))
    for n, p in micro_model.named_parameters():
        torch.testing.assert_close(p.grad, dict(probe.named_parameters())[n].grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=1e-7)   # the weights are put back


def test_sam_perturbs_along_the_method_loss_only(memorised_dir, tokenizer, forget_examples, tmp_path, monkeypatch):
    """As Fan et al.'s SAMTrainer: the worst-case point comes from the method's gradient alone; a retain
    term adds its gradient at the unperturbed weights (so the perturbed objective is the same with or
    without one, and the retain gradient is exactly what a run without SAM adds)."""
    from transformers import AutoModelForCausalLM
    from prod_unlearn.training import sam
    from conftest import CODE
    from prod_unlearn.data.examples import Example
    seen = []

    def recording(model, objective, rho, accelerator):
        seen.append(objective().item())
        sharpness_aware(model, objective, rho, accelerator)
    monkeypatch.setattr(sam, "sharpness_aware", recording)
    retain = [Example("", c, f"r{i}") for i, c in enumerate(CODE)]
    for i, kept in enumerate((None, retain)):
        model = AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32)
        cfg = TrainConfig(epochs=1, lr=1e-2, sam_rho=0.05, retain_weight=1.0, retain_loss="nll", batch_size=len(forget_examples))
        unlearn(model, tokenizer, forget_examples, get_method("ga"), cfg, tmp_path / f"r{i}", retain=kept)
    assert len(seen) == 2 and seen[0] == seen[1]  # (with "nll" the retain term is not 0 at the first step)


def test_sam_run_trains_and_differs_from_plain(memorised_dir, tokenizer, forget_examples, tmp_path):
    from transformers import AutoModelForCausalLM
    outs = {}
    for rho in (0.0, 0.05):
        model = AutoModelForCausalLM.from_pretrained(memorised_dir, dtype=torch.float32)
        cfg = TrainConfig(epochs=2, lr=1e-2, sam_rho=rho)
        run = unlearn(model, tokenizer, forget_examples, get_method("simnpo"), cfg, tmp_path / f"sam{rho}")
        assert run["epochs"][0]["loss"] > 0.1   # a memorised model: SimNPO is far from saturation
        assert run["config"]["sam_rho"] == rho
        outs[rho] = {n: p.detach().clone() for n, p in model.named_parameters()}
    diff = max((outs[0.0][n] - outs[0.05][n]).abs().max().item() for n in outs[0.0])
    assert diff > 1e-4


# ---------------------------------------------------------------- distillation after unlearning (UNDO)

def test_perturbed_copy_mixes_toward_a_fresh_initialisation(micro_model):
    from prod_unlearn.training.distill import perturbed_copy
    same = perturbed_copy(micro_model, 0.0, seed=0)
    half = perturbed_copy(micro_model, 0.5, seed=0)
    fresh = perturbed_copy(micro_model, 1.0, seed=0)
    for (n, p), q, h, f in zip(micro_model.named_parameters(), same.parameters(), half.parameters(), fresh.parameters()):
        assert torch.equal(p, q), n
        assert torch.allclose(h, 0.5 * p + 0.5 * f, atol=1e-6), n   # the same fresh init (seeded)


def test_distill_matches_the_teacher_and_drops_forget_documents(memorised_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from prod_unlearn.data.examples import Example
    from prod_unlearn.training.distill import DistillConfig, distill
    from conftest import CODE
    teacher = AutoModelForCausalLM.from_pretrained(memorised_dir)
    tok = AutoTokenizer.from_pretrained(memorised_dir)
    forget = [Example("", CODE[0], "f0")]
    texts = CODE * 3 + ["# holds the forget item\n" + CODE[0]]
    cfg = DistillConfig(noise=0.5, tokens=2 * 32 * 40, lr=3e-3, batch_size=2, context=32, seed=0)
    student, rec = distill(teacher, tok, tmp_path / "student", cfg, texts, teacher_name="memorised", forget=forget)
    assert rec["data"]["dropped_holding_forget_items"] == 4 and rec["steps"] == 40
    assert rec["compute"] is None  # a teacher of another shape: the shipped retain model does not price it
    from transformers import AutoConfig
    from prod_unlearn.models.loading import RETAIN_MODEL
    from prod_unlearn.training.distill import retain_compute
    c = retain_compute(2560, AutoConfig.from_pretrained(RETAIN_MODEL))  # the embedded model's shape
    assert c["distill_tokens"] == 2560 and c["retain_model_tokens"] == 1220 * 24 * 1536  # 1220 steps x 24 x 1536
    assert c["share_of_retraining"] == pytest.approx(2560 / (1220 * 24 * 1536), abs=1e-4)
    curve = [p["kl"] for p in rec["kl_curve"]]
    assert curve[-1] < 0.5 * curve[0], curve                    # the student learns the teacher's distributions
    bpb = {k: v["heldout_bpb"] for k, v in rec["heldout"].items()}   # held-out behaviour moves toward the teacher's
    assert abs(bpb["student"] - bpb["teacher"]) < abs(bpb["student_at_start"] - bpb["teacher"]), bpb
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "distill.json").exists() and saved.config.vocab_size == teacher.config.vocab_size
    with pytest.raises(ValueError, match="--noise 1.5"):
        DistillConfig(noise=1.5).validate()
