"""Builders of the registry's backbone families, one module per family (these import torch).

:mod:`histosic.embed.registry` imports a family's module only to describe it from its weights, to
check its weights or to build it; each module exposes functions of ``(kind, arg)`` named in the
family's :class:`~histosic.embed.registry.BackboneSpec`. :mod:`.state` holds what they share
(loading and cleaning state dicts, torchvision ResNets).
"""
