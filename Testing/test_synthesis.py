"""CT synthesis from label maps, contrast-phase augmentation, label-only cases in training."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch

from maskmed_core.training.augmentation import Augmenter, augmentation_preset
from maskmed_core.training.intensity_sources import SyntheticImage
from maskmed_core.training.synthesis import (
    AIR,
    BODY,
    BODY_WALL,
    SUBCUTANEOUS_FAT,
    SynthesisPriors,
    body_tissue_map,
    change_contrast_phase,
    synthesize_ct,
)

DEMO = Path(__file__).resolve().parents[1] / "maskmed_core" / "resources" / "demo"


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """The bundled real label map (TotalSegmentator v2 ids, 3 mm) as a tissue map, canonical (z, y, x)."""
    from maskmed_core.io import to_canonical

    labels = sitk.GetArrayFromImage(to_canonical(sitk.ReadImage(str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"))))
    return body_tissue_map(labels, (3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def priors() -> SynthesisPriors:
    return SynthesisPriors.load()


def test_priors_file_covers_the_totalsegmentator_classes(priors):
    assert len(priors.classes) == 117
    assert priors.classes[5].name == "liver" and priors.classes[5].group == "organ"
    for prior in priors.classes.values():
        for phase in ("native", "arterial", "portal"):
            median, spread = getattr(prior, phase)
            assert -1024 <= median <= 1500 and spread >= 0
    # Enhancement: blood is much brighter in the arterial phase than native.
    assert priors.classes[52].arterial[0] > priors.classes[52].native[0] + 150


def test_body_tissue_map_keeps_labels_and_marks_the_body():
    labels = np.zeros((4, 40, 40), dtype=np.uint8)
    labels[:, 10:30, 12:20] = 5
    labels[:, 15:25, 22:28] = 2
    tissue = body_tissue_map(labels, (3.0, 3.0, 3.0), fat_mm=6.0, wall_mm=3.0)
    assert np.array_equal(tissue[labels > 0], labels[labels > 0])
    assert tissue[0, 20, 21] == BODY_WALL or tissue[0, 20, 21] == BODY  # between the organs: inside the body
    assert tissue[0, 0, 0] == AIR and tissue[0, 20, 10] == SUBCUTANEOUS_FAT
    assert (tissue == BODY).sum() + (tissue == BODY_WALL).sum() > 0


def test_synthesis_is_deterministic_for_a_seed(tissue, priors):
    crop = torch.from_numpy(tissue[20:84, 20:84, 20:84].copy())
    first = synthesize_ct(crop, priors, torch.Generator().manual_seed(7))
    again = synthesize_ct(crop, priors, torch.Generator().manual_seed(7))
    other = synthesize_ct(crop, priors, torch.Generator().manual_seed(8))
    assert torch.equal(first.image, again.image) and first.phase == again.phase
    assert not torch.equal(first.image, other.image)
    assert first.image.shape == crop.shape and first.image.dtype == torch.float32


def test_synthesised_hu_are_plausible_per_class(tissue, priors):
    image_tissue = torch.from_numpy(tissue.copy())
    medians: dict[str, list[float]] = {}
    groups = {"liver": [5], "kidney": [2, 3], "lung": [10, 11, 12, 13, 14], "aorta": [52], "bone": list(range(26, 35)),
              "outside": [AIR], "subcutaneous fat": [SUBCUTANEOUS_FAT]}
    for seed in range(6):
        drawn = synthesize_ct(image_tissue, priors, torch.Generator().manual_seed(seed), field_of_view_cut_prob=0.0)
        for name, values in groups.items():
            mask = torch.isin(image_tissue.long(), torch.tensor(values))
            if mask.sum() > 20:
                medians.setdefault(name, []).append(float(drawn.image[mask].median()))
    ranges = {"liver": (20, 200), "kidney": (-20, 320), "lung": (-1000, -500), "aorta": (0, 500),
              "bone": (100, 1200), "outside": (-1024, -900), "subcutaneous fat": (-200, 0)}
    assert set(ranges) <= set(medians), f"classes missing from the bundled label map: {set(ranges) - set(medians)}"
    for name, (low, high) in ranges.items():
        assert all(low <= m <= high for m in medians[name]), (name, medians[name])


def test_field_of_view_cut_removes_labels_where_there_is_no_image(tissue, priors):
    source = SyntheticImage(priors, _intensity(), (3.0, 3.0, 3.0), seed=3, field_of_view_cut_prob=1.0)
    crop = torch.from_numpy(tissue[10:74, 10:74, 20:84].astype(np.int64))
    labels = (crop == 5).long()  # the liver as class 1
    image, out_labels = source(None, crop, labels)
    assert image.shape == (1, *crop.shape)
    outside = image[0] <= image.min() + 1e-6
    assert out_labels[outside].sum() == 0  # no label where the simulated scan has no data
    inside_liver = (labels == 1) & ~outside
    assert torch.equal(out_labels[inside_liver], labels[inside_liver])  # everything else kept


def test_augmenter_moves_tissue_and_labels_together():
    """Synthesis after geometry: the image drawn from the moved tissue map lines up with the moved labels."""
    config = replace(augmentation_preset("strong"), noise_prob=0, blur_prob=0, brightness_prob=0, contrast_prob=0,
                     low_resolution_prob=0, gamma_prob=0, gamma_inverted_prob=0)
    augmenter = Augmenter(config, (16, 24, 24), lateral_pairs=[(1, 2)])
    region = augmenter.region_size
    labels = np.zeros(region, dtype=np.uint8)
    centre = [r // 2 for r in region]
    labels[centre[0] - 6 : centre[0] + 2, centre[1] - 8 : centre[1] + 3, centre[2] - 9 : centre[2] + 1] = 3
    for seed in range(20):
        image, moved = augmenter(
            None, labels, np.random.default_rng(seed), tissue=labels * 10,
            intensity_source=lambda _image, tissue, lab: ((tissue > 0).float()[None] * 100, lab),
        )
        assert torch.equal(moved > 0, image[0] > 50)


def test_contrast_phase_change_shifts_enhancing_classes_only(priors):
    tissue = torch.zeros(8, 16, 16, dtype=torch.long)
    tissue[:, :8] = 5  # liver
    tissue[:, 8:12] = 21  # urinary bladder (fluid: never enhances)
    tissue[:, 12:] = 28  # vertebra
    image = torch.where(tissue == 5, 55.0, torch.where(tissue == 21, 8.0, 250.0)) + torch.randn(8, 16, 16)
    changed, phase = change_contrast_phase(image, tissue, priors, torch.Generator().manual_seed(1))
    assert torch.equal(changed[tissue != 5], image[tissue != 5])
    liver = float(changed[tissue == 5].median())
    median, spread = getattr(priors.classes[5], phase)
    assert abs(liver - median) < 5 * spread + 1
    # The texture of the class is kept: a shift, not a new fill.
    assert torch.allclose((changed - image)[tissue == 5].std(), torch.tensor(0.0), atol=1e-4)


def test_training_with_label_only_cases_runs_and_predicts(tmp_path, capsys):
    """maskmed train with a real case and a label-only case (synthesised CT) and contrast changes, end to end."""
    from maskmed_core.cli import main

    image = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm.nii.gz"))[25:89, 18:82, 64:112]
    labels = sitk.ReadImage(str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"))[25:89, 18:82, 64:112]
    sitk.WriteImage(image, str(tmp_path / "real.nii.gz"))
    sitk.WriteImage(labels, str(tmp_path / "real_labels.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(DEMO / "abdomen_ct_3mm_totalseg.nii.gz"))[20:84, 22:86, 50:98],
                    str(tmp_path / "label_only.nii.gz"))
    (tmp_path / "cases.json").write_text(json.dumps({
        "labels": {"spleen": 1, "right kidney": 2, "left kidney": 3, "liver": 6},
        "cases": [{"image": "real.nii.gz", "label": "real_labels.nii.gz"}],
    }))
    (tmp_path / "mapping.json").write_text(json.dumps({"1": 1, "2": 2, "3": 3, "5": 6}))
    code = main([
        "train", str(tmp_path / "cases.json"), "-o", str(tmp_path / "run"), "--label-mapping",
        str(tmp_path / "mapping.json"), "--patch-size", "32", "32", "32", "--spacing", "3", "3", "3",
        "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--synthetic-labels", str(tmp_path / "label_only.nii.gz"), "--synthetic-ratio", "0.5",
        "--synthetic-prob", "0.5", "--contrast-prob", "0.5", "--json",
    ])
    assert code == 0
    output = capsys.readouterr().out
    assert "1 real cases and 1 label-only cases" in output
    assert (tmp_path / "run" / "best.maskmed").is_file()
    entries = [p.name for p in (tmp_path / "run" / "cache").iterdir()]
    assert any(name.startswith("labels-label_only") for name in entries)


def _intensity():
    from maskmed_core.plans import IntensityNormalization

    return IntensityNormalization()


def _arterial_scan(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 32^3 CT at 2 mm with an aorta (TotalSegmentator v2 label 52, ~300 HU) and a liver (5, ~100 HU) in air, its
    label map, and a class-name table."""
    rng = np.random.default_rng(0)
    ct = np.full((32, 32, 32), -1000.0, np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    labels[4:28, 4:12, 4:12], labels[4:28, 16:28, 14:28] = 52, 5
    ct[labels == 52] = 300.0 + rng.normal(0, 10, int((labels == 52).sum()))
    ct[labels == 5] = 100.0 + rng.normal(0, 10, int((labels == 5).sum()))
    ct_path, labels_path, names_path = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz", tmp_path / "names.tsv"
    for array, path in ((ct, ct_path), (labels, labels_path)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(path))
    names_path.write_text("5\tliver\n52\taorta\n", encoding="utf-8")
    return ct_path, labels_path, names_path


def test_fit_synthesis_priors_reads_the_phase_and_replaces_the_priors_file_whole_or_not_at_all(tmp_path, monkeypatch,
                                                                                                capsys):
    from maskmed_core.training import fit_synthesis_priors

    ct, labels, names = _arterial_scan(tmp_path)
    output = tmp_path / "priors.json"
    assert fit_synthesis_priors.main([str(ct), str(labels), "--class-names", str(names), "-o", str(output)]) == 0
    priors = json.loads(output.read_text(encoding="utf-8"))
    assert priors["source"]["scans"] == [{"image": "ct.nii.gz", "labels": "labels.nii.gz", "phase": "arterial",
                                          "classes_measured": 2}]
    assert set(priors["classes"]) == {"5", "52"}
    before = output.read_bytes()

    def disk_full_halfway(path: Path, text: str, *args, **kwargs):
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full_halfway)
    with pytest.raises(OSError, match="No space left"):
        fit_synthesis_priors.main([str(ct), str(labels), "--class-names", str(names), "-o", str(output)])
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "labels.nii.gz", "names.tsv", "priors.json"]
