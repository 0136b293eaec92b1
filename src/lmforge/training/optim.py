"""The optimizers `lmforge pretrain` and `lmforge sft` can build: AdamW, or Muon with AdamW.

- "adamw": torch's AdamW (fused where the kernels cover the parameters), decay on
  matrices and the embedding, none on norms and biases.
- "muon": torch.optim.Muon for the hidden 2-D matrices (attention and MLP projections),
  torch's AdamW for everything else (the embedding / output projection, norms, biases).
  Muon orthogonalises each matrix's momentum (Newton-Schulz), which gives every
  direction of a hidden matrix the same step size; the embedding is a lookup table and
  the output layer a classifier, where Adam's per-coordinate steps are better suited.
  Muon's learning rate is adjusted per shape as in Moonshot's "Muon is Scalable"
  (`match_rms_adamw`: update RMS ~0.2 x lr, like AdamW's), so one schedule drives both;
  `muon_lr_scale` multiplies it for the Muon groups only.

`MuonAdamW` is one `torch.optim.Optimizer` to the outside (accelerate prepares it, the
training loop sets each group's lr, checkpoints save its state dict), made of the two
torch optimizers sharing the very same parameter-group dicts. Its state dict is
{"muon": ..., "adamw": ...}, both plain torch state dicts, so exact resume holds.
The weights stay a plain LlamaForCausalLM: only the update rule differs.
"""

from __future__ import annotations

from typing import Any

import torch

OPTIMIZERS = ("adamw", "muon")


def split_parameters(model) -> tuple[list, list, list]:
    """Trainable parameters as (hidden matrices, other matrices, vectors).

    Hidden matrices are every 2-D weight except the input embedding and the output
    projection (tied or not); "other matrices" are those two.
    """
    # Every embedding table (lmforge's decoder and HF models alike), and the output projection
    # (HF: get_output_embeddings; lmforge's decoder: output_weight, the embedding when tied).
    edge = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None and getattr(head, "weight", None) is not None:
        edge.add(id(head.weight))
    if isinstance(getattr(model, "output_weight", None), torch.Tensor):
        edge.add(id(model.output_weight))
    hidden, other, vectors = [], [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            vectors.append(p)
        elif p.ndim == 2 and id(p) not in edge:
            hidden.append(p)
        else:
            other.append(p)
    return hidden, other, vectors


def param_groups(model, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups, in the model's own order: matrices decay,
    vectors (norms, biases) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MuonAdamW(torch.optim.Optimizer):
    """Muon on `hidden`, AdamW on `other` (decayed) and `vectors` (not decayed)."""

    def __init__(self, hidden: list, other: list, vectors: list, *, lr: float, weight_decay: float,
                 betas: tuple[float, float], eps: float, momentum: float, muon_lr_scale: float,
                 fused: bool = False) -> None:
        muon_groups = [{"params": hidden, "weight_decay": weight_decay, "lr_scale": muon_lr_scale}]
        adam_groups = [{"params": other, "weight_decay": weight_decay, "lr_scale": 1.0},
                       {"params": vectors, "weight_decay": 0.0, "lr_scale": 1.0}]
        adam_groups = [g for g in adam_groups if g["params"]]
        # The children fill their defaults into these dicts; the parent then holds the same
        # dicts, so an lr set through the parent (or accelerate's wrapper) reaches the child.
        self._muon = torch.optim.Muon(muon_groups, lr=lr * muon_lr_scale, momentum=momentum,
                                      weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
        self._adamw = torch.optim.AdamW(adam_groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
        super().__init__(muon_groups + adam_groups, {"lr": lr, "fused": False})
        # With fused AdamW the whole step can be skipped on the device (see step): the training
        # loop then sets `found_inf` instead of reading the flag back every step.
        self.skips_on_device = bool(fused)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:
            self._muon.step()
            self._adamw.step()
        else:
            self._muon_step_unless(found_inf)
            self._adamw.found_inf = found_inf  # the fused kernels skip the update themselves
            try:
                self._adamw.step()
            finally:
                del self._adamw.found_inf
        return loss

    def _muon_step_unless(self, found_inf: torch.Tensor) -> None:
        """Muon's step, undone on the device where `found_inf` is set (no host read).

        torch's Muon has no `found_inf` hook, so its matrices and momenta are saved first,
        its gradients are zeroed under the flag (a NaN would otherwise reach the saved
        values through the arithmetic), and the saved values come back through a lerp of
        weight 0 or 1, which is exact either way.
        """
        params = [p for g in self._muon.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        bad = found_inf.to(dtype=torch.bool, device=params[0].device)
        for p in params:
            p.grad.masked_fill_(bad, 0.0)
        buffers = [self._muon.state[p]["momentum_buffer"] for p in params if "momentum_buffer" in self._muon.state[p]]
        saved = torch._foreach_add([*params, *buffers], 0)  # copies
        self._muon.step()
        weights = {t.dtype: found_inf.to(dtype=t.dtype, device=t.device) for t in saved}
        torch._foreach_lerp_([*params, *buffers], saved, [weights[t.dtype] for t in saved])

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self._muon.state_dict(), "adamw": self._adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("not a Muon+AdamW optimizer state (expected 'muon' and 'adamw' parts)")
        self._muon.load_state_dict(state_dict["muon"])
        self._adamw.load_state_dict(state_dict["adamw"])
        # torch's load_state_dict gives each child new group dicts: hold those again, or an lr set
        # through this optimizer (the schedule) would no longer reach the steps. accelerate.prepare
        # calls this once for device placement, so every run goes through here.
        self.param_groups = self._muon.param_groups + self._adamw.param_groups


def build_optimizer(model, cfg, device_type: str) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, over the model's trainable parameters.

    AdamW is fused whenever the kernels cover the parameters (CUDA and CPU, float dtypes):
    faster, and it lets a non-finite step be skipped on the device.
    """
    hidden, other, vectors = split_parameters(model)
    fused = device_type in ("cuda", "cpu") and all(p.is_floating_point() for p in hidden + other + vectors)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "muon" and hidden:
        return MuonAdamW(hidden, other, vectors, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=betas,
                         eps=cfg.adam_eps, momentum=cfg.muon_momentum, muon_lr_scale=cfg.muon_lr_scale, fused=fused)
    # The model's own parameter order, as before Muon existed: optimizer state dicts index
    # parameters by position, so checkpoints written earlier still resume onto the right tensors.
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate, betas=betas,
                             eps=cfg.adam_eps, fused=fused)
