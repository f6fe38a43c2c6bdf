"""Patch features computed with NumPy, no network and no torch (a core package).

- :mod:`histosic.features.hefeatures`: the ``he-features`` backbone, stain-robust H&E nuclear and
  texture statistics (the product's default, :data:`histosic.config.DEFAULT_MODEL`).
- :mod:`histosic.features.handcrafted`: the ``handcrafted`` backbone, colour and texture statistics.

The embedding pipeline (:mod:`histosic.embed`) runs them as backbones through thin ``nn.Module``
wrappers (:mod:`histosic.embed.builders.features`).
"""
