"""``TrainConfig``: what ``maskmed train`` was asked to do, each option declared once (``training.options``).

A field's ``option(...)`` gives its flag, help, choices, range and whether ``--resume`` must find it unchanged; the
command's arguments, the validation and the resume check are derived from these fields.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from maskmed_core.devices import TRAINING_DEVICES
from maskmed_core.label_mapping import read_label_mapping
from maskmed_core.model.config import HEAD_KINDS
from maskmed_core.model.criterion import MASK_LOSSES
from maskmed_core.training.field_of_view import DEFAULT_FIELD_OF_VIEW_SIZE, check_field_of_view_size
from maskmed_core.training.finetune import ABSENT_CLASSES
from maskmed_core.training.options import OptionError, check, choices_of, option
from maskmed_core.training.thick_slices import DEFAULT_THICK_SLICE_FACTOR, check_thick_slice_factor


def _mirror_axes_argument(text: str) -> str:
    return "" if text == "none" else text


@dataclass
class TrainConfig:
    """What ``maskmed train`` was asked to do. Spacing (mm) and patch size (voxels) are (z, y, x)."""

    dataset: str = option(flag="dataset", must_match=True,
                          help="nnU-Net v2 raw folder, or a .json/.csv list of image/label pairs")
    output: str = option(flag=("-o", "--output"), required=True, help="output folder")
    preset: str = option("small", flag="--preset", choices=("small", "base"), must_match=True)
    init: str | None = option(None, flag="--init", must_match=True,
                              help="fine-tune from this model file (classes matched by name)")
    label_mapping: dict[int, int] | None = option(
        None, flag="--label-mapping", convert=read_label_mapping, must_match=True,
        help="JSON file mapping label values of the data to the dataset's")
    spacing: tuple[float, float, float] | None = option(
        None, flag="--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), convert=tuple, must_match=True,
        help="target spacing, mm")
    patch_size: tuple[int, int, int] | None = option(
        None, flag="--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), convert=tuple, must_match=True,
        help="patch size, voxels")
    epochs: int = option(50, flag="--epochs", at_least=1)
    steps_per_epoch: int = option(50, flag="--steps-per-epoch", at_least=1, must_match=True)
    batch_size: int = option(2, flag="--batch-size", at_least=1, must_match=True,
                             help="global batch (split over processes)")
    learning_rate: float = option(3e-4, flag="--learning-rate", above=0, must_match=True)
    weight_decay: float = option(0.05, flag="--weight-decay", at_least=0, must_match=True,
                                 help="AdamW's weight decay (default: 0.05)")
    # Linear warm-up of the learning rate; None: 50 steps for a new model, 10 for a fine-tune (--init), whose few
    # hundred steps in minutes on a CPU must not spend a third of themselves warming up a model that already works.
    warmup_steps: int | None = option(None, flag="--warmup-steps", type=int, metavar="STEPS", at_least=0,
                                      must_match=True,
                                      help="linear learning-rate warm-up (default: 50 steps, 10 with --init)")
    schedule: str = option("poly", flag="--schedule", choices=("poly", "cosine"), must_match=True,
                           help="learning-rate decay after the warm-up: poly (power 0.9, nnU-Net's; default) or "
                           "cosine")
    # Stochastic weight averaging over the schedule's tail (weight_average.py): None off; F, the mean of the weights at
    # the epochs' ends from progress F of the schedule on, written as averaged.maskmed.
    weight_average_from: float | None = option(
        None, flag="--weight-average-from", metavar="FRACTION", type=float, at_least=0.0, at_most=1.0,
        must_match=True, before=None,
        help="also write averaged.maskmed: the mean of the weights at every epoch's end from this fraction of the "
        "learning-rate schedule on (steps, or the --time-limit's share when that runs out first; e.g. 0.5: the "
        "second half), stochastic weight averaging (default: off)")
    grad_clip: float = option(12.0, flag="--grad-clip", above=0, must_match=True, metavar="NORM",
                              help="clip the gradients' global L2 norm to this (default: 12)")
    val_every: int = option(5, flag="--val-every", at_least=1, help="validate every N epochs")
    device: str = option("auto", flag="--device", choices=TRAINING_DEVICES)
    num_workers: int = option(2, flag="--workers", metavar="WORKERS", at_least=0,
                              help="data-loading worker processes per rank")
    seed: int = option(0, flag="--seed", must_match=True)
    deterministic: bool = option(False, flag="--deterministic", action="store_true",
                                 help="bit-reproducible (CPU), slower")
    resume: bool = option(False, flag="--resume", action="store_true",
                          help="continue from OUT/training_state.safetensors")
    skip_bad_cases: bool = option(False, flag="--skip-bad-cases", action="store_true",
                                  help="train on the cases that pass the check")
    # None: frozen for a fine-tune of --init's whole model (measured: the iliopsoas added from one CT in 200 steps kept
    # the model's own classes at +0.009 mean Dice on the held-out CT frozen, -0.026 trained, spleen 0.78 vs 0.57; and a
    # frozen encoder's step is about 1.4x faster), trained otherwise.
    freeze_encoder: bool | None = option(
        None, flag="--freeze-encoder", action=argparse.BooleanOptionalAction, must_match=True, before=False,
        help="keep the encoder's weights (default: yes when fine-tuning --init's whole model, no otherwise)")
    # With --init, the model's classes the dataset does not label: "distill" keeps them, taught on the dataset's own
    # images by the starting model's predictions (written where the labels say background, so an unlabelled organ is
    # not taught as background); "freeze" keeps them with their class rows frozen and no targets; "drop" removes them.
    absent_classes: str = option(
        "distill", flag="--absent-classes", choices=ABSENT_CLASSES, must_match=True, before="drop",
        help="with --init, the model's classes that the data does not label: 'distill' (default) keeps them, taught "
        "on your images by the starting model's own predictions; 'freeze' keeps them untrained; 'drop' removes them "
        "from the new model")
    # With --init: the share of patches synthesised from the label maps shipped in maskmed_core/resources/rehearsal,
    # labelled with the model's own classes (0: none). With --synthetic-labels they join those, at synthetic_ratio.
    rehearsal: float = option(
        0.25, flag="--rehearsal", metavar="SHARE", at_least=0.0, at_most=1.0, must_match=True, before=0.0,
        help="with --init: share of patches synthesised from the label maps shipped with MaskMed, labelled with the "
        "model's own classes, so it keeps seeing the organs it knew (0: off)")
    augmentation: str = option("default", flag="--augmentation", choices=("default", "strong", "none"),
                               must_match=True)
    # How often a patch is cut to a small in-plane reconstruction field of view (air outside, as a kidney or spine
    # protocol's CT padded by the sliding window): None keeps the --augmentation preset's (strong: 0.2, else 0).
    field_of_view_prob: float | None = option(
        None, flag="--field-of-view-prob", metavar="P", type=float, at_least=0.0, at_most=1.0, must_match=True,
        before=None,
        help="share of patches cut to a small in-plane field of view, air outside, as a kidney or spine protocol's CT "
        "(default: the --augmentation preset's: 0.2 for strong, 0 otherwise)")
    # The kept rectangle's side as a fraction of the patch's y and x sides, drawn uniformly from (low, high); None:
    # the preset's (DEFAULT_FIELD_OF_VIEW_SIZE).
    field_of_view_size: tuple[float, float] | None = option(
        None, flag="--field-of-view-size", type=float, nargs=2, metavar=("LOW", "HIGH"), convert=tuple,
        must_match=True, before=None,
        help="with a field-of-view cut, its side as a fraction of the patch's, drawn between LOW and HIGH (0 < LOW <= "
        "HIGH <= 1; default " + " ".join(f"{side:g}" for side in DEFAULT_FIELD_OF_VIEW_SIZE) + ")")
    # How often a patch is shown as if reconstructed with thick slices (the image averaged along z over slabs, then
    # interpolated back: a 5-7.5 mm CT at the model's spacing); 0 in every preset, None keeps it.
    thick_slice_prob: float | None = option(
        None, flag="--thick-slice-prob", metavar="P", type=float, at_least=0.0, at_most=1.0, must_match=True,
        before=None,
        help="share of patches shown as if reconstructed with thick slices: the image averaged along z over slabs and "
        "interpolated back, as a 5-7.5 mm CT at the model's spacing (default: 0)")
    # The slab thickness as a multiple of the patch's z spacing, drawn uniformly from (low, high); None: the preset's
    # (DEFAULT_THICK_SLICE_FACTOR).
    thick_slice_factor: tuple[float, float] | None = option(
        None, flag="--thick-slice-factor", type=float, nargs=2, metavar=("LOW", "HIGH"), convert=tuple,
        must_match=True, before=None,
        help="with thick slices, the slab thickness in slices of the model's spacing, drawn between LOW and HIGH "
        "(1 <= LOW <= HIGH <= 16; default " + " ".join(f"{f:g}" for f in DEFAULT_THICK_SLICE_FACTOR) + ")")
    # Axes the augmentation mirrors along, as letters of z, y, x ("" none): "zyx" is nnU-Net's. Mirrors make a
    # vessel on the wrong side or behind the spine a training example (the aorta and the vena cava are told apart by
    # side); TotalSegmentator trains without them. Recorded in the model file: --tta mirrors along these only.
    # None: "zyx" for a new model, the --init model's own axes for a fine-tune (a model that learnt sides keeps them).
    mirror_axes: str | None = option(
        None, flag="--mirror-axes", metavar="AXES", convert=_mirror_axes_argument, must_match=True, before="zyx",
        help="axes the augmentation mirrors along: letters of z, y, x or 'none' (default: zyx, nnU-Net's, for a new "
        "model; --init's own axes for a fine-tune); recorded in the model file, where --tta mirrors along these only")
    amp: str = option("bf16", flag="--amp", choices=("bf16", "fp16", "none"), must_match=True,
                      help="autocast on CUDA")
    # Mask losses (decoupled head) on Mask2Former's sampled points, on every cell of the mask-feature grid, or on the
    # grid with each mask's inside and outside weighted alike ("balanced"), where structures of a few hundred voxels
    # (adrenal glands) are learnt too (see SetCriterion).
    mask_loss: str = option(
        "points", flag="--mask-loss", choices=MASK_LOSSES, must_match=True, before="points",
        help="decoupled head: mask losses on Mask2Former's sampled points (default), on every cell of the "
        "mask-feature grid, or 'balanced': the grid with each mask's inside and outside weighted alike, which also "
        "learns structures of a few hundred voxels (adrenal glands)")
    # Finer masks (issue 25): None keeps the preset's (0) or --init's own; with --init more levels grow the model,
    # the new ones zero-initialised so that it starts from the model file's predictions (PixelDecoderConfig).
    mask_refine_levels: int | None = option(
        None, flag="--mask-refine-levels", type=int, metavar="LEVELS", at_least=0, must_match=True, before=None,
        help="decoupled head: refine the mask features with this many finer decoder stages (1 with the small preset: "
        "masks at the patch's full resolution instead of half); with --init the added stages start as a no-op")
    # "decoupled" or "conv"; None: decoupled for a new model, --init's own head with --init
    head: str | None = option(
        None, flag="--head", choices=HEAD_KINDS, must_match=True,
        help="decoupled (MaskMed, the default for a new model) or conv: the point-wise conv head baseline (nnU-Net "
        "style); with --init the model file's head is kept")
    # False: the no-FSA ablation
    transformer: bool = option(True, flag="--no-transformer", action="store_false", must_match=True,
                               help="ablation: remove the FSA transformer")
    # With --init: take only its plans and encoder weights; the transformer, decoder and head (of ``head``) start
    # fresh. For comparing heads on one pretrained encoder.
    init_encoder_only: bool = option(
        False, flag="--init-encoder-only", action="store_true", must_match=True, before=False,
        help="with --init: take only its preprocessing plans and encoder weights, and train a fresh transformer, "
        "decoder and head (--head, --no-transformer): heads compared on one encoder")
    cache_dir: str | None = option(None, flag="--cache-dir", help="preprocessed-case cache (default OUT/cache)")
    time_limit_minutes: float | None = option(
        None, flag="--time-limit", type=float, metavar="MINUTES", above=0,
        help="stop (validate and save) once this much training time has passed, even if steps remain; the learning "
        "rate decays by whichever runs out first, steps or time")
    # Label maps without images (files or folders of them), trained on through synthesised CT; their values and
    # those of the dataset's label maps must then be TotalSegmentator v2 ids (the synthesis priors' classes).
    synthetic_labels: list[str] = option(
        default_factory=list, flag="--synthetic-labels", nargs="+", metavar="PATH", convert=list,
        help="label maps without images (files or folders), trained on through CT synthesised from them; label "
        "values must be TotalSegmentator v2 ids (use --label-mapping for the classes)")
    # share of patches from the label-only cases
    synthetic_ratio: float = option(0.5, flag="--synthetic-ratio", type=float, at_least=0.0, at_most=1.0,
                                    must_match=True, requires="synthetic_labels",
                                    help="share of patches drawn from the --synthetic-labels cases ")
    # a real case's patch gets a synthesised image from its own label map
    synthetic_prob: float = option(
        0.0, flag="--synthetic-prob", at_least=0.0, at_most=1.0, must_match=True, before=0.0,
        help="probability that a real case's patch is replaced by a CT synthesised from its own label map "
        "(TotalSegmentator v2 ids)")
    # otherwise its real image is shown in another contrast phase
    contrast_prob: float = option(
        0.0, flag="--contrast-prob", at_least=0.0, at_most=1.0, must_match=True, before=0.0,
        help="probability that a real CT patch is shown in another contrast phase (enhancing classes shifted by "
        "class; TotalSegmentator v2 label maps)")
    # False: the reference training step, --reference-step (benchmarks/training.py compares both)
    fast_step: bool = option(True, flag="--reference-step", action="store_false",
                             help="the former, slower training step (for benchmarks; learns the same)")
    # (image, labels) of a held-out case: preprocessed with the others, never trained on, scored at the end
    holdout: tuple[str, str] | None = option(
        None, flag="--holdout", nargs=2, metavar=("IMAGE", "LABELS"), convert=tuple,
        help="a held-out labelled case: preprocessed into the cache, never trained on, scored (Dice, HD95 on the "
        "model grid) with the best model at the end (holdout_evaluation.json)")
    # preprocess, write the cache and its manifest, then stop
    prepare_only: bool = option(
        False, flag="--prepare-only", action="store_true",
        help="check and preprocess the data into the cache (--cache-dir) with its manifest.json, then stop; `maskmed "
        "train CACHE/manifest.json` later trains from the cache alone, without SimpleITK or the images (e.g. on a "
        "bare GPU machine)")

    # The choices of each text option (derived from the fields below the class); a typo must not silently pick
    # another behaviour (e.g. fp16 without a scaler).
    CHOICES: ClassVar[dict[str, tuple[str, ...]]]

    def __post_init__(self) -> None:
        check(self)
        axes = self.mirror_axes
        if axes is not None and (len(set(axes)) != len(axes) or not set(axes) <= set("zyx")):
            raise OptionError(f"mirror_axes must be letters among z, y, x, each once, got {self.mirror_axes!r}")
        ranges = ((self.field_of_view_size, check_field_of_view_size),
                  (self.thick_slice_factor, check_thick_slice_factor))
        for value, check_range in ranges:
            if value is not None:
                try:
                    check_range(value)
                except ValueError as error:
                    raise OptionError(str(error)) from None
        if self.init_encoder_only and (self.init is None or self.absent_classes == "freeze"):
            raise OptionError("init_encoder_only needs init and a fresh head: it cannot freeze the model's absent "
                              "classes (distill or drop them)")


TrainConfig.CHOICES = choices_of(TrainConfig)
