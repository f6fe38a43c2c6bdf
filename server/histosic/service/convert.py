"""``histosic.v1.ClusterOptions`` messages to :class:`~histosic.cluster.ClusterOptions` and back.

The server converts a request's options once (:func:`options_from_proto`) and the client builds
its request from a :class:`~histosic.cluster.ClusterOptions` (:func:`options_to_proto`), so both
ends agree on what an empty field means: the default of :class:`~histosic.cluster.ClusterOptions`.
"""

from __future__ import annotations

from histosic.api.v1 import clustering_pb2
from histosic.cluster import PAPER_PREPROCESS, ClusterOptions, Preprocess
from histosic.errors import InvalidInputError

__all__ = ["options_from_proto", "options_to_proto"]

_DEFAULTS = ClusterOptions()


def _preprocess_from_proto(p: clustering_pb2.Preprocess) -> Preprocess:
    if p.paper:
        return PAPER_PREPROCESS
    default = _DEFAULTS.preprocess
    return Preprocess(
        regress_nuisance=(
            p.regress_nuisance if p.HasField("regress_nuisance") else default.regress_nuisance
        ),
        smooth_radius=p.smooth_radius if p.HasField("smooth_radius") else default.smooth_radius,
        l2_normalize=p.l2_normalize if p.HasField("l2_normalize") else default.l2_normalize,
        pca_components=(
            p.pca_components if p.HasField("pca_components") else default.pca_components
        ),
    )


def options_from_proto(msg: clustering_pb2.ClusterOptions) -> ClusterOptions:
    """The clustering options a request asks for; empty (unset) fields take the defaults.

    Raises
    ------
    InvalidInputError
        A value :class:`~histosic.cluster.ClusterOptions` rejects (unknown method, metric, stop or
        geojson kind, a count out of range).
    """
    d = _DEFAULTS
    return ClusterOptions(
        method=msg.method or d.method,
        positive_class=msg.positive_class or d.positive_class,
        multiclass=msg.multiclass,
        suggest=msg.suggest,
        metric=msg.metric or d.metric,
        stop=msg.stop or d.stop,
        constrained=msg.constrained,
        max_depth=msg.max_depth if msg.HasField("max_depth") else d.max_depth,
        min_cluster_size=(
            msg.min_cluster_size if msg.HasField("min_cluster_size") else d.min_cluster_size
        ),
        random_state=msg.random_state if msg.HasField("random_state") else d.random_state,
        preprocess=(
            _preprocess_from_proto(msg.preprocess) if msg.HasField("preprocess") else d.preprocess
        ),
        output=msg.geojson or d.output,
    )


def options_to_proto(options: ClusterOptions) -> clustering_pb2.ClusterOptions:
    """The message for ``options``; :func:`options_from_proto` gives ``options`` back.

    ``random_state=None`` is sent as unset, which the server reads as its default (0).

    Raises
    ------
    InvalidInputError
        Options the API cannot carry: a callable metric, ``max_iter`` other than its default, or
        ``preprocess.center_pieces``.
    """
    if callable(options.metric):
        raise InvalidInputError(
            "a callable metric cannot be sent to a server; use one of the named metrics "
            "(f1, accuracy, balanced_accuracy, mcc)"
        )
    if options.max_iter != _DEFAULTS.max_iter:
        raise InvalidInputError(
            f"max_iter={options.max_iter} cannot be sent to a server (the API has no such "
            f"field; the server uses {_DEFAULTS.max_iter}); cluster locally to change it"
        )
    pre = options.preprocess
    if pre.center_pieces:
        raise InvalidInputError(
            "preprocess.center_pieces cannot be sent to a server (the API has no such field); "
            "cluster locally to use it"
        )
    msg = clustering_pb2.ClusterOptions(
        method=options.method,
        positive_class=options.positive_class,
        multiclass=options.multiclass,
        suggest=options.suggest,
        metric=options.metric,
        stop=options.stop,
        constrained=options.constrained,
        max_depth=options.max_depth,
        min_cluster_size=options.min_cluster_size,
        geojson=options.output,
    )
    if options.random_state is not None:
        msg.random_state = options.random_state
    if pre == PAPER_PREPROCESS:
        msg.preprocess.paper = True
    elif pre != _DEFAULTS.preprocess:
        msg.preprocess.regress_nuisance = pre.regress_nuisance
        msg.preprocess.smooth_radius = pre.smooth_radius
        msg.preprocess.l2_normalize = pre.l2_normalize
        if pre.pca_components is not None:
            msg.preprocess.pca_components = pre.pca_components
    return msg
