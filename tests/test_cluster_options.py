"""ClusterOptions: the defaults, their validation, and the one object through every layer
(engine overrides, the command-line flags, the API message both ways)."""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import Any, get_type_hints

import numpy as np
import pytest

from histosic import config
from histosic.cluster import (
    DEFAULT_METHOD,
    PAPER_PREPROCESS,
    ClusterOptions,
    Preprocess,
    seeded_clustering,
)
from histosic.cluster.options import MAX_SUGGEST, ClusterOverrides
from histosic.errors import InvalidInputError


def test_defaults_are_the_products() -> None:
    o = ClusterOptions()
    assert o.method == DEFAULT_METHOD
    assert o.positive_class == config.DEFAULT_POSITIVE_CLASS
    assert o.output == config.DEFAULT_OUTPUT
    assert (o.random_state, o.stop, o.metric, o.max_depth, o.min_cluster_size) == (
        0,
        "drop",
        "f1",
        8,
        2,
    )
    assert (o.suggest, o.max_iter, o.multiclass, o.constrained) == (0, 100, False, False)
    assert o.preprocess == Preprocess()


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "method": ({"method": "magic"}, "unknown method 'magic'"),
    "metric": ({"metric": "auc"}, "unknown metric 'auc'"),
    "stop": ({"stop": "never"}, "stop must be 'drop' or 'strict'"),
    "output": ({"output": "pdf"}, "output (geojson in the API) must be one of"),
    "positive class": ({"positive_class": " "}, "positive_class is empty"),
    "negative suggest": ({"suggest": -1}, "suggest must be in [0, 10000], got -1"),
    "too many suggestions": ({"suggest": MAX_SUGGEST + 1}, "suggest must be in [0, 10000]"),
    "max depth": ({"max_depth": -1}, "max_depth must be >= 0"),
    "min cluster size": ({"min_cluster_size": 0}, "min_cluster_size must be >= 1"),
    "max iter": ({"max_iter": 0}, "max_iter must be >= 1"),
    "random state": ({"random_state": -3}, "random_state must be in [0, 2**32)"),
    "smooth radius": (
        {"preprocess": Preprocess(smooth_radius=17)},
        "smooth_radius must be in [0, 16], got 17",
    ),
    "pca": ({"preprocess": Preprocess(pca_components=0)}, "pca_components must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_rejected_with_a_precise_message(case: str) -> None:
    kwargs, needle = BAD[case]
    with pytest.raises(InvalidInputError) as info:
        ClusterOptions(**kwargs)
    assert needle in str(info.value)
    with pytest.raises(InvalidInputError):  # replace() validates too
        replace(ClusterOptions(), **kwargs)


def test_callable_metric_and_none_output_are_allowed() -> None:
    ClusterOptions(metric=lambda t, p: 1.0, output="none", random_state=None)


def test_overrides_typed_dict_lists_every_field() -> None:
    hints = get_type_hints(ClusterOverrides)
    assert set(hints) == {f.name for f in fields(ClusterOptions)}


def test_engine_overrides_replace_option_fields() -> None:
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (50, 4)), rng.normal(4, 1, (50, 4))]
    s = np.full(100, -1)
    s[:3], s[50:53] = 0, 1
    base = ClusterOptions(method="sic", preprocess=PAPER_PREPROCESS)
    a = seeded_clustering(X, s, base, stop="strict", max_depth=0)
    b = seeded_clustering(X, s, replace(base, stop="strict", max_depth=0))
    assert a.method == b.method == "sic"
    assert np.array_equal(a.labels, b.labels) and len(a.history) == len(b.history) == 1
    assert seeded_clustering(X, s).method == DEFAULT_METHOD


# --------------------------------------------------------------------------------------------
# The command line: defaults come from ClusterOptions


def _parse(command: str, *argv: str) -> argparse.Namespace:
    from histosic.cli import build_parser

    required = ["--seeds", "s.geojson", "--out", "o.geojson"] if command == "cluster" else []
    required += ["--store", "store"] if command == "batch" else []
    return build_parser().parse_args([command, "x", *required, *argv])


@pytest.mark.parametrize("command", ["cluster", "batch"])
def test_command_defaults_are_cluster_options_defaults(command: str) -> None:
    from histosic.commands._args import cluster_options

    assert cluster_options(_parse(command)) == ClusterOptions()


def test_cluster_flags_build_the_options() -> None:
    from histosic.commands._args import cluster_options

    args = _parse(
        "cluster",
        *("--positive", "Lesion", "--multiclass", "--method", "sic", "--raw-features"),
        *("--output", "regions", "--suggest", "4", "--random-state", "9"),
    )
    assert cluster_options(args) == ClusterOptions(
        method="sic",
        positive_class="Lesion",
        multiclass=True,
        suggest=4,
        random_state=9,
        preprocess=PAPER_PREPROCESS,
        output="regions",
    )
    with pytest.raises(InvalidInputError, match="unknown method 'magic'"):
        cluster_options(_parse("cluster", "--method", "magic"))


# --------------------------------------------------------------------------------------------
# The API message


ROUND_TRIP = [
    ClusterOptions(),
    ClusterOptions(method="sic", stop="strict", metric="mcc", constrained=True, max_depth=3),
    ClusterOptions(positive_class="Lesion", multiclass=True, suggest=7, output="none"),
    ClusterOptions(min_cluster_size=5, random_state=123, preprocess=PAPER_PREPROCESS),
    ClusterOptions(preprocess=Preprocess(smooth_radius=2, l2_normalize=True, pca_components=8)),
    ClusterOptions(preprocess=Preprocess(regress_nuisance=False)),
]


@pytest.mark.parametrize("options", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_proto_round_trip(options: ClusterOptions) -> None:
    from histosic.service.convert import options_from_proto, options_to_proto

    assert options_from_proto(options_to_proto(options)) == options


def test_empty_proto_fields_mean_defaults() -> None:
    from histosic.api.v1 import clustering_pb2
    from histosic.service.convert import options_from_proto

    assert options_from_proto(clustering_pb2.ClusterOptions()) == ClusterOptions()
    msg = clustering_pb2.ClusterOptions()
    msg.preprocess.smooth_radius = 0
    assert options_from_proto(msg).preprocess == Preprocess(smooth_radius=0)
    msg.preprocess.paper = True
    assert options_from_proto(msg).preprocess == PAPER_PREPROCESS


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (ClusterOptions(metric=lambda t, p: 0.0), "a callable metric cannot be sent"),
        (ClusterOptions(max_iter=5), "max_iter=5 cannot be sent"),
        (ClusterOptions(preprocess=Preprocess(center_pieces=True)), "center_pieces cannot be"),
    ],
)
def test_options_the_api_cannot_carry_are_refused(options: ClusterOptions, needle: str) -> None:
    from histosic.service.convert import options_to_proto

    with pytest.raises(InvalidInputError, match=needle):
        options_to_proto(options)
