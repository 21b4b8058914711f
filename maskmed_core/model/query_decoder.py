"""Decoupled head: Mask2Former-style query decoder over 3D multi-scale features.

Q learned object queries are shared by all classes. Each decoder layer does masked cross-attention to
one feature scale (round robin, lowest resolution first), self-attention among the queries, and an FFN.
Before the first layer and after every layer the queries predict class logits (Q, C+1; the last column
is "no object") and a mask embedding; a query's mask logits are the dot product of its embedding with
the per-voxel mask features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maskmed_core.model.config import HeadConfig
from maskmed_core.model.position import sine_position_encoding_3d


class _MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int):
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
        modules: list[nn.Module] = []
        for index in range(layers):
            modules.append(nn.Linear(dims[index], dims[index + 1]))
            if index < layers - 1:
                modules.append(nn.ReLU(inplace=True))
        super().__init__(*modules)


class QueryDecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> FFN, each with a residual and a post-LayerNorm."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        dim = config.hidden_dim
        self.cross_attn = nn.MultiheadAttention(dim, config.num_heads, dropout=config.dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, config.num_heads, dropout=config.dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.ReLU(inplace=True), nn.Dropout(config.dropout),
            nn.Linear(config.ffn_dim, dim),
        )
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """query (B, Q, E); memory (B, T, E); attention_mask (B*heads, Q, T) bool, True = not attended."""
        attended, _ = self.cross_attn(query + query_pos, memory + memory_pos, memory, attn_mask=attention_mask)
        query = self.norm_cross(query + attended)
        q = query + query_pos
        attended, _ = self.self_attn(q, q, query)
        query = self.norm_self(query + attended)
        return self.norm_ffn(query + self.ffn(query))


class QueryDecoder(nn.Module):
    """Predicts per-query class logits and mask embeddings from multi-scale features and mask features.

    forward(multi_scale, mask_features):
        multi_scale: ``num_feature_levels`` maps (B, hidden_dim, D_i, H_i, W_i), lowest resolution first.
        mask_features: (B, mask_dim, D_m, H_m, W_m).
    returns a list, one entry per prediction (before the first layer, then after each layer), of
        (class_logits (B, Q, C+1), mask_embed (B, Q, mask_dim)).
    """

    def __init__(self, config: HeadConfig, num_classes: int, mask_dim: int, num_feature_levels: int):
        super().__init__()
        self.config = config
        self.num_feature_levels = num_feature_levels
        dim = config.hidden_dim
        self.query_feat = nn.Embedding(config.num_queries, dim)
        self.query_pos = nn.Embedding(config.num_queries, dim)
        self.level_embed = nn.Embedding(num_feature_levels, dim)
        self.layers = nn.ModuleList(QueryDecoderLayer(config) for _ in range(config.num_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = _MLP(dim, dim, mask_dim, 3)

    def _predict(
        self, query: torch.Tensor, pooled_mask_features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Heads on the current queries, plus the attention mask for the next layer's scale."""
        normed = self.decoder_norm(query)
        class_logits = self.class_embed(normed)
        mask_embed = self.mask_embed(normed)
        attention_mask = None
        if pooled_mask_features is not None:
            # Logits at the next scale: the embedding dotted with mask features averaged down to that scale
            # (the same as averaging the full-resolution logits, since the dot product is linear).
            logits = torch.einsum("bqe,bet->bqt", mask_embed, pooled_mask_features)
            attention_mask = (logits.sigmoid() < 0.5).detach()
            # A query whose mask is empty at this scale attends everywhere rather than nowhere.
            attention_mask[attention_mask.all(-1)] = False
            attention_mask = attention_mask.repeat_interleave(self.config.num_heads, dim=0)
        return class_logits, mask_embed, attention_mask

    def forward(
        self, multi_scale: list[torch.Tensor], mask_features: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if len(multi_scale) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature scales, got {len(multi_scale)}")
        batch = mask_features.shape[0]
        memories, memory_positions, pooled = [], [], []
        for level, feature in enumerate(multi_scale):
            shape = tuple(feature.shape[2:])
            memories.append(feature.flatten(2).transpose(1, 2))
            position = sine_position_encoding_3d(shape, feature.shape[1], feature.device, feature.dtype)
            memory_positions.append((position + self.level_embed.weight[level]).unsqueeze(0))
            pooled.append(F.adaptive_avg_pool3d(mask_features, shape).flatten(2))

        query = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        query_pos = self.query_pos.weight.unsqueeze(0).expand(batch, -1, -1)
        predictions = []
        class_logits, mask_embed, attention_mask = self._predict(query, pooled[0])
        predictions.append((class_logits, mask_embed))
        for index, layer in enumerate(self.layers):
            level = index % self.num_feature_levels
            query = layer(query, query_pos, memories[level], memory_positions[level], attention_mask)
            next_level = (index + 1) % self.num_feature_levels
            class_logits, mask_embed, attention_mask = self._predict(query, pooled[next_level])
            predictions.append((class_logits, mask_embed))
        return predictions
