"""The synthetic EuroSAT-like images: per class a texture (fields, canopy, roads, water, ...), part of a
confusable class's texture mixed in, and sensor-like variation; a deterministic function of (class, count, seed)."""
from __future__ import annotations

import math

import torch

from .data import CLASSES, IMAGE_SIZE

GENERATOR_VERSION = 1                   # bump when the synthetic images change


# Per-class palettes (RGB in [0, 1]): (colour A, colour B). Neighbouring classes share colours on
# purpose (vegetation greens, built-up greys, water blues), so colour alone does not decide.
_PALETTES = {
    "AnnualCrop": ((0.55, 0.47, 0.33), (0.36, 0.48, 0.26)),
    "Forest": ((0.10, 0.22, 0.12), (0.20, 0.34, 0.18)),
    "HerbaceousVegetation": ((0.30, 0.40, 0.22), (0.48, 0.46, 0.30)),
    "Highway": ((0.40, 0.44, 0.30), (0.62, 0.61, 0.60)),
    "Industrial": ((0.45, 0.44, 0.44), (0.72, 0.70, 0.68)),
    "Pasture": ((0.38, 0.50, 0.26), (0.46, 0.55, 0.32)),
    "PermanentCrop": ((0.52, 0.45, 0.32), (0.28, 0.42, 0.20)),
    "Residential": ((0.42, 0.40, 0.36), (0.66, 0.50, 0.44)),
    "River": ((0.34, 0.44, 0.26), (0.16, 0.26, 0.34)),
    "SeaLake": ((0.08, 0.18, 0.30), (0.16, 0.28, 0.38)),
}
# Which class's texture leaks into which (as in the real data: crops vs orchards, meadow vs shrub, ...).
_CONFUSED_WITH = {
    "AnnualCrop": "PermanentCrop", "Forest": "HerbaceousVegetation", "HerbaceousVegetation": "Pasture",
    "Highway": "River", "Industrial": "Residential", "Pasture": "HerbaceousVegetation",
    "PermanentCrop": "AnnualCrop", "Residential": "Industrial", "River": "Highway", "SeaLake": "River",
}


class _Draw:
    """Vectorised texture primitives for a batch of `n` images; every draw uses the same generator."""

    def __init__(self, n: int, size: int, g: torch.Generator):
        self.n, self.size, self.g = n, size, g
        axis = torch.linspace(0, 1, size)
        self.y, self.x = axis.view(1, size, 1), axis.view(1, 1, size)

    def uniform(self, lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(self.n, *shape, generator=self.g)

    def smooth(self, cells: int, mode: str = "bilinear") -> torch.Tensor:
        """(n, size, size) noise with about `cells` features across: upsampled coarse Gaussian noise."""
        coarse = torch.randn(self.n, 1, cells + 1, cells + 1, generator=self.g)
        kw = {"align_corners": False} if mode == "bilinear" else {}
        up = torch.nn.functional.interpolate(coarse, size=(self.size, self.size), mode=mode, **kw)
        return up[:, 0]

    def direction(self):
        angle = self.uniform(0, math.pi, 1, 1)
        return torch.cos(angle), torch.sin(angle)

    def stripes(self, period_px: tuple[float, float]) -> torch.Tensor:
        """Oriented sine stripes in [-1, 1], random angle, period and phase per image."""
        c, s = self.direction()
        freq = self.size / self.uniform(*period_px, 1, 1)
        phase = self.uniform(0, 2 * math.pi, 1, 1)
        return torch.sin(2 * math.pi * freq * (self.x * c + self.y * s) + phase)

    def band(self, width_px: tuple[float, float], curve: float) -> torch.Tensor:
        """A soft band (road, river) through the image: 1 on the band, 0 away from it."""
        c, s = self.direction()
        offset = self.uniform(-0.25, 0.25, 1, 1)
        across = (self.x - 0.5) * c + (self.y - 0.5) * s - offset
        along = -(self.x - 0.5) * s + (self.y - 0.5) * c
        wiggle = curve * self.uniform(0.5, 1, 1, 1) * torch.sin(
            2 * math.pi * self.uniform(0.5, 1.5, 1, 1) * along + self.uniform(0, 6.3, 1, 1))
        width = self.uniform(*width_px, 1, 1) / self.size
        return torch.sigmoid((width / 2 - (across - wiggle).abs()) * self.size * 1.5)

    def mix(self, palette, t: torch.Tensor, jitter: float = 0.05) -> torch.Tensor:
        """Blend the palette's two colours by t in [0, 1]; colours jittered per image (mostly together)."""
        shared = jitter * torch.randn(self.n, 3, 1, 1, generator=self.g)
        a, b = (torch.tensor(col).view(1, 3, 1, 1) + shared + 0.5 * jitter * torch.randn(self.n, 3, 1, 1, generator=self.g)
                for col in palette)
        t = t.clamp(0, 1).unsqueeze(1)
        return a + (b - a) * t


def _texture(name: str, d: _Draw) -> torch.Tensor:
    """(n, 3, size, size) float images of one class, before noise and jitter."""
    p = _PALETTES[name]
    if name == "AnnualCrop":          # striped fields, two orientations split by a smooth boundary
        fields = (d.smooth(2) > 0).float()
        t = 0.5 + 0.45 * (fields * d.stripes((5, 9)) + (1 - fields) * d.stripes((4, 8)))
        return d.mix(p, t)
    if name == "Forest":              # dark, fine canopy grain
        t = 0.5 + 0.25 * d.smooth(20) + 0.15 * d.smooth(6)
        return d.mix(p, t)
    if name == "HerbaceousVegetation":  # patchy medium-scale texture
        t = 0.5 + 0.3 * d.smooth(8) + 0.12 * d.smooth(24)
        return d.mix(p, t)
    if name == "Highway":             # a straight grey road across fields
        ground = d.mix(_PALETTES["HerbaceousVegetation"], 0.5 + 0.25 * d.smooth(6))
        road = d.band((3, 7), curve=0.02).unsqueeze(1)
        grey = torch.tensor(p[1]).view(1, 3, 1, 1) + 0.05 * torch.randn(d.n, 1, 1, 1, generator=d.g)
        return ground * (1 - road) + grey * road
    if name == "Industrial":          # large bright blocks on grey
        t = 0.5 + 0.5 * torch.tanh(2 * d.smooth(5, mode="nearest")) + 0.1 * d.smooth(16)
        return d.mix(p, t)
    if name == "Pasture":             # smooth, almost uniform meadow
        t = 0.5 + 0.35 * d.smooth(2) + 0.05 * d.smooth(12)
        return d.mix(p, t)
    if name == "PermanentCrop":       # orchard rows: a rotated grid of dots
        c, s = d.direction()
        period = d.size / d.uniform(4, 7, 1, 1)
        u, v = d.x * c + d.y * s, -d.x * s + d.y * c
        dots = torch.sin(2 * math.pi * period * u) * torch.sin(2 * math.pi * period * v)
        return d.mix(p, 0.5 + 0.45 * dots + 0.1 * d.smooth(4))
    if name == "Residential":         # dense small houses: fine blocks, reddish roofs
        t = 0.5 + 0.5 * torch.tanh(2 * d.smooth(14, mode="nearest")) + 0.1 * d.smooth(4)
        return d.mix(p, t)
    if name == "River":               # a winding dark band across vegetation
        ground = d.mix(_PALETTES["Pasture"], 0.5 + 0.3 * d.smooth(5))
        water = d.band((5, 12), curve=0.12).unsqueeze(1)
        blue = torch.tensor(p[1]).view(1, 3, 1, 1) + 0.04 * torch.randn(d.n, 3, 1, 1, generator=d.g)
        return ground * (1 - water) + (blue + 0.04 * d.smooth(12).unsqueeze(1)) * water
    if name == "SeaLake":             # water: dark, smooth, faint ripples
        t = 0.5 + 0.3 * d.smooth(3) + 0.15 * d.stripes((3, 6)) * d.smooth(4).abs()
        return d.mix(p, t)
    raise KeyError(name)


def class_images(label: int, n: int, seed: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 (n, 3, size, size) images of class `label`, a deterministic function of (label, n, seed)."""
    name = CLASSES[label]
    g = torch.Generator().manual_seed(seed * 1_000_003 + label * 7919 + GENERATOR_VERSION)
    d = _Draw(n, size, g)
    images = _texture(name, d)
    # Overlap: part of each image carries a confusable class's texture, so classes are not cleanly
    # separable (the real EuroSAT has the same kind of mixed scenes).
    other = _texture(_CONFUSED_WITH[name], d)
    amount = d.uniform(0, 1, 1, 1, 1) ** 2 * 0.6
    region = torch.sigmoid(4 * d.smooth(2)).unsqueeze(1)
    images = images + amount * region * (other - images)
    # Sensor-like variation: brightness, contrast, colour cast, pixel noise.
    images = (images - 0.4) * d.uniform(0.75, 1.25, 1, 1, 1) + 0.4 * d.uniform(0.8, 1.2, 1, 1, 1)
    images = images + 0.04 * torch.randn(n, 3, 1, 1, generator=g) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)
