"""The MaskMed network, its configuration, semantic inference and training criterion."""

from maskmed_core.model.config import ModelConfig, preset
from maskmed_core.model.maskmed import MaskMed, count_parameters
from maskmed_core.model.semantic import (
    labels_from_probabilities,
    query_confidence,
    semantic_probabilities_from_queries,
)

__all__ = [
    "MaskMed",
    "ModelConfig",
    "count_parameters",
    "labels_from_probabilities",
    "preset",
    "query_confidence",
    "semantic_probabilities_from_queries",
]
