"""Full-Scale Aware Deformable Transformer.

The tokens of the lowest-resolution encoder stages are the queries; every encoder stage, full
resolution included, is a value level of a 3D multi-scale deformable attention. Attention is never
computed with full-resolution tokens as queries, so memory grows linearly with the patch volume: the
values are projected once per forward pass (shared by all layers) to a narrow ``num_heads *
value_head_dim`` width, and only the few low-resolution queries are updated layer by layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maskmed_core.model.blocks import Conv3d
from maskmed_core.model.config import TransformerConfig
from maskmed_core.model.position import sine_position_encoding_3d, token_centres
from maskmed_core.ops import ms_deform_attn3d


def _sphere_directions(count: int) -> torch.Tensor:
    """``count`` roughly even unit vectors (Fibonacci sphere), (count, 3) in (x, y, z)."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    polar = torch.acos(1 - 2 * index / count)
    azimuth = math.pi * (1 + 5**0.5) * index
    return torch.stack(
        (polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()), dim=-1
    ).float()


class DeformableAttentionLayer(nn.Module):
    """Query tokens attend to all value levels; then a feed-forward block. Post-norm, as Deformable DETR.

    Sampling offsets are in voxels of each value level: an offset of 1 moves one voxel at that level.
    """

    def __init__(self, config: TransformerConfig, num_levels: int):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_levels = num_levels
        self.num_points = config.num_points
        self.sampling_offsets = nn.Linear(config.d_model, config.num_heads * num_levels * config.num_points * 3)
        self.attention_weights = nn.Linear(config.d_model, config.num_heads * num_levels * config.num_points)
        self.output_proj = nn.Linear(config.num_heads * config.value_head_dim, config.d_model)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.ffn = nn.Sequential(
            nn.Linear(config.d_model, config.ffn_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_dim, config.d_model),
        )
        self.norm2 = nn.LayerNorm(config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # As Deformable DETR: start with every head looking in its own direction, point p at distance p + 1.
        nn.init.zeros_(self.sampling_offsets.weight)
        directions = _sphere_directions(self.num_heads)  # (M, 3)
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        bias = directions[:, None, None, :] * scale[None, None, :, None]
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 3)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """query, query_pos: (B, Lq, d_model); reference_points: (Lq, 3) in [0, 1], (x, y, z);
        value: (B, S, M, Dh); spatial_shapes (L, 3) (D, H, W). Returns (B, Lq, d_model)."""
        B, Lq, _ = query.shape
        q = query + query_pos
        offsets = self.sampling_offsets(q).view(B, Lq, self.num_heads, self.num_levels, self.num_points, 3)
        # (L, 3) sizes in (x, y, z) = (W, H, D) order: offsets in voxels -> normalised units.
        normaliser = spatial_shapes.flip(-1).to(offsets.dtype)
        locations = reference_points[None, :, None, None, None, :] + offsets / normaliser[None, None, None, :, None, :]
        weights = self.attention_weights(q).view(B, Lq, self.num_heads, self.num_levels * self.num_points)
        weights = weights.softmax(-1).view(B, Lq, self.num_heads, self.num_levels, self.num_points)
        attended = ms_deform_attn3d(value, spatial_shapes, level_start_index, locations, weights)
        query = self.norm1(query + self.dropout(self.output_proj(attended)))
        return self.norm2(query + self.dropout(self.ffn(query)))


class FullScaleDeformableTransformer(nn.Module):
    """Enhances the lowest-resolution encoder features with attention over all encoder scales.

    Input: encoder features, highest resolution first, (B, C_i, D_i, H_i, W_i). Output: the same list
    where each of the ``num_query_levels`` lowest-resolution maps has the transformer's update added
    (residual, through a 1x1x1 projection back to C_i channels); the others are returned unchanged.
    """

    def __init__(self, config: TransformerConfig, encoder_channels: list[int]):
        super().__init__()
        self.config = config
        num_levels = len(encoder_channels)
        value_dim = config.num_heads * config.value_head_dim
        self.num_levels = num_levels
        self.query_levels = list(range(num_levels - config.num_query_levels, num_levels))
        self.value_proj = nn.ModuleList(Conv3d(c, value_dim, 1) for c in encoder_channels)
        self.value_level_embed = nn.Parameter(torch.zeros(num_levels, value_dim))
        self.fused_value_projection = True  # see _values
        self.query_proj = nn.ModuleList(
            nn.Sequential(Conv3d(encoder_channels[i], config.d_model, 1), nn.GroupNorm(8, config.d_model))
            for i in self.query_levels
        )
        self.query_level_embed = nn.Parameter(torch.zeros(len(self.query_levels), config.d_model))
        self.layers = nn.ModuleList(DeformableAttentionLayer(config, num_levels) for _ in range(config.num_layers))
        self.output_proj = nn.ModuleList(Conv3d(config.d_model, encoder_channels[i], 1) for i in self.query_levels)
        nn.init.normal_(self.value_level_embed, std=0.02)
        nn.init.normal_(self.query_level_embed, std=0.02)
        for proj in self.output_proj:
            # The transformer starts close to an identity on the encoder path (small, not zero, so that its
            # layers get gradients from the first step).
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)

    def _values(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, S, M, Dh): every level projected, level-embedded and flattened in (d, h, w) order.

        The 1x1x1 projection is a matrix product over channels. Done as one on channels-last tokens, with the level
        embedding folded into the bias, it is the same function as the Conv3d followed by the embedding addition,
        several times faster on CPU at full resolution, where oneDNN's 1x1x1 convolution backward was the largest
        single cost of a training step; its output is already in the (B, S, value_dim) layout the op wants.
        ``fused_value_projection = False`` is the reference step (``--reference-step``; the training benchmark
        compares both).
        """
        flat = []
        for level, feature in enumerate(features):
            projection = self.value_proj[level]
            embed = self.value_level_embed[level]
            if self.fused_value_projection:
                tokens = feature.flatten(2).transpose(1, 2)  # (B, S_l, C_l)
                weight = projection.weight.flatten(1)  # (value_dim, C_l)
                bias = projection.bias + embed if projection.bias is not None else embed
                flat.append(F.linear(tokens, weight.to(tokens.dtype), bias.to(tokens.dtype)))
            else:
                projected = projection(feature)
                projected = projected + embed.view(1, -1, 1, 1, 1).to(projected.dtype)
                flat.append(projected.flatten(2).transpose(1, 2))  # (B, S_l, value_dim)
        value = torch.cat(flat, dim=1)
        return value.view(value.shape[0], value.shape[1], self.config.num_heads, self.config.value_head_dim)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(features)}")
        device = features[0].device
        spatial_shapes = torch.tensor([f.shape[2:] for f in features], dtype=torch.int64, device=device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        value = self._values(features)

        queries, positions, references, query_shapes = [], [], [], []
        for slot, level in enumerate(self.query_levels):
            tokens = self.query_proj[slot](features[level])  # (B, d_model, D, H, W)
            shape = tuple(tokens.shape[2:])
            query_shapes.append(shape)
            queries.append(tokens.flatten(2).transpose(1, 2))
            position = sine_position_encoding_3d(shape, self.config.d_model, device, tokens.dtype)
            positions.append(position + self.query_level_embed[slot].to(tokens.dtype))
            references.append(token_centres(shape, device))
        query = torch.cat(queries, dim=1)
        query_pos = torch.cat(positions, dim=0).unsqueeze(0)
        reference_points = torch.cat(references, dim=0).to(query.dtype)
        for layer in self.layers:
            query = layer(query, query_pos, reference_points, value, spatial_shapes, level_start_index)

        outputs = list(features)
        for slot, (level, tokens) in enumerate(
            zip(self.query_levels, query.split([math.prod(s) for s in query_shapes], dim=1), strict=True)
        ):
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *query_shapes[slot])
            outputs[level] = F.leaky_relu(features[level] + self.output_proj[slot](grid), 0.01)
        return outputs
