"""Fine-tuning's class handling: name matching, distillation of the classes the data lacks, the imprinted class row of
a new class, and the sampler's share of patches for new classes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from factories import tiny_model

from maskmed_core.classes import AMOS15_CLASSES, SegmentClass
from maskmed_core.model import MaskMed
from maskmed_core.plans import Plans
from maskmed_core.training.cache_entries import PreprocessedCase
from maskmed_core.training.distillation import (
    distill_absent_classes,
    merge_teacher_labels,
    teacher_to_student_classes,
)
from maskmed_core.training.finetune import (
    adapt_state_dict,
    class_key,
    grown_weights,
    imprint_new_class_rows,
    patches_around_classes,
    plan_classes,
    queries_holding_classes,
)
from maskmed_core.training.sampling import PatchSampler


def test_class_names_match_across_case_spaces_and_underscores():
    assert class_key("  Left_Kidney ") == class_key("left kidney") == class_key("LEFT-KIDNEY")
    old = list(AMOS15_CLASSES[:3])
    plan = plan_classes(old, ["Left_Kidney"], [SegmentClass(1, "Left_Kidney", (1, 2, 3))], keep_absent=True)
    assert plan.source_index[0] == 2 and plan.classes[0].name == "left kidney"
    assert [c.name for c in plan.classes] == ["left kidney", "spleen", "right kidney"] and plan.frozen == [1, 2]


def test_two_data_classes_that_differ_only_in_case_or_spacing_are_refused():
    data = [SegmentClass(1, "Psoas", (1, 1, 1)), SegmentClass(2, "psoas ", (2, 2, 2))]
    with pytest.raises(ValueError, match="differ only"):
        plan_classes(list(AMOS15_CLASSES[:3]), ["Psoas", "psoas "], data, keep_absent=True)


def test_teacher_labels_fill_only_the_background_of_the_users_labels():
    labels = np.array([[[0, 1, 0, 0]]], dtype=np.uint8)  # class 1: the user's new structure
    teacher = np.array([[[2, 2, 3, 0]]], dtype=np.int64)  # teacher classes 2 and 3
    merged = merge_teacher_labels(labels, teacher, {2: 4, 3: 5})
    assert merged.tolist() == [[[4, 1, 5, 0]]]  # the user's voxel stays 1
    assert labels.tolist() == [[[0, 1, 0, 0]]]  # the input is not changed
    assert merge_teacher_labels(labels, teacher, {3: 5}).tolist() == [[[0, 1, 5, 0]]]  # unmapped teacher classes
    with pytest.raises(ValueError, match="shape"):
        merge_teacher_labels(labels, teacher[..., :2], {2: 4})


def test_teacher_to_student_maps_each_absent_class():
    # Student: [new structure, spleen (teacher 0), left kidney (teacher 2)]; the last two are absent from the data.
    assert teacher_to_student_classes([None, 0, 2], [1, 2]) == {1: 2, 3: 3}
    with pytest.raises(ValueError):
        teacher_to_student_classes([None, 0], [0])


def test_distillation_writes_the_teachers_prediction_into_each_real_case(monkeypatch):
    import maskmed_core.training.distillation as distillation

    image = np.zeros((8, 8, 8), dtype=np.float32)
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[0, 0, 0] = 1
    real = PreprocessedCase("real", image, labels, {1: np.array([[0, 0, 0]], dtype=np.int32)}, (3.0, 3.0, 3.0))
    label_only = PreprocessedCase("synthetic", None, labels, {}, (3.0, 3.0, 3.0))
    predicted = np.zeros((8, 8, 8), dtype=np.int64)
    predicted[:, :4] = 1  # the teacher's class 1 (say, the spleen) on half of the image, the user's voxel included
    monkeypatch.setattr(distillation, "predict_case_indices", lambda model, image, plans, device: predicted)
    plans = Plans(spacing=(3.0, 3.0, 3.0), patch_size=(8, 8, 8), overlap=0.5)
    taught = distill_absent_classes([real, label_only], tiny_model(3), plans, {1: 2}, 2, torch.device("cpu"))
    assert taught[1] is label_only
    assert taught[0].labels[0, 0, 0] == 1 and (taught[0].labels == 2).sum() == 8 * 4 * 8 - 1
    assert set(taught[0].foreground) == {1, 2}
    assert real.labels.sum() == 1  # the cached case is not changed


def test_a_new_class_row_is_imprinted_from_the_query_that_covers_it():
    old = tiny_model(num_classes=3, seed=1)
    plan = plan_classes(list(AMOS15_CLASSES[:3]), ["psoas"], [SegmentClass(1, "psoas", (1, 2, 3))], keep_absent=True)
    model = tiny_model(num_classes=4, seed=2)
    model.load_state_dict(adapt_state_dict(old.state_dict(), model, plan))
    rows_before = model.query_decoder.class_embed.weight.detach().clone()
    image = torch.randn(1, 1, 32, 32, 32)
    labels = torch.zeros(32, 32, 32, dtype=torch.int64)
    labels[8:24, 8:24, 8:24] = 1
    # Any query, any overlap: the geometry of imprinting (the defaults' rules are tested below).
    overlaps = imprint_new_class_rows(model, [(image, labels)], [0], min_overlap=0.0, free_queries_only=False)
    assert set(overlaps) == {0} and 0.0 < overlaps[0] <= 1.0
    rows = model.query_decoder.class_embed.weight.detach()
    assert torch.equal(rows[1:], rows_before[1:])  # the old classes and the no-object row are unchanged
    assert rows[0].norm() == pytest.approx(float(rows_before[1:4].norm(dim=1).mean()), rel=1e-5)
    # The row points along the class-head input of the query whose mask best overlaps the structure.
    captured = []
    hook = model.query_decoder.class_embed.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    with torch.no_grad():
        outputs = model.eval()(image)
    hook.remove()
    masks = torch.einsum("qe,ezyx->qzyx", outputs["pred_mask_embed"][0], outputs["mask_features"][0]).sigmoid()
    target = torch.nn.functional.adaptive_avg_pool3d((labels == 1).float()[None, None], masks.shape[1:])[0, 0]
    dice = 2 * (masks * target).flatten(1).sum(1) / (masks.flatten(1).sum(1) + target.sum() + 1e-6)
    best_feature = captured[-1][0, int(dice.argmax())]
    assert torch.nn.functional.cosine_similarity(rows[0], best_feature, dim=0) == pytest.approx(1.0, abs=1e-5)


def test_imprinting_never_takes_a_query_that_holds_another_class_nor_a_far_one():
    old = tiny_model(num_classes=3, seed=1)
    plan = plan_classes(list(AMOS15_CLASSES[:3]), ["psoas"], [SegmentClass(1, "psoas", (1, 2, 3))], keep_absent=True)
    model = tiny_model(num_classes=4, seed=2)
    model.load_state_dict(adapt_state_dict(old.state_dict(), model, plan))
    image = torch.randn(1, 1, 32, 32, 32)
    labels = torch.zeros(32, 32, 32, dtype=torch.int64)
    labels[8:24, 8:24, 8:24] = 1
    head = model.query_decoder.class_embed
    with torch.no_grad():
        head.bias[-1] = -100.0  # every query holds a class: none is free
    before = head.weight.detach().clone()
    assert imprint_new_class_rows(model, [(image, labels)], [0], min_overlap=0.0) == {}
    with torch.no_grad():
        head.bias[-1] = 100.0  # every query is free, but none overlaps that much
    assert imprint_new_class_rows(model, [(image, labels)], [0], min_overlap=1.01) == {}
    assert torch.equal(head.weight, before)
    assert set(imprint_new_class_rows(model, [(image, labels)], [0], min_overlap=0.0)) == {0}


def test_imprinting_leaves_a_conv_head_and_absent_classes_alone():
    conv = tiny_model(num_classes=3, kind="conv")
    assert imprint_new_class_rows(conv, [(torch.zeros(1, 1, 32, 32, 32), torch.zeros(32, 32, 32))], [0]) == {}
    model = tiny_model(num_classes=3)
    before = model.query_decoder.class_embed.weight.detach().clone()
    assert imprint_new_class_rows(model, [(torch.zeros(1, 1, 32, 32, 32), torch.zeros(32, 32, 32))], [0]) == {}
    assert torch.equal(model.query_decoder.class_embed.weight, before)


def test_weights_that_do_not_fit_are_a_bad_model_file_not_a_bug():
    from maskmed_core.exit_codes import ExitCode, exit_code_for
    from maskmed_core.training.finetune import load_encoder_weights

    model = tiny_model(num_classes=3)
    weights = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    first = next(iter(weights))
    for broken in ({k: v for k, v in weights.items() if k != first}, {**weights, first: torch.zeros(1)}):
        with pytest.raises(ValueError) as raised:
            load_encoder_weights(model, broken)
        assert exit_code_for(raised.value) == ExitCode.BAD_MODEL
    plan = plan_classes(list(AMOS15_CLASSES[:3]), ["spleen"], [SegmentClass(1, "spleen", (1, 2, 3))], keep_absent=True)
    other = {**model.state_dict(), first: torch.zeros(1)}
    with pytest.raises(ValueError) as raised:
        adapt_state_dict(other, model, plan)
    assert exit_code_for(raised.value) == ExitCode.BAD_MODEL


def test_queries_that_hold_a_class_are_found_and_new_classes_do_not_count():
    model = tiny_model(num_classes=3, seed=2)
    patch = [(torch.randn(1, 1, 32, 32, 32), torch.zeros(32, 32, 32))]
    head = model.query_decoder.class_embed
    queries = model.query_decoder.query_feat.num_embeddings
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))  # every query: no object
        assert not queries_holding_classes(model, patch, exclude=[]).any()
        head.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))  # every query: class 1
        assert queries_holding_classes(model, patch, exclude=[]).all()
        assert not queries_holding_classes(model, patch, exclude=[1]).any()  # class 1 is the fine-tune's new one
        assert len(queries_holding_classes(model, patch, exclude=[])) == queries
    assert model.training  # left as it was found


def test_patches_around_a_class_are_centred_on_it_and_padded():
    image = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0, 0, 0] = 2
    case = PreprocessedCase("c", image, labels, {2: np.array([[0, 0, 0]], dtype=np.int32)}, (3.0, 3.0, 3.0))
    patches = patches_around_classes([case], [1], (4, 4, 4), per_class=2)
    assert len(patches) == 2
    patch_image, patch_labels = patches[0]
    assert patch_image.shape == (1, 1, 4, 4, 4) and patch_labels[2, 2, 2] == 2
    assert patch_image[0, 0, 0, 0, 0] == 0.0 and patch_image[0, 0, 2, 2, 2] == image[0, 0, 0]
    assert patches_around_classes([case], [0], (4, 4, 4), per_class=2) == []  # no case holds class 1


def test_new_classes_get_their_share_of_the_foreground_patches():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[:10] = 1  # a large old class
    labels[10:12, :2, :2] = 2  # a small old class
    labels[15:, 15:, 15:] = 3  # the new class
    foreground = {c: np.argwhere(labels == c).astype(np.int32) for c in (1, 2, 3)}
    case = PreprocessedCase("c", np.zeros_like(labels, dtype=np.float32), labels, foreground, (3.0, 3.0, 3.0))
    plain = PatchSampler([case], (8, 8, 8))
    focused = PatchSampler([case], (8, 8, 8), focus_classes=[3], focus_share=0.5)
    assert dict(zip(focused.classes.tolist(), focused.class_probabilities, strict=True))[3] == pytest.approx(0.5)
    ratio = plain.class_probabilities[0] / plain.class_probabilities[1]
    assert focused.class_probabilities[0] / focused.class_probabilities[1] == pytest.approx(ratio)


@pytest.mark.parametrize("kind", ["decoupled", "conv"])
def test_unannotated_classes_get_no_class_gradient_and_the_others_do(kind):
    """A rehearsal patch does not annotate the class a fine-tune adds: that class's logits get no gradient there."""
    from maskmed_core.model.heads import build_criterion

    model = tiny_model(num_classes=3, kind=kind)
    criterion = build_criterion(model.config)
    image = torch.randn(2, 1, 32, 32, 32)
    labels = torch.zeros(2, 32, 32, 32, dtype=torch.int64)
    labels[:, 4:12, 4:12, 4:12] = 1
    labels[:, 16:28, 16:28, 16:28] = 2
    unannotated = torch.tensor([[False, False, True], [False, False, False]])  # class 3 unknown in image 0
    outputs = model(image)
    key = "pred_logits" if kind == "decoupled" else "seg_logits"
    outputs[key].retain_grad()
    criterion(outputs, labels, unannotated)["loss"].backward()
    grad = outputs[key].grad
    if kind == "decoupled":  # (B, Q, C + 1)
        assert torch.all(grad[0, :, 2] == 0) and grad[0, :, [0, 1, 3]].abs().sum() > 0
        assert grad[1, :, 2].abs().sum() > 0
    else:  # (B, C + 1, z, y, x): channel 3 is class 3
        assert torch.all(grad[0, 3] == 0) and grad[0, :3].abs().sum() > 0 and grad[1, 3].abs().sum() > 0


def test_patch_stream_marks_the_unannotated_classes_of_each_case():
    from maskmed_core.training.loader import PatchDataset

    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[4:8, 4:8, 4:8] = 1
    case = PreprocessedCase("rehearsal_case", np.zeros_like(labels, dtype=np.float32), labels,
                            {1: np.argwhere(labels == 1).astype(np.int32)}, (3.0, 3.0, 3.0))
    sampler = PatchSampler([case], (8, 8, 8))
    sample = PatchDataset(sampler, unannotated={"rehearsal_case": [2]}, num_classes=3).sample(0)
    assert sample["unannotated"].tolist() == [False, False, True]
    assert "unannotated" not in PatchDataset(sampler).sample(0)


def test_rehearsal_maps_label_the_models_amos_classes_and_not_the_rest():
    from maskmed_core.training.rehearsal import REHEARSAL_DIR, rehearsal_set

    classes = [*AMOS15_CLASSES, SegmentClass(16, "Iliopsoas", (1, 2, 3))]
    found = rehearsal_set(classes)
    assert found is not None and len(found.files) == 7 and found.unannotated == [15]
    assert found.label_mapping[1] == 1 and found.label_mapping[5] == 6  # TotalSegmentator spleen, liver
    assert rehearsal_set([SegmentClass(1, "tumour", (1, 1, 1))]) is None  # nothing of that model is annotated
    assert "s0009" not in " ".join(p.name for p in REHEARSAL_DIR.iterdir())  # the held-out CT never ships here


def test_a_segments_terminology_tag_reads_back_as_the_terminology_written():
    from maskmed_core.classes import Terminology

    for segment_class in AMOS15_CLASSES[:3]:  # spleen, right and left kidney (with a modifier)
        terminology = segment_class.terminology
        assert Terminology.from_slicer_tag(terminology.slicer_tag()) == terminology
    assert Terminology.from_slicer_tag("") is None
    assert Terminology.from_slicer_tag("context~^^~^^~^^~x~^^~^^") is None  # an empty entry: no category, no type


def test_the_slicer_export_and_training_match_class_names_alike():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MaskMedSegmentation"))
    from MaskMedSegmentationLib.finetunesession import _normalizedName

    for name in ("Left_Kidney", " left  kidney", "LEFT-KIDNEY", "Leber (Hépar)"):
        assert _normalizedName(name) == class_key(name)


def test_a_model_grown_by_mask_refinement_starts_with_its_source_predictions():
    source = tiny_model(num_classes=3).eval()
    config = copy.deepcopy(source.config)
    config.pixel_decoder.mask_refine_levels = 1
    grown = MaskMed(config).eval()
    added = grown_weights(grown, source.config)
    assert added and all(k.startswith(("mask_refine_proj.", "pixel_decoder.blocks.0.", "pixel_decoder.upsample.0."))
                         for k in added)
    grown.load_state_dict({**source.state_dict(), **added})  # strict: nothing else is missing
    image = torch.randn(1, 1, 32, 48, 48)
    with torch.no_grad():
        before, after = source(image), grown(image)
    assert after["mask_features"].shape[2:] == image.shape[2:]  # finer than the source's (half resolution)
    assert before["mask_features"].shape[2:] != image.shape[2:]
    torch.testing.assert_close(after["pred_logits"], before["pred_logits"])
    torch.testing.assert_close(grown.head.class_probabilities(after, 0.2), source.head.class_probabilities(before, 0.2),
                               atol=1e-5, rtol=0)
