"""The two heads on the pixel decoder, each a type with one contract, chosen once from ``config.head.kind``.

    DecoupledHead  MaskMed: shared object queries, each with class logits (C+1, last: no object) and a mask
    ConvHead       the point-wise baseline (nnU-Net style): one 1x1x1 conv per decoder stage, C+1 logits per voxel
                   (channel 0: background)

A head builds its layers; ``MaskMed`` registers them under the names they have always had in model files
(``mask_proj``, ``scale_proj``, ``query_decoder``; ``seg_heads``), so a head is a strategy object holding
references to modules of the network, not a module of its own, and the state-dict keys stay as they were.
Callers ask the head what differs (its outputs, per-class probabilities, criterion, the rows of its class layer,
its queries) instead of testing the kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from maskmed_core.model.blocks import Conv3d
from maskmed_core.model.config import HEAD_KINDS, ModelConfig
from maskmed_core.model.criterion import DiceCELoss, SetCriterion
from maskmed_core.model.query_decoder import QueryDecoder
from maskmed_core.model.semantic import semantic_probabilities_from_queries

Outputs = dict[str, object]


class Head(ABC):
    """What differs between the heads. ``layers`` maps attribute names of ``MaskMed`` to the modules this head
    built (registered there, in this order, so the random initialisation and the state-dict keys are as before)."""

    kind: ClassVar[str]
    # Class layer: rows ``class_row_offset .. class_row_offset + C - 1`` are the classes, ``extra_row`` is the one
    # row that is no class (decoupled: the last, "no object"; conv: the first, background).
    class_row_offset: ClassVar[int]
    extra_row: ClassVar[int]
    # True when the head's queries are class-agnostic slots (a query's identity is not kept by a mirror, and a free
    # query can seed a new class's row); False when query i is class i.
    shared_queries: ClassVar[bool]

    def __init__(self, config: ModelConfig):
        self.config = config
        self.layers: dict[str, nn.Module] = {}

    @staticmethod
    @abstractmethod
    def pixel_decoder_stop_level(config: ModelConfig) -> int:
        """The highest-resolution stage the pixel decoder must produce for this head (0: full resolution)."""

    @staticmethod
    @abstractmethod
    def build_criterion(config: ModelConfig, logits_first: bool = True, mask_loss: str = "points") -> nn.Module:
        """The training loss for this head's outputs (``logits_first``, ``mask_loss``: see ``SetCriterion``)."""

    @abstractmethod
    def forward(self, decoded: list[torch.Tensor], stop_level: int) -> Outputs:
        """The head's outputs from the pixel decoder's (highest resolution first, starting at ``stop_level``)."""

    @abstractmethod
    def class_probabilities(self, outputs: Outputs, query_threshold: float = 0.0) -> torch.Tensor:
        """Per-class foreground probabilities at input resolution, (B, C, D, H, W)."""

    @abstractmethod
    def query_outputs(self, outputs: Outputs, patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi (B, Q, C+1) class probabilities per query, masks (B, Q, *patch) in [0, 1]) in float32, for
        stitching patches (``inference.sliding_window``)."""

    @property
    @abstractmethod
    def num_queries(self) -> int:
        """Q of ``query_outputs``."""

    @property
    @abstractmethod
    def class_row_prefixes(self) -> tuple[str, ...]:
        """State-dict key prefixes of the weights whose first dimension is the class rows."""

    @abstractmethod
    def class_row_layers(self) -> list[nn.Module]:
        """The layers that hold class rows (their parameters' first dimension)."""


class DecoupledHead(Head):
    """Object queries (``QueryDecoder``) on multi-scale features, masks from a per-voxel mask-feature map.

    Outputs: "pred_logits" (B, Q, C+1) class logits of the last decoder layer (last column: no object),
    "pred_mask_embed" (B, Q, E) mask embeddings of the last layer, "mask_features" (B, E, D_m, H_m, W_m) per-voxel
    mask features (at stage ``mask_output_level``'s resolution, see ``PixelDecoderConfig``), "aux_outputs" a list
    of {"pred_logits", "pred_mask_embed"} of the earlier layers (deep supervision); with refined masks also
    "coarse_mask_features" (B, E, *stage mask_level), the features before refinement.
    """

    kind = "decoupled"
    class_row_offset = 0
    extra_row = -1
    shared_queries = True

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        channels = config.encoder.features
        pixel = config.pixel_decoder
        self.mask_proj = Conv3d(channels[pixel.mask_level], pixel.mask_dim, 1)
        # Feature scales for the query decoder: the lowest-resolution decoder outputs, lowest first.
        self.feature_levels = list(range(len(channels) - 1, len(channels) - 1 - pixel.num_feature_levels, -1))
        self.scale_proj = nn.ModuleList(Conv3d(channels[i], config.head.hidden_dim, 1) for i in self.feature_levels)
        self.query_decoder = QueryDecoder(config.head, config.num_classes, pixel.mask_dim, pixel.num_feature_levels)
        self.layers = {"mask_proj": self.mask_proj, "scale_proj": self.scale_proj, "query_decoder": self.query_decoder}
        # Entry i refines with stage mask_level - 1 - i. Zero weights: the refinement starts as a no-op.
        self.mask_refine_proj = nn.ModuleList(
            Conv3d(channels[level], pixel.mask_dim, 1)
            for level in range(pixel.mask_level - 1, pixel.mask_output_level - 1, -1)
        )
        for projection in self.mask_refine_proj:
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)
        if pixel.mask_refine_levels:  # registered only when there is one, so older models' keys stay as they were
            self.layers["mask_refine_proj"] = self.mask_refine_proj

    @staticmethod
    def pixel_decoder_stop_level(config: ModelConfig) -> int:
        return config.pixel_decoder.mask_output_level

    @staticmethod
    def build_criterion(config: ModelConfig, logits_first: bool = True, mask_loss: str = "points") -> nn.Module:
        return SetCriterion(config.num_classes, config.loss, logits_first, mask_loss)

    def forward(self, decoded: list[torch.Tensor], stop_level: int) -> Outputs:
        mask_level = self.config.pixel_decoder.mask_level
        coarse_mask_features = self.mask_proj(decoded[mask_level - stop_level])
        scales = [proj(decoded[level - stop_level])
                  for proj, level in zip(self.scale_proj, self.feature_levels, strict=True)]
        # The query decoder's attention masks pool the mask_level features; the masks use the refined ones.
        predictions = self.query_decoder(scales, coarse_mask_features)
        mask_features = self._refined(coarse_mask_features, decoded, stop_level)
        class_logits, mask_embed = predictions[-1]
        outputs: Outputs = {
            "pred_logits": class_logits,
            "pred_mask_embed": mask_embed,
            "mask_features": mask_features,
            "aux_outputs": [{"pred_logits": c, "pred_mask_embed": m} for c, m in predictions[:-1]],
        }
        if self.config.pixel_decoder.mask_refine_levels:  # for the criterion's grid losses (SetCriterion)
            outputs["coarse_mask_features"] = coarse_mask_features
        return outputs

    def _refined(self, mask_features: torch.Tensor, decoded: list[torch.Tensor], stop_level: int) -> torch.Tensor:
        """(B, E, *stage) mask features at ``mask_output_level``: ``mask_features`` (B, E, *stage mask_level)
        upsampled trilinearly one stage at a time, each finer stage's decoder output added through its projection."""
        for index, projection in enumerate(self.mask_refine_proj):
            finer = decoded[self.config.pixel_decoder.mask_level - 1 - index - stop_level]
            upsampled = F.interpolate(mask_features, size=finer.shape[2:], mode="trilinear", align_corners=False)
            mask_features = upsampled + projection(finer)
        return mask_features

    @staticmethod
    def mask_logits(outputs: Outputs, size: tuple[int, int, int] | None = None) -> torch.Tensor:
        """(B, Q, D_m, H_m, W_m) mask logits of the last layer, trilinearly resized to ``size`` if given."""
        logits = torch.einsum("bqe,bedhw->bqdhw", outputs["pred_mask_embed"], outputs["mask_features"])
        if size is not None and tuple(logits.shape[2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
        return logits

    def class_probabilities(self, outputs: Outputs, query_threshold: float = 0.0) -> torch.Tensor:
        """In [0, Q]: a sum over queries (see ``semantic_probabilities_from_queries``)."""
        mask_features: torch.Tensor = outputs["mask_features"]  # type: ignore[assignment]  # Outputs values are object
        size = self._input_size(mask_features)
        return semantic_probabilities_from_queries(
            outputs["pred_logits"], self.mask_logits(outputs, size), query_threshold  # type: ignore[arg-type]
        )

    def query_outputs(self, outputs: Outputs, patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        pi = outputs["pred_logits"].float().softmax(-1)  # type: ignore[attr-defined]
        return pi, self.mask_logits(outputs, patch).float().sigmoid()

    @property
    def num_queries(self) -> int:
        return self.config.head.num_queries

    @property
    def class_row_prefixes(self) -> tuple[str, ...]:
        return ("query_decoder.class_embed.",)

    def class_row_layers(self) -> list[nn.Module]:
        return [self.query_decoder.class_embed]

    def _input_size(self, mask_features: torch.Tensor) -> tuple[int, int, int]:
        level = self.config.pixel_decoder.mask_output_level
        factor = [1, 1, 1]
        for stride in self.config.encoder.strides[1 : level + 1]:
            factor = [f * s for f, s in zip(factor, stride, strict=True)]
        return tuple(n * f for n, f in zip(mask_features.shape[2:], factor, strict=True))  # type: ignore[return-value]


class ConvHead(Head):
    """One 1x1x1 conv per decoder stage above the bottleneck; index 0 is the full-resolution output.

    Outputs: "seg_logits" (B, C+1, D, H, W) (channel 0: background), "aux_seg_logits" a list of the
    lower-resolution logits of the decoder stages (deep supervision).
    """

    kind = "conv"
    class_row_offset = 1
    extra_row = 0
    shared_queries = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        channels = config.encoder.features
        self.seg_heads = nn.ModuleList(
            Conv3d(channels[i], config.num_classes + 1, 1) for i in range(len(channels) - 1)
        )
        self.layers = {"seg_heads": self.seg_heads}

    @staticmethod
    def pixel_decoder_stop_level(config: ModelConfig) -> int:
        return 0

    @staticmethod
    def build_criterion(config: ModelConfig, logits_first: bool = True, mask_loss: str = "points") -> nn.Module:
        return DiceCELoss(config.num_classes, config.loss.deep_supervision)  # Dice+CE on every voxel anyway

    def forward(self, decoded: list[torch.Tensor], stop_level: int) -> Outputs:
        logits = [head(x) for head, x in zip(self.seg_heads, decoded, strict=False)]
        return {"seg_logits": logits[0], "aux_seg_logits": logits[1:]}

    def class_probabilities(self, outputs: Outputs, query_threshold: float = 0.0) -> torch.Tensor:
        """In [0, 1]: the softmax without its background channel (``query_threshold`` has no queries to act on)."""
        return outputs["seg_logits"].softmax(1)[:, 1:]  # type: ignore[attr-defined]  # Outputs values are object

    def query_outputs(self, outputs: Outputs, patch: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The softmax as queries: query i is class i with certainty, its mask the class's probability."""
        probabilities = self.class_probabilities({"seg_logits": outputs["seg_logits"].float()})  # type: ignore[attr-defined]
        b, c = probabilities.shape[:2]
        pi = torch.zeros(b, c, c + 1, device=probabilities.device)
        pi[:, torch.arange(c), torch.arange(c)] = 1.0
        return pi, probabilities

    @property
    def num_queries(self) -> int:
        return self.config.num_classes

    @property
    def class_row_prefixes(self) -> tuple[str, ...]:
        return ("seg_heads.",)

    def class_row_layers(self) -> list[nn.Module]:
        return list(self.seg_heads)


HEADS: dict[str, type[Head]] = {head.kind: head for head in (DecoupledHead, ConvHead)}
assert tuple(HEADS) == HEAD_KINDS, "model.config.HEAD_KINDS names the head classes, in this order"


def head_type(config: ModelConfig) -> type[Head]:
    """The head class of ``config.head.kind`` (``ModelConfig`` has already refused an unknown kind)."""
    return HEADS[config.head.kind]


def build_criterion(config: ModelConfig, logits_first: bool = True, mask_loss: str = "points") -> nn.Module:
    """The criterion that matches the head in ``config`` (``logits_first``, ``mask_loss``: see ``SetCriterion``)."""
    return head_type(config).build_criterion(config, logits_first, mask_loss)
