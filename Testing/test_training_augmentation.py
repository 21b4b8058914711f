"""Patch sampling, augmentation and the patch stream of training, on small synthetic cases.

Axis order (z, y, x); x (axis 2) is the left-right axis and its index increases toward the LEFT (LPS), so the
patient's right side is at low x.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from maskmed_core.training.augmentation import (  # noqa: E402
    AugmentationConfig,
    Augmenter,
    augmentation_preset,
    augmentation_region_size,
    lateral_lookup,
)
from maskmed_core.training.cache import PreprocessedCase as Case  # noqa: E402
from maskmed_core.training.loader import PatchDataset, make_loader  # noqa: E402
from maskmed_core.training.sampling import PatchSampler  # noqa: E402

PATCH = (16, 32, 32)


def make_case(labels: np.ndarray, name: str = "case", image: np.ndarray | None = None) -> Case:
    labels = labels.astype(np.uint8)
    if image is None:
        image = (labels.astype(np.float32) * 100.0) - 1000.0
    foreground = {int(c): np.argwhere(labels == c).astype(np.int32) for c in np.unique(labels) if c > 0}
    labels.setflags(write=False)  # the cache hands out read-only memmaps
    image.setflags(write=False)
    return Case(name, image, labels, foreground, (1.0, 1.0, 1.0))


def tiny_object_case() -> Case:
    """40^3 case: class 1 a large slab (a third of the volume), class 2 a 2x2x2 cube."""
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[:, :, 27:] = 1
    labels[5:7, 5:7, 5:7] = 2
    return make_case(labels)


def no_augmentation(**changes) -> AugmentationConfig:
    return replace(augmentation_preset("none"), **changes)


# --- sampler ---------------------------------------------------------------------------------------------------


def test_sampler_foreground_fraction_and_centring():
    sampler = PatchSampler([tiny_object_case()], (8, 8, 8), foreground_fraction=1 / 3, seed=0)
    rng = np.random.default_rng(0)
    draws, hits = 900, 0
    forced = 0
    for _ in range(draws):
        region = sampler.draw(rng)
        _, labels = sampler.crop(region)
        if region.foreground_class is not None:
            forced += 1
            # a foreground draw always contains a voxel of its class
            assert (labels == region.foreground_class).any()
        hits += bool((labels > 0).any())
    assert abs(forced / draws - 1 / 3) < 0.06  # binomial sd ~0.016
    assert hits / draws >= 1 / 3


def test_sampler_favours_rare_classes():
    case = tiny_object_case()
    sampler = PatchSampler([case], (8, 8, 8), foreground_fraction=1.0, rare_class_power=0.5)
    counts = {1: int((case.labels == 1).sum()), 2: 8}
    expected = np.array([counts[1], counts[2]], float) ** -0.5
    np.testing.assert_allclose(sampler.class_probabilities, expected / expected.sum())
    rng = np.random.default_rng(1)
    classes = [sampler.draw(rng).foreground_class for _ in range(300)]
    share_of_tiny = classes.count(2) / len(classes)
    voxel_share = counts[2] / (counts[1] + counts[2])
    assert share_of_tiny > 0.8
    assert share_of_tiny > 100 * voxel_share


def test_sampler_pads_small_case_with_air_and_background():
    labels = np.zeros((4, 6, 5), np.uint8)
    labels[1:3, 2:4, 1:4] = 1
    image = np.linspace(-3.0, 2.0, labels.size, dtype=np.float32).reshape(labels.shape)
    sampler = PatchSampler([make_case(labels, image=image)], (8, 10, 10), seed=0)
    for seed in range(5):
        out_image, out_labels = sampler.sample(np.random.default_rng(seed))
        assert out_image.shape == (1, 8, 10, 10) and out_image.dtype == np.float32
        assert out_labels.shape == (8, 10, 10) and out_labels.dtype == np.int64
        assert out_labels.sum() == labels.sum()  # the whole case is inside, once
        assert (out_image == image.min()).sum() == out_image.size - image.size + 1  # padded with the minimum
        np.testing.assert_array_equal(np.sort(out_image[out_image > image.min()]), np.sort(image[image > image.min()]))


def test_sampler_region_is_centred_on_the_patch_window():
    sampler = PatchSampler([tiny_object_case()], (8, 8, 8), foreground_fraction=1.0)
    region = sampler.draw(np.random.default_rng(3), size=(12, 16, 20))
    image, labels = sampler.crop(region)
    window = labels[2:10, 4:12, 6:14]
    assert (window == region.foreground_class).any()
    assert image.shape == (1, 12, 16, 20)


# --- augmenter -------------------------------------------------------------------------------------------------


def slab_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Classes 0..3 in large slabs (few voxels near a boundary)."""
    z, _, x = np.indices(shape)
    return ((x * 2 // shape[2]) + 2 * (z * 2 // shape[0])).astype(np.uint8)


def block_labels(shape: tuple[int, int, int], block: int = 6) -> np.ndarray:
    """Random classes 0..3 in cubes of ``block`` voxels."""
    grid = np.random.default_rng(0).integers(0, 4, [s // block + 1 for s in shape])
    z, y, x = np.indices(shape) // block
    return grid[z, y, x].astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augmenter_keeps_image_and_labels_aligned(seed):
    config = no_augmentation(rotation_prob=1.0, scaling_prob=1.0, mirror_prob=0.5)
    augmenter = Augmenter(config, PATCH, lateral_pairs=[], seed=0)
    labels = block_labels(augmenter.region_size)
    image = labels[None].astype(np.float32) * 100  # image = label * 100
    out_image, out_labels = augmenter(image, labels, np.random.default_rng(seed))
    assert out_image.shape == (1, *PATCH) and out_image.dtype == torch.float32
    assert out_labels.shape == PATCH and out_labels.dtype == torch.int64
    assert set(out_labels.unique().tolist()) <= {0, 1, 2, 3}
    # Mostly near 100 * k where the label is k (the rest was interpolated across a boundary).
    for k in out_labels.unique().tolist():
        assert ((out_image[0] - 100 * k).abs() < 1)[out_labels == k].float().mean() > 0.5
    # Where the image was not interpolated across a boundary (all 8 neighbours of class k) the nearest label
    # is k: this fails (~80-90 %) when the labels are off by one voxel.
    value = out_image[0] / 100
    pure = (value - value.round()).abs() < 0.01
    assert pure.float().mean() > 0.3
    assert (out_labels[pure] == value.round()[pure]).float().mean() > 0.98


def test_labels_are_resampled_nearest():
    """Linear interpolation between classes 0 and 3 would create 1s and 2s."""
    augmenter = Augmenter(no_augmentation(rotation_prob=1.0, scaling_prob=1.0), PATCH, lateral_pairs=None)
    labels = block_labels(augmenter.region_size) % 2 * 3
    for seed in range(3):
        _, out = augmenter(labels[None].astype(np.float32), labels, np.random.default_rng(seed))
        assert set(out.unique().tolist()) == {0, 3}


def test_region_size_leaves_no_empty_corners():
    for strength in ("default", "strong"):
        config = replace(augmentation_preset(strength), rotation_prob=1.0, scaling_prob=1.0, elastic_prob=0.0,
                         field_of_view_prob=0.0)
        augmenter = Augmenter(config, PATCH, lateral_pairs=None)
        region = augmenter.region_size
        assert all(r >= p and (r - p) % 2 == 0 for r, p in zip(region, PATCH, strict=True))
        labels = np.ones(region, np.uint8)  # anything sampled outside the region would be 0
        for seed in range(6):
            _, out = augmenter(np.zeros((1, *region), np.float32), labels, np.random.default_rng(seed))
            assert (out == 1).all()
    assert augmentation_region_size(PATCH, augmentation_preset("none")) == PATCH


def test_no_augmentation_is_the_centre_crop():
    augmenter = Augmenter(augmentation_preset("none"), (4, 6, 8), lateral_pairs=[(2, 3)])
    image = np.random.default_rng(0).normal(size=(1, 8, 8, 10)).astype(np.float32)
    labels = np.arange(8 * 8 * 10).reshape(8, 8, 10) % 5
    out_image, out_labels = augmenter(image, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image.numpy(), image[:, 2:6, 1:7, 1:9])
    np.testing.assert_array_equal(out_labels.numpy(), labels[2:6, 1:7, 1:9])


def lateral_case() -> tuple[np.ndarray, np.ndarray]:
    """(4, 6, 8) labels: class 2 (e.g. right kidney) at low x (the patient's right), class 1 spanning both sides."""
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1:3, 1:3, 0:3] = 2
    labels[:, 4, :] = 1
    image = np.arange(labels.size, dtype=np.float32).reshape(1, *labels.shape)
    return image, labels


def test_left_right_mirroring_swaps_lateral_pairs():
    image, labels = lateral_case()
    augmenter = Augmenter(no_augmentation(mirror_prob=1.0, mirror_axes=(2,)), labels.shape, lateral_pairs=[(2, 3)])
    out_image, out_labels = augmenter(image, labels, np.random.default_rng(0))
    expected = np.zeros((4, 6, 8), np.int64)
    expected[1:3, 1:3, 5:8] = 3  # now on the left (high x), so it is the left kidney
    expected[:, 4, :] = 1
    np.testing.assert_array_equal(out_labels.numpy(), expected)
    np.testing.assert_array_equal(out_image.numpy(), image[..., ::-1])


def test_no_left_right_mirroring_when_anatomy_unknown():
    image, labels = lateral_case()
    config = no_augmentation(mirror_prob=1.0, mirror_axes=(0, 2))
    out_image, out_labels = Augmenter(config, labels.shape, lateral_pairs=None)(image, labels, np.random.default_rng(0))
    # z is still flipped (no class swap); x is not
    np.testing.assert_array_equal(out_labels.numpy(), labels[::-1].astype(np.int64))
    np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1])


def test_lateral_lookup_rejects_overlapping_pairs():
    assert lateral_lookup([(2, 3)])[[0, 1, 2, 3, 4]].tolist() == [0, 1, 3, 2, 4]
    with pytest.raises(ValueError):
        lateral_lookup([(2, 3), (3, 4)])


def test_augmenter_is_deterministic_per_seed():
    augmenter = Augmenter(augmentation_preset("strong"), PATCH, lateral_pairs=[(2, 3)], seed=0)
    labels = slab_labels(augmenter.region_size)
    image = np.random.default_rng(0).normal(size=(1, *augmenter.region_size)).astype(np.float32)
    outputs = [augmenter(image, labels, np.random.default_rng(seed)) for seed in (7, 8, 7)]
    assert torch.equal(outputs[0][0], outputs[2][0]) and torch.equal(outputs[0][1], outputs[2][1])
    other = Augmenter(augmentation_preset("strong"), PATCH, lateral_pairs=[(2, 3)], seed=5)
    again = other(image, labels, np.random.default_rng(7))  # a fresh augmenter: same result
    assert torch.equal(outputs[0][0], again[0]) and torch.equal(outputs[0][1], again[1])
    assert not torch.equal(outputs[0][0], outputs[1][0])


# --- patch stream ----------------------------------------------------------------------------------------------


def make_dataset(**kwargs) -> PatchDataset:
    cases = [tiny_object_case(), make_case(slab_labels((30, 40, 36)), name="slabs")]
    sampler = PatchSampler(cases, PATCH, seed=0)
    augmenter = Augmenter(augmentation_preset("default"), PATCH, lateral_pairs=[(2, 3)], seed=0)
    return PatchDataset(sampler, augmenter, seed=11, rank=0, world_size=1, **kwargs)


def take(loader, batches: int) -> list[dict]:
    iterator = iter(loader)
    return [next(iterator) for _ in range(batches)]


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["labels"], y["labels"])
        assert list(x["case"]) == list(y["case"])


def test_stream_is_the_same_with_and_without_workers():
    dataset = make_dataset()
    single = take(make_loader(dataset, batch_size=2, num_workers=0), 4)
    workers = take(make_loader(dataset, batch_size=2, num_workers=2), 4)
    assert single[0]["image"].shape == (2, 1, *PATCH) and single[0]["labels"].dtype == torch.int64
    assert_same_batches(single, workers)
    samples = [dataset.sample(i) for i in range(8)]
    assert torch.equal(torch.stack([s["image"] for s in samples[:2]]), single[0]["image"])


def test_start_step_resumes_the_stream():
    stream = take(make_dataset(), 6)
    resumed = take(make_dataset(start_step=3), 3)
    for x, y in zip(stream[3:], resumed, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["labels"], y["labels"])
    other_rank = PatchDataset(make_dataset().sampler, make_dataset().augmenter, seed=11, rank=1, world_size=2)
    assert not torch.equal(next(iter(other_rank))["image"], stream[0]["image"])


def test_small_field_of_view_pads_with_air_and_cuts_the_labels():
    """A small reconstruction field of view: outside an in-plane rectangle the image is exactly the given air value
    (what inference pads with) and the labels background; inside, the labels are untouched; z is never cut."""
    air = -3.25
    augmenter = Augmenter(no_augmentation(field_of_view_prob=1.0, field_of_view_size=(0.3, 0.6)), PATCH,
                          lateral_pairs=None, air_value=air)
    labels = np.ones(PATCH, np.uint8)
    sizes = set()
    for seed in range(8):
        image, out = augmenter(np.zeros((1, *PATCH), np.float32), labels, np.random.default_rng(seed))
        kept = out == 1
        assert kept.any() and not kept.all()
        assert (kept == kept[:1]).all()  # the same rectangle on every slice
        assert (image[0][~kept] == air).all() and (image[0][kept] == 0).all()
        ys, xs = np.nonzero(kept[0].numpy())
        assert (kept[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]).all()  # one rectangle
        sizes.add((ys.max() - ys.min(), xs.max() - xs.min()))
    assert len(sizes) > 1  # drawn per patch


def test_field_of_view_step_is_off_by_default_and_checked():
    assert AugmentationConfig().field_of_view_prob == 0.0
    assert augmentation_preset("strong").field_of_view_prob > 0
    with pytest.raises(ValueError, match="field_of_view_size"):
        AugmentationConfig(field_of_view_size=(0.5, 1.5))


def test_thick_slices_average_along_z_only():
    """A pattern that varies in y and x only comes back as it was; one that alternates slice by slice is averaged
    away (its mean kept); a factor of 1 or less is a copy; the shape must be (C, z, y, x)."""
    from maskmed_core.training.thick_slices import thicken_slices

    rng = np.random.default_rng(0)
    in_plane = torch.from_numpy(rng.normal(size=(1, 1, 12, 10)).astype(np.float32)).expand(1, 16, 12, 10)
    assert torch.allclose(thicken_slices(in_plane, 2.5), in_plane, atol=1e-5)
    alternating = torch.tensor([1.0, -1.0] * 8).reshape(1, 16, 1, 1).expand(1, 16, 12, 10).contiguous()
    thick = thicken_slices(alternating, 2.0)
    assert thick.shape == alternating.shape and thick.dtype == alternating.dtype
    assert thick.abs().max() < 1e-5 and abs(float(thick.mean() - alternating.mean())) < 1e-6
    assert torch.equal(thicken_slices(alternating, 1.0), alternating)
    with pytest.raises(ValueError, match=r"\(C, z, y, x\)"):
        thicken_slices(alternating[0], 2.0)


def test_thick_slice_step_blurs_the_image_along_z_and_leaves_the_labels():
    augmenter = Augmenter(no_augmentation(thick_slice_prob=1.0, thick_slice_factor=(2.0, 3.0)), PATCH,
                          lateral_pairs=None)
    labels = np.zeros(PATCH, np.uint8)
    labels[::2] = 1  # alternating slices: the labels keep them, the image loses them
    image = np.where(labels == 1, 1.0, -1.0).astype(np.float32)[None]
    for seed in range(4):
        out_image, out_labels = augmenter(image, labels, np.random.default_rng(seed))
        assert torch.equal(out_labels, torch.from_numpy(labels).long())
        assert out_image.abs().max() < 0.5  # slabs of 2-3 slices average +1 and -1 toward 0


def test_thick_slice_step_is_off_by_default_checked_and_keeps_the_other_steps_draws():
    """Off in every preset; a bad factor range is refused; switched on, it changes the image only: the geometric and
    field-of-view draws of a seed stay what they were (it draws from a stream of its own)."""
    for name in ("default", "strong", "none"):
        assert augmentation_preset(name).thick_slice_prob == 0.0
    for factor in ((0.5, 2.0), (3.0, 2.0), (2.0, 20.0)):
        with pytest.raises(ValueError, match="thick_slice_factor"):
            AugmentationConfig(thick_slice_factor=factor)
    strong = augmentation_preset("strong")
    plain = Augmenter(strong, PATCH, lateral_pairs=[(2, 3)])
    thick = Augmenter(replace(strong, thick_slice_prob=1.0), PATCH, lateral_pairs=[(2, 3)])
    labels = slab_labels(plain.region_size)
    image = np.random.default_rng(0).normal(size=(1, *plain.region_size)).astype(np.float32)
    for seed in range(3):
        image_a, labels_a = plain(image, labels, np.random.default_rng(seed))
        image_b, labels_b = thick(image, labels, np.random.default_rng(seed))
        assert torch.equal(labels_a, labels_b) and not torch.equal(image_a, image_b)
