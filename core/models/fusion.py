"""Late fusion: a per-dimension gate between the LLM's note state and the raw
image feature, applied after the LLM, so the image reaches the final vector even when the LLM ignores it.

    v  = W_p c                 c: the vision tower's pooled feature (frozen)
    z  = sigmoid(W_g [h ; v])  element-wise gate, in (0, 1)
    h' = z * h + (1 - z) * v   no residual (the reference removed an earlier one)

z is a direct read-out of how much of each dimension comes from the LLM (z -> 1) or the image (z -> 0).
W_g starts at zero (z = 0.5 everywhere); W_p is rescaled on the first batch of real pictures it sees so that
|v| matches |h|. A note without a picture keeps its LLM state (z = 1): there is nothing to fuse.
"""
from __future__ import annotations

import torch
from torch import nn


class LateFusionGate(nn.Module):
    def __init__(self, vision_width: int, llm_width: int):
        super().__init__()
        self.image_projection = nn.Linear(vision_width, llm_width, bias=False)
        self.gate = nn.Linear(2 * llm_width, llm_width, bias=False)
        nn.init.zeros_(self.gate.weight)
        self.register_buffer("calibrated", torch.tensor(False))

    @torch.no_grad()
    def calibrate(self, state: torch.Tensor, image_feature: torch.Tensor) -> None:
        """Scale W_p once so the projected image feature has the LLM state's RMS on this batch."""
        projected_rms = self.image_projection(image_feature).pow(2).mean().sqrt()
        state_rms = state.pow(2).mean().sqrt()
        if torch.isfinite(projected_rms) and projected_rms > 0:
            self.image_projection.weight.mul_(state_rms / projected_rms)
        self.calibrated.fill_(True)

    def project_image(self, image_feature: torch.Tensor) -> torch.Tensor:
        return self.image_projection(image_feature)

    def forward(self, state: torch.Tensor, projected_image: torch.Tensor,
                has_image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused state, gate z) for an LLM state h and v = W_p c. Rows whose `has_image` is False have no
        picture to fuse: their gate is 1 and they keep h."""
        z = torch.sigmoid(self.gate(torch.cat([state, projected_image], dim=-1)))
        if has_image is not None:
            z = torch.where(has_image.to(z.device).unsqueeze(-1), z, torch.ones_like(z))
        return z * state + (1 - z) * projected_image, z
