"""Hand-crafted colour and texture features: an embedding without a network or weights.

Computed in torch on whole batches so the same pipeline (DataLoader, device, batching) serves it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HandcraftedFeatures"]

# Ruifrok & Johnston stain vectors (haematoxylin, eosin, DAB) as rows, in optical density;
# the same matrix as skimage.color.rgb_from_hed.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_N_BINS = 8


class HandcraftedFeatures(nn.Module):
    """Per-patch colour and texture statistics.

    Input: (n, 3, h, w) RGB in [0, 1] (normalisation mean 0, std 1). Output: (n, ``DIM``) with

    - RGB mean and std (6); HSV saturation and value mean and std (4);
    - haematoxylin, eosin and DAB optical-density mean and std (6), and 8-bin histograms of
      haematoxylin and eosin density (16);
    - texture on grey levels at full and half resolution: gradient magnitude mean and std (4),
      absolute Laplacian mean (2), mean absolute difference to the neighbour 1 and 4 pixels
      right and down (4); white-pixel fraction (1).
    """

    DIM = 43
    VERSION = 1

    def __init__(self) -> None:
        super().__init__()
        hed_from_rgb = torch.linalg.inv(_RGB_FROM_HED).to(torch.float32)
        self.register_buffer("hed_from_rgb", hed_from_rgb)
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("kernels", torch.stack([sobel, sobel.T]).unsqueeze(1))
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", lap.view(1, 1, 3, 3))

    @staticmethod
    def _mean_std(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)

    def _texture(self, grey: torch.Tensor) -> list[torch.Tensor]:
        grad = F.conv2d(grey, self.kernels)  # type: ignore[arg-type]
        mag = grad.pow(2).sum(dim=1, keepdim=True).sqrt().flatten(1)
        lap = F.conv2d(grey, self.laplacian).abs().flatten(1)  # type: ignore[arg-type]
        return [
            mag.mean(dim=1, keepdim=True),
            mag.std(dim=1, keepdim=True),
            lap.mean(dim=1, keepdim=True),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0.0, 1.0)
        n = x.shape[0]
        feats = [self._mean_std(x)]
        vmax = x.amax(dim=1)
        vmin = x.amin(dim=1)
        sat = torch.where(vmax > 0, (vmax - vmin) / vmax.clamp_min(1e-6), torch.zeros_like(vmax))
        feats.append(self._mean_std(torch.stack([sat, vmax], dim=1)))
        od = -torch.log((x * 255.0 + 1.0) / 256.0)
        hed = torch.einsum("nchw,cd->ndhw", od, self.hed_from_rgb).clamp_min(0.0)
        feats.append(self._mean_std(hed))
        for c in range(2):
            # Densities above ~1.5 are saturated stain; bin [0, 1.5) evenly.
            idx = (hed[:, c].flatten(1) / 1.5 * _N_BINS).long().clamp(0, _N_BINS - 1)
            hist = torch.zeros(n, _N_BINS, device=x.device).scatter_add_(
                1, idx, torch.ones_like(idx, dtype=torch.float32)
            )
            feats.append(hist / idx.shape[1])
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        half = F.avg_pool2d(grey, 2)
        tex = self._texture(grey)
        tex_half = self._texture(half)
        feats.append(torch.cat([tex[0], tex[1], tex_half[0], tex_half[1], tex[2], tex_half[2]], 1))
        for d in (1, 4):
            dx = (grey[..., :, d:] - grey[..., :, :-d]).abs().flatten(1).mean(dim=1, keepdim=True)
            dy = (grey[..., d:, :] - grey[..., :-d, :]).abs().flatten(1).mean(dim=1, keepdim=True)
            feats.append(torch.cat([dx, dy], dim=1))
        white = (x.amin(dim=1) >= 220.0 / 255.0).flatten(1).float().mean(dim=1, keepdim=True)
        feats.append(white)
        out = torch.cat(feats, dim=1)
        return out
