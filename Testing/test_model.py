"""MaskMed network: shapes, gradients, configuration, thresholds and the criterion's matching."""

from __future__ import annotations

import warnings

import pytest
import torch

from maskmed_core.model import (
    MaskMed,
    ModelConfig,
    count_parameters,
    labels_from_probabilities,
    preset,
    query_confidence,
    semantic_probabilities_from_queries,
)
from maskmed_core.model.criterion import targets_from_label_map
from maskmed_core.model.heads import build_criterion
from maskmed_core.model.matcher import hungarian_match
from maskmed_core.plans.stages import plan_stages

warnings.filterwarnings("ignore", message="maskmed: the compiled", category=RuntimeWarning)


def tiny_config(kind: str = "decoupled", transformer: bool = True, patch=(16, 32, 32), spacing=(3.0, 0.8, 0.8)):
    """A small-preset-shaped network with fewer channels, strides planned for a thick-slice CT."""
    config = preset("small", num_classes=3, patch_size=patch, spacing=spacing)
    config.encoder.features = (8, 16, 16, 24, 32)
    config.encoder.blocks_per_stage = (1, 1, 1, 1, 1)
    config.transformer.d_model = 24
    config.transformer.ffn_dim = 32
    config.transformer.num_layers = 2
    config.transformer.enabled = transformer
    config.head.kind = kind
    config.head.hidden_dim = 16
    config.head.num_heads = 2
    config.head.ffn_dim = 32
    config.head.num_queries = 6
    config.pixel_decoder.mask_dim = 8
    config.loss.num_points = 64
    return config


def test_plan_stages_pools_in_plane_first_for_thick_slices():
    strides, kernels = plan_stages((16, 128, 128), (3.0, 0.8, 0.8), 5)
    assert strides[0] == (1, 1, 1)
    assert strides[1] == (1, 2, 2)  # in plane 0.8 -> 1.6 mm; 3 mm slices are kept
    assert strides[2] == (2, 2, 2)  # 3.0 vs 1.6 mm: within a factor 2, pooled together
    assert strides[4] == (1, 2, 2)  # 16 slices / 4 = 4 left: too few to pool again
    assert kernels[0] == (1, 3, 3)  # 3 mm slices are not mixed by the first convs
    assert kernels[1] == (3, 3, 3)


def test_config_json_round_trip():
    config = preset("base", num_classes=15, patch_size=(64, 128, 128), spacing=(2.0, 0.8, 0.8))
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    with pytest.raises(ValueError, match="ModelConfig: unknown fields: colour"):
        ModelConfig.from_dict({"num_classes": 2, "colour": 1})


def test_config_rejects_inconsistent_encoder():
    with pytest.raises(ValueError, match="one entry per stage"):
        config = preset("small", 2)
        config.encoder.strides = config.encoder.strides[:-1]
        config.validate()


def test_small_preset_is_under_ten_million_parameters():
    assert count_parameters(MaskMed(preset("small", num_classes=15))) < 10_000_000


@pytest.mark.parametrize("kind,transformer", [("decoupled", True), ("decoupled", False), ("conv", True)])
def test_output_shapes_on_anisotropic_patch(kind, transformer):
    config = tiny_config(kind, transformer)
    model = MaskMed(config)
    image = torch.randn(2, 1, 16, 32, 32)
    outputs = model(image)
    if kind == "decoupled":
        q, c = config.head.num_queries, config.num_classes
        assert outputs["pred_logits"].shape == (2, q, c + 1)
        assert outputs["pred_mask_embed"].shape == (2, q, config.pixel_decoder.mask_dim)
        # mask_level 1: the stage-1 stride is (1, 2, 2) for 3 x 0.8 x 0.8 mm.
        assert outputs["mask_features"].shape == (2, config.pixel_decoder.mask_dim, 16, 16, 16)
        assert len(outputs["aux_outputs"]) == config.head.num_layers
        assert model.head.mask_logits(outputs, (16, 32, 32)).shape == (2, q, 16, 32, 32)
    else:
        assert outputs["seg_logits"].shape == (2, config.num_classes + 1, 16, 32, 32)
    probabilities = model.head.class_probabilities(outputs)
    assert probabilities.shape == (2, config.num_classes, 16, 32, 32)


def test_refined_masks_come_out_at_the_finer_stage_and_every_part_learns():
    config = tiny_config()
    config.pixel_decoder.mask_refine_levels = 1
    model = MaskMed(config)
    image = torch.randn(2, 1, 16, 32, 32)
    outputs = model(image)
    # mask_level 1 refined by stage 0: the patch's own resolution.
    assert outputs["mask_features"].shape == (2, config.pixel_decoder.mask_dim, 16, 32, 32)
    assert model.head.class_probabilities(outputs).shape == (2, config.num_classes, 16, 32, 32)
    assert config.estimated_parameters() == count_parameters(model)
    labels = torch.zeros(2, 16, 32, 32, dtype=torch.int64)
    labels[:, 4:12, 8:20, 8:20] = 1
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = build_criterion(config, mask_loss="balanced")
    for _ in range(2):  # the zero-initialised refinement passes no gradient to stage 0 on the first step
        optimiser.zero_grad()
        criterion(model(image), labels)["loss"].backward()
        optimiser.step()
    refinement = {n: p for n, p in model.named_parameters()
                  if n.startswith(("mask_refine_proj.", "pixel_decoder.blocks.0."))}
    assert refinement
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in refinement.values())


@pytest.mark.parametrize("levels", [-1, 2])
def test_masks_cannot_be_refined_past_full_resolution(levels):
    config = tiny_config()
    config.pixel_decoder.mask_refine_levels = levels
    with pytest.raises(ValueError, match="mask_refine_levels"):
        config.validate()


def test_a_model_file_from_before_mask_refinement_reads_as_unrefined_and_an_unrefined_one_is_written_so():
    data = tiny_config().to_dict()
    assert "mask_refine_levels" not in data["pixel_decoder"]  # earlier versions refuse a field they do not know
    assert ModelConfig.from_dict(data).pixel_decoder.mask_refine_levels == 0
    refined = tiny_config()
    refined.pixel_decoder.mask_refine_levels = 1
    assert ModelConfig.from_json(refined.to_json()) == refined


def test_input_not_divisible_by_stride_is_refused():
    model = MaskMed(tiny_config())
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 1, 16, 30, 32))


def test_transformer_queries_are_only_low_resolution_tokens():
    config = tiny_config()
    model = MaskMed(config)
    seen = []
    layer = model.transformer.layers[0]
    layer.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[1]))
    model(torch.randn(1, 1, 16, 32, 32))
    features = model.encoder(torch.randn(1, 1, 16, 32, 32))
    lowest_two = sum(f.shape[2:].numel() for f in features[-2:])
    assert seen == [lowest_two]
    assert lowest_two < features[0].shape[2:].numel() // 8


@pytest.mark.parametrize("kind", ["decoupled", "conv"])
def test_every_parameter_gets_a_gradient(kind):
    torch.manual_seed(0)
    config = tiny_config(kind)
    model = MaskMed(config)
    criterion = build_criterion(config)
    image = torch.randn(2, 1, 16, 32, 32)
    labels = torch.zeros(2, 16, 32, 32, dtype=torch.int64)
    labels[:, 4:12, 8:20, 8:20] = 1
    labels[0, 2:8, 20:30, 4:14] = 2
    labels[1, 8:14, 2:10, 20:30] = 3
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    # Two steps: zero-initialised layers (as in Deformable DETR) pass no gradient on the very first one.
    for _ in range(2):
        optimiser.zero_grad()
        losses = criterion(model(image), labels)
        assert torch.isfinite(losses["loss"])
        losses["loss"].backward()
        optimiser.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_semantic_probabilities_and_thresholds():
    # Two queries, two classes; query 0 is "class 0" with mask everywhere, query 1 mostly no-object.
    class_logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    mask_logits = torch.stack((torch.full((1, 1, 2), 5.0), torch.full((1, 1, 2), 5.0)))[None]
    confidence, index = query_confidence(class_logits)
    assert index.tolist() == [[0, 0]]
    p_all = semantic_probabilities_from_queries(class_logits, mask_logits, query_threshold=0.0)
    p_kept = semantic_probabilities_from_queries(class_logits, mask_logits, query_threshold=0.5)
    expected_kept = class_logits.softmax(-1)[0, 0, 0] * torch.sigmoid(torch.tensor(5.0))
    assert confidence[0, 0] > 0.5 > confidence[0, 1]
    torch.testing.assert_close(p_kept[0, 0], torch.full((1, 1, 2), expected_kept.item()))
    assert torch.all(p_all[0, 0] > p_kept[0, 0])
    labels_low = labels_from_probabilities(p_kept, class_threshold=0.5)
    labels_high = labels_from_probabilities(p_kept, class_threshold=0.99)
    assert labels_low.tolist() == [[[[1, 1]]]] and labels_high.tolist() == [[[[0, 0]]]]


def test_targets_from_label_map():
    labels = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    labels[0, 0, 0, 0] = 3
    labels[0, 1, 1, 1] = 1
    (classes, masks), = targets_from_label_map(labels)
    assert classes.tolist() == [0, 2]
    assert masks.shape == (2, 2, 2, 2) and masks.sum().item() == 2


def test_hungarian_match_finds_the_right_queries():
    # Mask features: one channel per region; query q's embedding selects region perm[q].
    torch.manual_seed(0)
    regions = torch.zeros(3, 8, 8, 8)
    regions[0, :4] = 1
    regions[1, 4:, :4] = 1
    regions[2, 4:, 4:] = 1
    features = regions * 2 - 1  # (E=3, D, H, W)
    mask_embed = torch.zeros(4, 3)
    mask_embed[0, 2] = mask_embed[1, 0] = mask_embed[3, 1] = 10.0
    mask_embed[2] = -10.0
    class_logits = torch.full((4, 4), -5.0)
    class_logits[0, 2] = class_logits[1, 0] = class_logits[3, 1] = 5.0
    class_logits[2, 3] = 5.0
    target_labels = torch.tensor([0, 1, 2])
    rows, cols = hungarian_match(class_logits, mask_embed, features, target_labels, regions, 512, 2.0, 5.0, 5.0)
    assignment = dict(zip(cols.tolist(), rows.tolist(), strict=True))
    assert assignment == {0: 1, 1: 3, 2: 0}
    # Forbidding query 1 for target 0 moves that target to the only free query (2), whatever its cost.
    forbidden = torch.zeros(4, 3, dtype=torch.bool)
    forbidden[1, 0] = True
    rows, cols = hungarian_match(class_logits, mask_embed, features, target_labels, regions, 512, 2.0, 5.0, 5.0,
                                 forbidden=forbidden)
    assert dict(zip(cols.tolist(), rows.tolist(), strict=True)) == {0: 2, 1: 3, 2: 0}


def test_reserved_queries_are_never_matched_to_a_new_class(monkeypatch):
    import maskmed_core.model.criterion as criterion_module

    config = tiny_config(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0))  # 3 classes, 6 queries
    criterion = build_criterion(config)
    held = torch.ones(config.head.num_queries, dtype=torch.bool)
    held[-1] = False  # every query but the last holds one of the starting model's classes
    criterion.reserve_queries(held, [2])  # class 3 (index 2) is new
    matched: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording_match(*args, **kwargs):
        rows, cols = hungarian_match(*args, **kwargs)
        matched.append((rows, args[3][cols]))  # (queries, their target classes)
        return rows, cols

    monkeypatch.setattr(criterion_module, "hungarian_match", recording_match)
    torch.manual_seed(0)
    labels = torch.zeros(1, 16, 32, 32, dtype=torch.long)
    labels[:, 2:8, 4:20, 4:12] = 1
    labels[:, 6:14, 10:28, 16:30] = 3
    criterion(MaskMed(config)(torch.randn(1, 1, 16, 32, 32)), labels)
    assert len(matched) >= 2  # the final and the auxiliary (deep supervision) outputs
    assert all(rows[classes == 2].tolist() == [len(held) - 1] for rows, classes in matched)


def test_fast_training_step_computes_the_same_loss_and_gradients():
    """The fused value projection and logits-first point sampling are rewrites of the same function."""
    torch.manual_seed(0)
    config = tiny_config(patch=(16, 32, 32), spacing=(3.0, 3.0, 3.0))
    model = MaskMed(config).double()
    image = torch.randn(1, 1, 16, 32, 32, dtype=torch.float64)
    labels = torch.zeros(1, 16, 32, 32, dtype=torch.long)
    labels[:, 2:8, 4:20, 4:12] = 1
    labels[:, 6:14, 10:28, 16:30] = 2
    results = []
    for fast in (False, True):
        model.transformer.fused_value_projection = fast
        criterion = build_criterion(config, logits_first=fast)
        model.zero_grad()
        torch.manual_seed(1)  # the same sampled points in both runs
        loss = criterion(model(image), labels)["loss"]
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), grads))
    (slow_loss, slow_grads), (fast_loss, fast_grads) = results
    torch.testing.assert_close(fast_loss, slow_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_grads, slow_grads, rtol=1e-8, atol=1e-10)
