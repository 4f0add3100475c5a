"""Loading any causal LM: LoRA (merged or kept), gradient checkpointing, clear errors."""
from __future__ import annotations

import pytest
import torch

from prod_unlearn.methods import get_method
from prod_unlearn.models.loading import LoraOptions, ModelError, load_model, resolve_dtype
from prod_unlearn.training.loop import TrainConfig, unlearn


@pytest.mark.parametrize("merge", [True, False])
def test_lora_unlearning_saves_a_loadable_model(micro_dir, forget_examples, tmp_path, merge):
    from transformers import AutoModelForCausalLM
    model, tok = load_model(str(micro_dir), "cpu", "fp32", gradient_checkpointing=True,
                            lora=LoraOptions(r=4, alpha=8, merge=merge))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in model.parameters()) / 2
    unlearn(model, tok, forget_examples, get_method("prod"), TrainConfig(epochs=1, lr=1e-2, max_length=64),
            tmp_path / "out", merge_lora=merge)
    if merge:
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        base = AutoModelForCausalLM.from_pretrained(micro_dir)
        diff = sum((a - b).abs().sum().item() for a, b in zip(merged.parameters(), base.parameters()))
        assert diff > 0  # the adapter was folded into the weights
    else:
        assert (tmp_path / "out" / "adapter_config.json").exists()


def test_model_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="no such model folder"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="--dtype"):
        resolve_dtype("int3", "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
