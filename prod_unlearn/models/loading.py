"""Load any Hugging Face causal LM (local folder or hub id) the same way, on CPU or GPU."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prod_unlearn.io import umask_modes

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "model"
# The retain model: the embedded recipe (seed, steps, vocabulary) with the three default forget sets
# never seen (`pretrain --exclude copyright,insecure,deprecated`): the floor of every forget figure.
RETAIN_MODEL = ASSETS / "retain"
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class ModelError(ValueError):
    """A user-facing model problem (missing path, unknown dtype...): one line, no traceback."""


@dataclass
class LoraOptions:
    """LoRA through peft. ``merge`` folds the adapter into the weights when saving."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str = "all-linear"
    merge: bool = True


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' = bf16 on a GPU that supports it, fp32 elsewhere (CPU bf16 training is slow and lossy)."""
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"--dtype {dtype}: expected one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def looks_like_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+", name)) and not name.startswith((".", "/", "~"))


def check_model_source(name: str) -> str:
    """Return a loadable name; a local path that does not exist is an error, not a hub lookup."""
    p = Path(os.path.expanduser(name))
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{name}: folder has no config.json (expected a Hugging Face model folder)")
        return str(p)
    if not looks_like_hub_id(name):
        raise ModelError(f"{name}: no such model folder")
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(check_model_source(name))
    except ModelError:
        raise
    except Exception as e:  # hub unreachable, broken files...
        raise ModelError(f"{name}: could not load tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def load_companion(opt: str, name: str, tokenizer, device: str = "auto", dtype: str = "auto"):
    """A model compared with --model (--original, --retain-model): its tokenizer must be --model's,
    checked before its weights load (token ids of one mean nothing to the other)."""
    other = load_tokenizer(name)
    if other.get_vocab() != tokenizer.get_vocab():
        raise ModelError(
            f"{opt} {name}: its tokenizer differs from --model's ({len(other)} vs {len(tokenizer)} "
            f"tokens); the two models must share one"
        )
    return load_model(name, device, dtype)[0]


def load_model(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    gradient_checkpointing: bool = False,
    lora: LoraOptions | None = None,
):
    """Return (model, tokenizer) on ``device``; the model is in train mode only if the caller says so."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_tokenizer(name)
    model: PreTrainedModel | PeftModel
    try:
        model = AutoModelForCausalLM.from_pretrained(check_model_source(name), dtype=torch_dtype)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{name}: could not load model ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        if gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    # PreTrainedModel.to is @functools.wraps(nn.Module.to): typeshed's _Wrapped reads it as unbound
    return model.to(device), tokenizer  # type: ignore[arg-type]


def save_model(model, tokenizer, out: Path, merge_lora: bool = True, state_dict: dict | None = None) -> None:
    """save_pretrained (merging a LoRA adapter unless asked to keep it) + tokenizer. ``state_dict``:
    the full weights gathered from a sharded (FSDP/ZeRO-3) model, whose own tensors are shards."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and merge_lora and state_dict is None:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    umask_modes(Path(out))  # safetensors writes its file 0600


def model_fingerprint(model) -> str:
    """Cheap content hash of a model's weights (names, shapes, and a strided sample of values).

    Keys the frozen-reference caches: two different weight sets never share a cache entry,
    whatever path or hub id they came from.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]
