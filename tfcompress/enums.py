"""The public enums. Every member may also be given as its string value ("spatial_svd")."""

from __future__ import annotations

import enum
from typing import Any, TypeVar

__all__ = ["CompressionScheme", "CostMetric", "Mode", "RankSelectScheme", "coerce_enum"]

E = TypeVar("E", bound=enum.Enum)


class _StrEnum(enum.StrEnum):
    def __str__(self) -> str:
        return self.value


class CompressionScheme(_StrEnum):
    """How layers are compressed.

    Example:
        >>> CompressionScheme("spatial_svd") is CompressionScheme.spatial_svd
        True
    """

    weight_svd = "weight_svd"
    spatial_svd = "spatial_svd"
    channel_pruning = "channel_pruning"
    tucker = "tucker"
    auto = "auto"


class CostMetric(_StrEnum):
    """What a compression ratio measures: multiply-accumulates, parameters, or measured latency.

    Example:
        >>> CostMetric("mac").value
        'mac'
    """

    mac = "mac"
    memory = "memory"
    latency = "latency"


class Mode(_StrEnum):
    """Automatic (searched) or manual (user-given) per-layer ratios.

    Example:
        >>> Mode.auto == "auto"
        True
    """

    auto = "auto"
    manual = "manual"


class RankSelectScheme(_StrEnum):
    """Rank selection algorithm in auto mode: greedy per-layer search or TAR.

    Example:
        >>> RankSelectScheme("tar")
        <RankSelectScheme.tar: 'tar'>
    """

    greedy = "greedy"
    tar = "tar"


def coerce_enum(value: Any, enum_type: type[E], argument: str) -> E:
    """Turn ``value`` (a member or its string) into a member of ``enum_type``, or raise a clear error.

    Example:
        >>> coerce_enum("mac", CostMetric, "cost_metric")
        <CostMetric.mac: 'mac'>
    """
    if isinstance(value, enum_type):
        return value
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str):
        try:
            return enum_type(value.lower())
        except ValueError:
            pass
    choices = ", ".join(repr(m.value) for m in enum_type)
    raise ValueError(f"`{argument}` must be one of {choices} (or the {enum_type.__name__} member), got {value!r}.")
