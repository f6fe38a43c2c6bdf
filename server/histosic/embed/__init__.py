"""Patch embeddings with backbones: the only package of histosic that imports torch.

This package's ``__init__`` imports nothing, so the torch-free parts load without torch:

- :mod:`histosic.embed.registry`: the backbones' names, dimensions and availability, and
  :func:`~histosic.embed.registry.load_model` (no torch until a backbone is built);
- :mod:`histosic.embed.network`: the cached internet probe of the registry;
- :mod:`histosic.embed.pipeline`: :func:`~histosic.embed.pipeline.embed_slide`, a slide to an HDF5
  embedding file (torch);
- :mod:`histosic.embed.builders`: one module per backbone family (torch);
- :mod:`histosic.embed.pretrain`: SimCLR pre-training of a ResNet on the user's slides (torch).
"""
