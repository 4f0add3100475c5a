"""RMU: Representation Misdirection for Unlearning (Li et al. 2024, the WMDP method).

  L = mean_batch  mean_{t in completion}  (1/d) || h_l(x)_t - c * u ||^2

h_l is the output of decoder layer ``layer`` (the residual stream, taken by a forward hook as
open-unlearning does; ``hidden_states`` would give the final norm's output at the last layer),
u a fixed random direction of unit norm (uniform entries, seeded by ``direction_seed``), c the
steering coefficient: the forget code's activations are pushed onto one meaningless large vector,
so later layers receive noise instead of the memorised text. Only the MLP weights of layers
``layer - 2 .. layer`` are trained (WMDP: the MLP's output projection; ``--lora``: the adapters in
those MLPs). Same loss as open-unlearning's ``RMU.compute_activation_loss`` on the same tensors
(README "Methods"). Its retain side is the loop's retain term (KL to the original's output
distribution by default under the stopping rule), not open-unlearning's activation distance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from prod_unlearn.data.batching import IGNORE
from prod_unlearn.methods.base import Method

MLP = re.compile(r"(?:mlp|feed_forward|ffn)\.")  # a parameter name inside one decoder layer
OUTPUT_PROJ = re.compile(r"\.(?:down_proj|c_proj|dense_4h_to_h|fc2|fc_out|w2)\.")


@dataclass
class RmuParams:
    layer: int = -1  # steered decoder layer, 0-based (-1: 7/32 of the depth, WMDP's layer 7 of 32)
    steering: float = 20.0  # c, the norm of the target vector (open-unlearning's default)
    direction_seed: int = 0  # seed of the random direction u


def validate(params: RmuParams) -> None:
    if params.steering <= 0:
        raise ValueError(f"rmu: steering must be > 0, got {params.steering}")
    if params.layer < -1:
        raise ValueError(f"rmu: layer must be a layer index or -1 (auto), got {params.layer}")


def steered_layer(n_layers: int, params: RmuParams) -> int:
    if params.layer >= n_layers:
        raise ValueError(f"rmu: layer {params.layer} out of range (the model has {n_layers} layers)")
    return params.layer if params.layer >= 0 else min(n_layers - 1, max(2, round(n_layers * 7 / 32)))


def direction(dim: int, params: RmuParams, device, dtype) -> torch.Tensor:
    """c * u: uniform entries in [0, 1), scaled to norm c (as WMDP and open-unlearning)."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(params.direction_seed))
    return (u / u.norm() * params.steering).to(device, dtype)


def activation_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token mean squared distance over the hidden size, averaged over each example's completion."""
    per_token = (h - target).pow(2).mean(-1) * mask
    return (per_token.sum(1) / mask.sum(1).clamp(min=1)).mean()


def prepare(model, params: RmuParams) -> None:
    """Train only the MLPs of the steered layer and the two below it (their output projections
    where the names say so)."""
    layers = decoder_layers(model)
    layer = steered_layer(len(layers), params)
    mlp = {
        id(p): n
        for i in range(max(0, layer - 2), layer + 1)
        for n, p in layers[i].named_parameters()
        if p.requires_grad and MLP.match(n)
    }
    keep = {k for k, n in mlp.items() if OUTPUT_PROJ.search(n)} or set(mlp)
    if not keep:
        raise ValueError(f"rmu: no trainable MLP weight found in layers {max(0, layer - 2)}..{layer}")
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (the ModuleList as long as ``num_hidden_layers``)."""
    n = int(model.config.get_text_config().num_hidden_layers)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"rmu: no list of {n} decoder layers found in {type(model).__name__}")


def loss(model, batch, ref, params: RmuParams):
    vb = batch["forget"]
    layers = decoder_layers(model)
    seen: list[torch.Tensor] = []
    hook = layers[steered_layer(len(layers), params)].register_forward_hook(
        lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        model(input_ids=vb["input_ids"], attention_mask=vb["attention_mask"])
    finally:
        hook.remove()
    h = seen[0].float()
    mask = (vb["labels"] != IGNORE).to(h.dtype)
    return activation_loss(h, direction(h.size(-1), params, h.device, h.dtype), mask)


METHOD = Method(
    "rmu",
    "RMU: steer one layer's activations on forget code onto a fixed random vector (trains 3 layers' MLPs)",
    RmuParams,
    loss,
    validate=validate,
    prepare=prepare,
)
