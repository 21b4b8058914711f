"""The training loop: a short loop over small, separately tested parts.

data (dataset -> checks -> plans -> cached preprocessing -> patches + augmentation) -> model (preset or
fine-tuned from a model file) -> AdamW with warm-up and poly/cosine decay, gradient clipping, autocast on
CUDA -> validation by full sliding-window inference with per-class Dice -> best and last model files and
a resumable state, all written atomically by rank 0.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maskmed_core.allocator import retain_freed_memory
from maskmed_core.atomic import atomic_path, output_batch, remove_stale_temporaries
from maskmed_core.checkpoint import load_model_file, save_model_file
from maskmed_core.classes import AMOS15_CLASSES, SegmentClass, lateral_classes_without_partner, lateral_pairs
from maskmed_core.events import EpochEvent, Event, MessageEvent, StepEvent
from maskmed_core.interrupts import StopRequest, signals_recorded
from maskmed_core.model import MaskMed, ModelConfig, preset
from maskmed_core.model.heads import build_criterion, head_type
from maskmed_core.plans import Plans
from maskmed_core.training import distributed
from maskmed_core.training.config import TrainConfig
from maskmed_core.training.finetune import (
    adapt_state_dict,
    freeze_class_rows,
    freeze_encoder,
    grown_weights,
    imprint_new_class_rows,
    load_encoder_weights,
    patches_around_classes,
    plan_classes,
    queries_holding_classes,
)
from maskmed_core.training.run_files import (
    AVERAGED_MODEL,
    BEST_MODEL,
    HOLDOUT_FILE,
    LAST_MODEL,
    LOG_FILE,
    PLOT_FILE,
    RUN_FILES,
    STATE_FILE,
    plot_curves,
    write_log,
)
from maskmed_core.training.schedule import TrainingClock, learning_rate_factor, schedule_progress
from maskmed_core.training.state import (
    TrainingState,
    TrainingStateError,
    check_resumable,
    load_state,
    require_saved_state,
    save_state,
)
from maskmed_core.training.validation import validate
from maskmed_core.training.weight_average import WeightAverage

if TYPE_CHECKING:  # augmentation imports MONAI: loaded when a run builds its loader
    from maskmed_core.training.augmentation import AugmentationConfig


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do. The last good files are kept."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite (``maskmed train`` exits with ExitCode.DIVERGED)."""


Reporter = Callable[[Event], None]  # gets StepEvent, EpochEvent and MessageEvent (maskmed_core.events)


def _dataset_classes(labels: dict[str, int], details: dict[str, SegmentClass] | None = None) -> list[SegmentClass]:
    """Classes from a dataset's labels (name -> value): the colour and terminology its ``maskmed_classes`` give a
    name (``details``), else the AMOS ones for an AMOS name, else a palette colour."""
    known = {c.name.lower(): c for c in AMOS15_CLASSES}
    known.update({name.lower(): detail for name, detail in (details or {}).items()})
    palette = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]
    classes = []
    for index, (name, value) in enumerate(sorted(labels.items(), key=lambda item: item[1])):
        match = known.get(name.lower())
        color = match.color if match else palette[index % len(palette)]
        classes.append(SegmentClass(int(value), name, color, match.terminology if match else None))
    return classes


def _set_determinism(config: TrainConfig, rank: int) -> None:
    torch.manual_seed(config.seed + rank)
    np.random.seed(config.seed + rank)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


@dataclass
class TrainingData:
    """What the loop trains on: the plans, the classes, the model to start from and the preprocessed cases."""

    plans: Plans
    classes: list[SegmentClass]
    model_config: Any
    init_file: Any
    class_plan: Any
    cases: list
    label_only_cases: list
    holdout: Any
    manifest_path: Path | None
    # case name -> 0-based indices of the classes its label map does not annotate (rehearsal cases)
    unannotated: dict[str, list[int]] = field(default_factory=dict)


def _start_model(config: TrainConfig, data_classes: list[SegmentClass], make_plans) -> tuple:
    """(plans, classes, model config, init file, class plan): from ``--init`` or a new preset."""
    init_file = load_model_file(config.init) if config.init else None
    if init_file is not None:
        try:
            plan = plan_classes(init_file.classes, [c.name for c in data_classes], data_classes,
                                keep_absent=config.absent_classes != "drop")
        except ValueError as error:  # the dataset's class names
            raise TrainingError(str(error)) from None
        model_config = copy.deepcopy(init_file.config)
        model_config.num_classes = len(plan.classes)
        if config.init_encoder_only:
            # The preset differs between heads only in these two switches, so this is the preset's own model.
            model_config.head.kind = config.head or "decoupled"
            model_config.transformer.enabled = config.transformer
        else:
            _check_same_architecture(config, model_config)
        kept = 0 if config.init_encoder_only else init_file.config.pixel_decoder.mask_refine_levels
        _refine_masks(config, model_config, kept)
        return init_file.plans, plan.classes, model_config, init_file, plan
    plans = make_plans()
    model_config = preset(config.preset, len(data_classes), patch_size=plans.patch_size, spacing=plans.spacing,
                          head_kind=config.head or "decoupled", transformer_enabled=config.transformer)
    _refine_masks(config, model_config, 0)
    return plans, data_classes, model_config, None, None


def _refine_masks(config: TrainConfig, model_config: ModelConfig, start_levels: int) -> None:
    """Apply ``--mask-refine-levels`` to ``model_config``; a model file's refinement can grow, never shrink (its
    weights would be dropped)."""
    wanted = config.mask_refine_levels
    if wanted is None or wanted == model_config.pixel_decoder.mask_refine_levels:
        return
    if model_config.head.kind != "decoupled":
        raise TrainingError("--mask-refine-levels refines the decoupled head's masks; the conv head has none")
    if wanted < start_levels:
        raise TrainingError(f"--init {config.init} refines its masks with {start_levels} finer stage(s); fine-tuning "
                            f"keeps them (got --mask-refine-levels {wanted})")
    model_config.pixel_decoder.mask_refine_levels = wanted
    try:
        model_config.validate()
    except ValueError as error:
        raise TrainingError(f"--mask-refine-levels {wanted}: {error}") from None


def _check_same_architecture(config: TrainConfig, init_config: ModelConfig) -> None:
    """A fine-tune keeps the model file's head and transformer; asking for others is refused, not ignored."""
    wanted_head = config.head or init_config.head.kind
    if wanted_head != init_config.head.kind or (init_config.transformer.enabled and not config.transformer):
        transformer = "with" if init_config.transformer.enabled else "without"
        has = f"a {init_config.head.kind} head {transformer} the FSA transformer"
        raise TrainingError(f"--init {config.init} has {has}; fine-tuning keeps them. To train another head or no "
                            "transformer on its encoder, add --init-encoder-only")


def _data_from_files(config: TrainConfig, context, report: Reporter, cache_dir: Path) -> TrainingData:
    """Check the dataset, plan, preprocess every case into ``cache_dir`` (rank 0 first) and write its manifest."""
    from maskmed_core.plans.fingerprint import plans_from_fingerprint
    from maskmed_core.training.cache import preprocess_case, preprocess_cases, preprocess_label_only
    from maskmed_core.training.cache_entries import CacheManifest, write_manifest
    from maskmed_core.training.checks import check_dataset, format_report, without_bad_cases
    from maskmed_core.training.dataset import Case, load_dataset
    from maskmed_core.training.fingerprint import compute_fingerprint

    spec = load_dataset(config.dataset, label_mapping=config.label_mapping)
    problems = check_dataset(spec, label_mapping=config.label_mapping)
    if problems:
        text = format_report(problems)
        if not config.skip_bad_cases:
            raise TrainingError(text)
        spec = without_bad_cases(spec, problems)
        report(MessageEvent("warning", text + "\n--skip-bad-cases: training without them"))
        if not spec.cases:
            raise TrainingError("no usable case is left after skipping the bad ones")
    plans, classes, model_config, init_file, class_plan = _start_model(
        config, _dataset_classes(spec.labels, spec.class_details),
        lambda: plans_from_fingerprint(compute_fingerprint(spec, label_mapping=config.label_mapping),
                                       patch_size=config.patch_size, spacing=config.spacing),
    )
    class_values = [c.label for c in classes]
    label_only_files = _label_only_files(config.synthetic_labels)

    def preprocess_all():
        real = preprocess_cases(spec, plans, class_values, cache_dir, label_mapping=config.label_mapping)
        label_only = [preprocess_label_only(path, plans, class_values, cache_dir, config.label_mapping)
                      for path in label_only_files]
        holdout = None
        if config.holdout:
            image, label = config.holdout
            holdout = preprocess_case(Case("holdout", Path(image), Path(label)), plans, class_values, cache_dir,
                                      config.label_mapping)
        return real, label_only, holdout

    manifest_path = None
    if context.is_main:  # rank 0 fills the cache first; the other ranks then read it
        cases, label_only_cases, holdout = preprocess_all()
        manifest_path = write_manifest(cache_dir, CacheManifest(
            plans, classes, [c.entry for c in cases], [c.entry for c in label_only_cases],
            holdout.entry if holdout is not None else None,
            source={"dataset": str(config.dataset), "synthetic_labels": [str(f) for f in label_only_files],
                    "holdout": list(config.holdout) if config.holdout else None,
                    "label_mapping": {str(k): v for k, v in (config.label_mapping or {}).items()}},
        ))
    distributed.barrier(context)
    if not context.is_main:
        cases, label_only_cases, holdout = preprocess_all()
    return TrainingData(plans, classes, model_config, init_file, class_plan, cases, label_only_cases, holdout,
                        manifest_path)


def _data_from_manifest(config: TrainConfig) -> TrainingData:
    """The cases of a prepared cache (numpy and JSON only: no SimpleITK, no image reading)."""
    from maskmed_core.training.cache_entries import load_cached, read_manifest

    manifest, cache_root = read_manifest(config.dataset)
    plans, classes, model_config, init_file, class_plan = _start_model(config, manifest.classes, lambda: manifest.plans)
    if plans.to_dict() != manifest.plans.to_dict():
        raise TrainingError(f"--init {config.init} has other preprocessing plans than the cache {cache_root} was "
                            "prepared with: prepare the cache with the same --init")
    if [c.name for c in classes] != [c.name for c in manifest.classes]:
        raise TrainingError(f"--init {config.init}: its classes differ from the cache's; prepare the cache with it")
    return TrainingData(
        plans, classes, model_config, init_file, class_plan,
        [load_cached(cache_root, name) for name in manifest.cases],
        [load_cached(cache_root, name) for name in manifest.label_only],
        load_cached(cache_root, manifest.holdout) if manifest.holdout else None,
        Path(config.dataset) if Path(config.dataset).is_file() else Path(config.dataset) / "manifest.json",
    )


def run_training(config: TrainConfig, report: Reporter | None = None) -> dict[str, Any]:
    """Train or fine-tune; returns the summary (best epoch, per-class Dice, model file paths).

    ``report`` gets the run's events (``maskmed_core.events``: StepEvent, EpochEvent, MessageEvent) on every rank.
    The run, step by step: ``_set_up`` (data, plans, cache), ``_build`` (model, optimiser, schedule),
    ``_resume`` (from the saved state, with --resume), then per step ``_train_step`` and at each epoch's end
    ``_end_epoch`` (validation, model files, state), and ``_summary``.
    """
    report = report or (lambda event: None)
    _check_output(Path(config.output))  # before any slow work
    if config.resume:
        require_saved_state(Path(config.output) / STATE_FILE)
    context = distributed.setup(config.device)
    try:
        data = _set_up(config, context, report)
        if config.prepare_only:
            return {"manifest": str(data.manifest_path), "cases": len(data.cases),
                    "label_only_cases": len(data.label_only_cases), "holdout": data.holdout is not None}
        # The head and mirror axes the run trains with, recorded as such in its state (None asked for the default
        # or --init's).
        config = replace(config, head=data.model_config.head.kind, mirror_axes=_mirror_axes(config, data, report),
                         warmup_steps=_warmup_steps(config))
        run = _build(config, data, context, report)
        progress = _resume(run, report)
        _train(run, progress, report)
        return _summary(run, progress)
    finally:
        distributed.teardown(context)


@dataclass
class _Run:
    """What one training run works with, built once by ``_build``."""

    config: TrainConfig
    context: Any  # distributed.Context
    output: Path
    data: TrainingData
    model: MaskMed
    criterion: torch.nn.Module
    parameters: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    clock: TrainingClock
    total_steps: int
    weight_average: WeightAverage | None = None  # --weight-average-from

    @property
    def state_path(self) -> Path:
        return self.output / STATE_FILE


@dataclass
class _Progress:
    """Where a run stands (saved in the training state at every epoch's end)."""

    step: int = 0
    best_metric: float = -1.0
    best_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    torch_rng: torch.Tensor | None = None  # a resumed run's generator state, restored when its loop starts


def _check_output(output: Path) -> None:
    """Refuse an output folder the run could not write into at its first epoch's end, minutes later: -o a file or a
    read-only place (OutputLocationError), a folder in the way of a file the run writes (OutputIsAFolderError)."""
    from maskmed_core.io.output_folder import check_output_files

    check_output_files(output, RUN_FILES)


def _set_up(config: TrainConfig, context, report: Reporter) -> TrainingData:
    """The output folder, the seeds, and the data: a prepared cache's manifest or the dataset, preprocessed."""
    from maskmed_core.training.cache_entries import is_manifest

    output = Path(config.output)
    created = context.is_main and not output.exists()
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:  # what a run killed while writing (kill -9, a power cut) left half-written
            remove_stale_temporaries(output / name)
    _set_determinism(config, context.rank)
    try:
        if is_manifest(config.dataset):
            data = _data_from_manifest(config)
        else:
            data = _data_from_files(config, context, report, _cache_dir(config))
    except BaseException:
        if created:
            _remove_if_empty(output)  # a refused dataset leaves no empty -o folder behind (a filled cache stays)
        raise
    if data.label_only_cases:
        report(MessageEvent("info", f"{len(data.cases)} real cases and {len(data.label_only_cases)} label-only cases "
                                    "(synthesised CT)"))
    return _fine_tune_classes(config, data, context, report)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it holds nothing but empty folders (as a run leaves it that fails before its data)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if not path.is_dir() or path.is_symlink() or any(path.iterdir()):
            return
        path.rmdir()
    folder.rmdir()


def _cache_dir(config: TrainConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else Path(config.output) / "cache"


def _new_class_indices(data: TrainingData) -> list[int]:
    """0-based indices of the classes a fine-tune adds (none in the starting model)."""
    plan = data.class_plan
    return [] if plan is None else [i for i, source in enumerate(plan.source_index) if source is None]


def _fine_tune_classes(config: TrainConfig, data: TrainingData, context, report: Reporter) -> TrainingData:
    """With --init: refuse what cannot be learnt (more classes than object queries, a new class with no labelled
    voxel), then let the starting model teach the classes the data does not label (``absent_classes`` "distill")."""
    plan = data.class_plan
    if plan is None:
        return data
    queries = data.model_config.head.num_queries
    if head_type(data.model_config).shared_queries and len(data.classes) > queries:
        raise TrainingError(f"the fine-tuned model would have {len(data.classes)} classes, more than the {queries} "
                            f"object queries of --init {config.init} (each class needs one): label fewer classes, or "
                            "drop the model's other classes with --absent-classes drop")
    present = {index for case in data.cases + data.label_only_cases for index in case.foreground}
    empty = [data.classes[i].name for i in _new_class_indices(data) if i + 1 not in present]
    if empty:
        raise TrainingError(f"new class(es) {', '.join(map(repr, empty))} have no labelled voxel in any case: check "
                            "the label values of dataset.json (or --label-mapping) against the label maps")
    if config.prepare_only:
        return data
    data = _with_rehearsal(config, data, context, report)
    if config.absent_classes != "distill" or not plan.frozen:
        return data
    from maskmed_core.training.distillation import distill_absent_classes, teacher_to_student_classes

    teacher = MaskMed(data.init_file.config)
    teacher.load_state_dict(data.init_file.state_dict)
    names = ", ".join(data.classes[i].name for i in plan.frozen)
    report(MessageEvent("info", f"distillation: --init's model labels the classes your data does not ({names}) on "
                                f"your {sum(c.image is not None for c in data.cases)} images"))
    cases = distill_absent_classes(data.cases, teacher, data.plans, teacher_to_student_classes(
        plan.source_index, plan.frozen), len(data.classes), context.device, config.seed)
    return replace(data, cases=cases)


def _with_rehearsal(config: TrainConfig, data: TrainingData, context, report: Reporter) -> TrainingData:
    """``data`` with the shipped rehearsal label maps as label-only cases in the model's classes (``rehearsal``)."""
    from maskmed_core.training.cache import preprocess_label_only
    from maskmed_core.training.rehearsal import rehearsal_set

    found = rehearsal_set(data.classes) if config.rehearsal > 0 else None
    if found is None:
        return data

    def preprocess() -> list:
        values = [c.label for c in data.classes]
        return [preprocess_label_only(path, data.plans, values, _cache_dir(config), found.label_mapping)
                for path in found.files]

    cases = preprocess() if context.is_main else []
    distributed.barrier(context)  # rank 0 fills the cache first; the other ranks then read it
    if not context.is_main:
        cases = preprocess()
    labelled = len(data.classes) - len(found.unannotated)
    report(MessageEvent("info", f"rehearsal: {len(cases)} shipped label maps (TotalSegmentator dataset, CC BY 4.0) "
                                f"label {labelled} of the {len(data.classes)} classes; "
                                f"{config.rehearsal:.0%} of patches are synthesised from them"))
    unannotated = {**data.unannotated, **{case.name: list(found.unannotated) for case in cases}}
    return replace(data, label_only_cases=data.label_only_cases + cases, unannotated=unannotated)


def _build(config: TrainConfig, data: TrainingData, context, report: Reporter) -> _Run:
    """The model (a new preset or ``--init``'s weights, adapted to the classes), the loss, AdamW and the schedule."""
    model = MaskMed(data.model_config)
    held_queries = None
    if data.init_file is not None and config.init_encoder_only:
        load_encoder_weights(model, data.init_file.state_dict)
    elif data.init_file is not None and data.class_plan is not None:
        weights = adapt_state_dict(data.init_file.state_dict, model, data.class_plan)
        model.load_state_dict({**weights, **grown_weights(model, data.init_file.config)})
        if config.absent_classes == "freeze":
            freeze_class_rows(model, data.class_plan.frozen)
        new = _new_class_indices(data)
        patches = patches_around_classes(data.cases, new, data.plans.patch_size, per_class=4, seed=config.seed)
        if new and model.head.shared_queries:
            held_queries = _held_queries(model, data, patches, new, config.seed, report)
        imprinted = imprint_new_class_rows(model, patches, new)
        for index in new:
            name = data.classes[index].name
            report(MessageEvent("info", f"new class {name!r} starts from the free object queries that cover it "
                                        f"(soft Dice {imprinted[index]:.2f})" if index in imprinted else
                                        f"new class {name!r}: no free object query covers it yet; its class row "
                                        "starts fresh"))
    if encoder_frozen(config):
        freeze_encoder(model)
    model.to(context.device)
    criterion = build_criterion(data.model_config, logits_first=config.fast_step, mask_loss=config.mask_loss)
    criterion = criterion.to(context.device)
    if held_queries is not None:
        criterion.reserve_queries(held_queries, _new_class_indices(data))
    if model.transformer is not None:
        model.transformer.fused_value_projection = config.fast_step
    if config.fast_step:
        retain_freed_memory()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = config.epochs * config.steps_per_epoch
    clock = TrainingClock(config.time_limit_minutes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: learning_rate_factor(step, total_steps, _warmup_steps(config), config.schedule, clock.fraction),
    )
    weight_average = None if config.weight_average_from is None else WeightAverage(model, config.weight_average_from)
    return _Run(config, context, Path(config.output), data, model, criterion, parameters, optimizer, scheduler,
                clock, total_steps, weight_average)


def _held_queries(model: MaskMed, data: TrainingData, new_patches: list, new: list[int], seed: int,
                  report: Reporter) -> torch.Tensor:
    """(Q,) bool: the starting model's queries that hold one of its classes on the user's images (around the new
    classes and one patch around each old class they show), which the new classes may not take (reserve_queries)."""
    old = sorted({c - 1 for case in data.cases if case.image is not None for c in case.foreground} - set(new))
    patches = new_patches + patches_around_classes(data.cases, old, data.plans.patch_size, per_class=1, seed=seed)
    held = queries_holding_classes(model, patches, exclude=new)
    report(MessageEvent("info", f"{int(held.sum())} of the {len(held)} object queries hold the model's classes; "
                                "the new classes are matched to the others"))
    return held


def _resume(run: _Run, report: Reporter) -> _Progress:
    """With --resume and a saved state: the model, optimiser, schedule, progress and clock as they were; another
    run's or another configuration's state is refused. Otherwise a fresh start."""
    if not (run.config.resume and run.state_path.is_file()):
        return _Progress()
    state = load_state(run.state_path)
    check_resumable(state, _jsonable(run.config), run.model, run.state_path)
    try:
        run.model.load_state_dict(state.model)
        run.optimizer.load_state_dict(state.optimizer)
        run.scheduler.load_state_dict(state.scheduler)
        if run.weight_average is not None and state.averaged_count:
            run.weight_average.restore(state.averaged, state.averaged_count)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as error:  # torch's words for "does not fit"
        raise TrainingStateError(f"{run.state_path} does not fit this run ({str(error)[:200]}); start without "
                                 "--resume") from error
    progress = _Progress(state.step, state.best_metric, state.best_step, state.history, state.torch_rng)
    run.clock.spent_before = float(progress.history[-1].get("seconds", 0.0)) if progress.history else 0.0
    report(MessageEvent("info", f"resumed at step {progress.step}"))
    return progress


def _train(run: _Run, progress: _Progress, report: Reporter) -> None:
    """The loop: steps until the last one or the time limit, an epoch's end every ``steps_per_epoch`` steps."""
    config, context = run.config, run.context
    training_model: torch.nn.Module = run.model
    if context.enabled:
        device_ids = [context.local_rank] if context.device.type == "cuda" else None
        training_model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)
    loader = _make_loader(config, run.data.cases, run.data.label_only_cases, run.data.classes, run.data.plans,
                          context, progress.step, [index + 1 for index in _new_class_indices(run.data)],
                          run.data.unannotated)
    autocast = _autocast(config, context.device)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast is not None and config.amp == "fp16")
    run.model.train()
    epoch_losses: list[float] = []
    run.clock.start()
    iterator = iter(loader)
    if progress.torch_rng is not None:
        # Restored only now: creating the loader's iterator draws from the global generator, and the
        # uninterrupted run did that before its first step, not at this point.
        torch.set_rng_state(progress.torch_rng)
    # Under DDP a Ctrl+C or SIGTERM is recorded and acted on at the next step's collective, by every rank at once
    # (one rank raising alone would fail its partners inside a collective); a single process raises at once.
    with signals_recorded() if context.enabled else contextlib.nullcontext(StopRequest()) as stop:
        while progress.step < run.total_steps:
            loss = _train_step(run, training_model, next(iterator), autocast, scaler, progress.step)
            progress.step += 1
            # One collective per step: the global-batch loss (the mean of the ranks' losses), the time-limit flag
            # (every rank must stop at the same step, so rank 0's clock decides) and whether a rank was asked to
            # stop.
            loss_sum, out_of_time_flag, stop_flag = distributed.all_reduce_sum(
                (loss, float(run.clock.out_of_time() and context.is_main), float(stop.signal is not None)), context
            )
            if stop_flag > 0:
                raise KeyboardInterrupt(stop.signal or "SIGTERM")  # a partner's signal: the same cancel
            _after_step(run, progress, epoch_losses, loss_sum, out_of_time_flag > 0, report)
            if out_of_time_flag > 0:
                break
    if stop.signal is not None:  # it came after the last step's collective: the cancel still holds
        raise KeyboardInterrupt(stop.signal)


def _after_step(run: _Run, progress: _Progress, epoch_losses: list[float], loss_sum: float, out_of_time: bool,
                report: Reporter) -> None:
    """The step's event, and the epoch's end (validation, files) when the epoch, the steps or the time ran out."""
    config, context = run.config, run.context
    epoch_losses.append(loss_sum / context.world_size)
    report(StepEvent(progress.step, run.total_steps, epoch_losses[-1], run.clock.elapsed(),
                     run.clock.remaining(progress.step, run.total_steps)))
    if progress.step % config.steps_per_epoch == 0 or progress.step == run.total_steps or out_of_time:
        _end_epoch(run, progress, float(np.mean(epoch_losses)), out_of_time, report)
        epoch_losses.clear()


def _train_step(run: _Run, training_model: torch.nn.Module, batch: dict[str, Any], autocast, scaler,
                step: int) -> float:
    """One optimiser step on ``batch`` (image (B, 1, z, y, x), labels (B, z, y, x)); returns this rank's loss.
    A loss that is NaN or infinite stops the run (DivergedError) before it touches the weights."""
    device = run.context.device
    image = batch["image"].to(device, non_blocking=True)
    labels = batch["labels"].to(device, non_blocking=True)
    with autocast if autocast is not None else contextlib.nullcontext():
        outputs = training_model(image)
        if "unannotated" in batch:  # rehearsal patches: classes their label maps do not annotate
            losses = run.criterion(outputs, labels, batch["unannotated"].to(device))
        else:
            losses = run.criterion(outputs, labels)
    loss = losses["loss"]
    if not torch.isfinite(loss):
        names = batch.get("case", ["?"] * image.shape[0])
        raise DivergedError(
            f"the loss became {loss.item()} at step {step + 1} (cases in the batch: {', '.join(map(str, names))}); "
            f"the last good model files in {run.output} are kept. Lower --learning-rate or check those cases"
        )
    run.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.parameters, run.config.grad_clip)
    scaler.step(run.optimizer)
    scaler.update()
    run.scheduler.step()
    return float(loss.detach())


def _end_epoch(run: _Run, progress: _Progress, mean_loss: float, out_of_time: bool, report: Reporter) -> None:
    """Validate (every ``val_every`` epochs and at the end), then write the model files, the state, the log and
    the curves (rank 0), and report the epoch."""
    config, data, step = run.config, run.data, progress.step
    epoch = math.ceil(step / config.steps_per_epoch)
    record: dict[str, Any] = {
        "epoch": epoch, "step": step, "loss": mean_loss, "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": run.clock.elapsed(),
    }
    if out_of_time:
        record["stopped"] = "time limit"
        report(MessageEvent("info", f"time limit of {config.time_limit_minutes} min reached at step "
                                    f"{step}/{run.total_steps}"))
    improved = False
    if epoch % config.val_every == 0 or step == run.total_steps or out_of_time:
        dice = validate(run.model, data.cases, data.plans, data.classes, run.context)
        record["dice"] = dice
        record["mean_dice"] = float(np.mean(list(dice.values()))) if dice else 0.0
        if record["mean_dice"] > progress.best_metric:
            progress.best_metric, progress.best_step = record["mean_dice"], step
            improved = True
        run.model.train()
    averaged = _update_weight_average(run, step)
    if averaged:
        record["averaged_epochs"] = run.weight_average.count
    progress.history.append(record)
    if run.context.is_main:
        # One epoch's files replace the previous epoch's together or not at all: a Ctrl+C, a SIGTERM or a full disk
        # between two of them would leave a best model that the state (and so --resume) knows nothing of.
        with output_batch():
            if improved:
                _save_model(run.output / BEST_MODEL, run.model, data, record, run.config)
            _save_model(run.output / LAST_MODEL, run.model, data, record, run.config)
            if averaged:  # the epoch's validation scored the current weights, not their average: left out
                averaged_record = {k: v for k, v in record.items() if k not in ("dice", "mean_dice")}
                _save_model(run.output / AVERAGED_MODEL, run.weight_average.module, data, averaged_record, run.config)
            save_state(run.state_path, TrainingState(
                step=step, model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                scheduler=run.scheduler.state_dict(), torch_rng=torch.get_rng_state(),
                best_metric=progress.best_metric, best_step=progress.best_step, history=progress.history,
                run_config=_jsonable(config),
                **_weight_average_state(run.weight_average),
            ))
            write_log(run.output / LOG_FILE, progress.history)
        plot_curves(run.output / PLOT_FILE, progress.history)
    report(EpochEvent(**record))


def _update_weight_average(run: _Run, step: int) -> bool:
    """Add the weights at this epoch's end to the --weight-average-from mean when the schedule has come that far;
    whether it did."""
    if run.weight_average is None:
        return False
    if not run.weight_average.due(schedule_progress(step, run.total_steps, run.config.warmup_steps or 0,
                                                    run.clock.fraction)):
        return False
    run.weight_average.update(run.model)
    return True


def _weight_average_state(weight_average: WeightAverage | None) -> dict[str, Any]:
    """The training state's fields for the weight average (none without --weight-average-from or before it starts)."""
    if weight_average is None or weight_average.count == 0:
        return {}
    return {"averaged": weight_average.state(), "averaged_count": weight_average.count}


def _summary(run: _Run, progress: _Progress) -> dict[str, Any]:
    """The best epoch and its Dice, the model files, steps and seconds; the held-out case's scores if one was
    given (rank 0)."""
    history = progress.history
    best = next((r for r in history if r["step"] == progress.best_step), history[-1] if history else {})
    summary = {
        "best_epoch": best.get("epoch"), "best_mean_dice": progress.best_metric, "dice": best.get("dice", {}),
        "best_model": str(run.output / BEST_MODEL), "last_model": str(run.output / LAST_MODEL),
        "steps": progress.step, "seconds": run.clock.elapsed(),
    }
    if run.weight_average is not None and run.weight_average.count:
        summary["averaged_model"] = str(run.output / AVERAGED_MODEL)
        summary["averaged_epochs"] = run.weight_average.count
    if run.data.holdout is not None and run.context.is_main:
        summary["holdout"] = _score_holdout(run.output, run.data.holdout, run.data.plans, run.data.classes,
                                            run.context.device)
    return summary


def _score_holdout(output: Path, holdout, plans: Plans, classes: list[SegmentClass], device) -> dict[str, Any]:
    """Dice and HD95 of the best model file on the held-out case, on the model grid; also written to
    HOLDOUT_FILE. The held-out case played no part in training or in choosing the best model."""
    from maskmed_core.evaluation import class_scores, summarize
    from maskmed_core.training.validation import predict_case_indices

    model_file = load_model_file(output / BEST_MODEL)
    model = MaskMed(model_file.config)
    model.load_state_dict(model_file.state_dict)
    model.to(device).eval()
    prediction = predict_case_indices(model, holdout.image, plans, device)
    scores = class_scores(prediction, np.asarray(holdout.labels), {c.name: i + 1 for i, c in enumerate(classes)},
                          plans.spacing)
    result = {"grid": f"model grid, {' x '.join(f'{s:g}' for s in plans.spacing)} mm", "classes": scores,
              **summarize(scores)}
    with atomic_path(output / HOLDOUT_FILE) as temporary:
        temporary.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _make_loader(config, cases, label_only_cases, classes, plans: Plans, context, start_step: int,
                 focus_classes: list[int], unannotated: dict[str, list[int]]):
    from maskmed_core.training.augmentation import Augmenter
    from maskmed_core.training.intensity_sources import SynthesisOptions, from_hu
    from maskmed_core.training.loader import PatchDataset, SynthesisSetup, make_loader
    from maskmed_core.training.sampling import PatchSampler
    from maskmed_core.training.synthesis import SynthesisPriors

    per_rank = max(1, config.batch_size // context.world_size)
    # A fine-tune's new classes (focus_classes, 1-based) get half of the foreground patches of the real cases.
    sampler = PatchSampler(cases, plans.patch_size, seed=config.seed, focus_classes=focus_classes)
    air = float(from_hu(torch.tensor(plans.intensity.clip_low), plans.intensity))  # what inference pads with
    augmenter = Augmenter(augmentation_of(config), plans.patch_size,
                          lateral_pairs=_lateral_pairs_by_index(classes), seed=config.seed, air_value=air)
    synthesis = None
    label_only_sampler = None
    if label_only_cases or config.synthetic_prob > 0 or config.contrast_prob > 0:
        options = SynthesisOptions(
            # Without --synthetic-labels the label-only cases are the rehearsal maps alone, at their own share.
            synthetic_ratio=(config.synthetic_ratio if config.synthetic_labels else config.rehearsal)
            if label_only_cases else 0.0,
            synthetic_prob=config.synthetic_prob, contrast_prob=config.contrast_prob,
        )
        synthesis = SynthesisSetup(options, SynthesisPriors.load(), plans.intensity, plans.spacing)
        if label_only_cases:
            label_only_sampler = PatchSampler(label_only_cases, plans.patch_size, seed=config.seed)
    dataset = PatchDataset(sampler, augmenter, seed=config.seed, rank=context.rank,
                           world_size=context.world_size, start_step=start_step * per_rank,
                           label_only_sampler=label_only_sampler, synthesis=synthesis,
                           unannotated=unannotated, num_classes=len(classes) if unannotated else 0)
    return make_loader(dataset, per_rank, config.num_workers)


def _label_only_files(entries: list[str]) -> list[Path]:
    """Label-map files named directly or found in named folders (NIfTI, NRRD, MetaImage), sorted per folder."""
    from maskmed_core.io import InputError
    from maskmed_core.io.reading import VOLUME_SUFFIXES

    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES))
            if not found:
                raise InputError(f"--synthetic-labels {path}: no label map ({' '.join(VOLUME_SUFFIXES)}) in this "
                                 "folder.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"--synthetic-labels {path}: no such file or folder.")
    return files


def _lateral_pairs_by_index(classes: list[SegmentClass]) -> list[tuple[int, int]] | None:
    """Left/right partner classes as 1-based class indices of the training labels, or None (no left-right mirrors)
    when the classes' sides are unknown (no class has a terminology or a side in its name) or a class of one side
    has no partner to swap with."""
    pairs = lateral_pairs(classes)
    if lateral_classes_without_partner(classes) or not (pairs or any(c.terminology is not None for c in classes)):
        return None
    return [(a + 1, b + 1) for a, b in pairs]


def _autocast(config: TrainConfig, device: torch.device):
    if device.type != "cuda" or config.amp == "none":
        return None
    return torch.autocast("cuda", dtype=torch.bfloat16 if config.amp == "bf16" else torch.float16)


def encoder_frozen(config: TrainConfig) -> bool:
    """``--freeze-encoder``, or when not given: frozen for a fine-tune of ``--init``'s whole model (see TrainConfig)."""
    if config.freeze_encoder is not None:
        return config.freeze_encoder
    return config.init is not None and not config.init_encoder_only


def _warmup_steps(config: TrainConfig) -> int:
    """``config.warmup_steps``, or when None: 10 for a fine-tune (--init), 50 for a new model."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return 10 if config.init else 50


def _mirror_axes(config: TrainConfig, data: TrainingData, report: Reporter) -> str:
    """``config.mirror_axes``, or when None: the --init model's axes (letters of zyx), else all three; without x
    when the classes' sides cannot be swapped (``_lateral_pairs_by_index``), so that the model file does not tell
    test-time augmentation to mirror left-right either."""
    if config.mirror_axes is not None:
        axes = config.mirror_axes
    elif data.init_file is not None:
        axes = "".join("zyx"[axis] for axis in data.init_file.mirror_axes)
    else:
        axes = "zyx"
    if "x" in axes and _lateral_pairs_by_index(data.classes) is None:
        alone = [repr(data.classes[i].name) for i in lateral_classes_without_partner(data.classes)]
        if alone:
            why = f"{', '.join(alone)} {'has' if len(alone) == 1 else 'have'} no class of the other side to swap with"
        else:
            why = "the classes' sides are unknown (no terminology, no 'left'/'right' in their names)"
        report(MessageEvent("warning", f"no left-right (x) mirroring: {why}"))
        axes = axes.replace("x", "")
    return axes


def mirror_axes_of(config: TrainConfig) -> tuple[int, ...]:
    """The config's mirror axes as array axes (0 = z, 1 = y, 2 = x), in that order (None, before run_training
    resolves it: all three)."""
    letters = "zyx" if config.mirror_axes is None else config.mirror_axes
    return tuple(axis for axis, letter in enumerate("zyx") if letter in letters)


# TrainConfig fields that, where given (not None), replace the --augmentation preset's field of the same name.
PRESET_OVERRIDES = ("field_of_view_prob", "field_of_view_size", "thick_slice_prob", "thick_slice_factor")


def augmentation_of(config: TrainConfig) -> AugmentationConfig:
    """The --augmentation preset with the config's mirror axes and, where given, its field-of-view share and size and
    its thick-slice share and factor range."""
    from maskmed_core.training.augmentation import augmentation_preset

    overrides = {name: getattr(config, name) for name in PRESET_OVERRIDES if getattr(config, name) is not None}
    return replace(augmentation_preset(config.augmentation), mirror_axes=mirror_axes_of(config), **overrides)


def _save_model(path: Path, model: MaskMed, data: TrainingData, record: dict, config: TrainConfig) -> None:
    # "mirror_axes": what test-time augmentation may mirror (the predictor reads it; files without it: all three).
    extra = {"training": {k: v for k, v in record.items() if k != "lr"}, "mirror_axes": list(mirror_axes_of(config))}
    save_model_file(path, model, data.plans, data.classes, extra=extra)


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    data = asdict(config)
    if data["label_mapping"] is not None:
        data["label_mapping"] = {str(k): v for k, v in data["label_mapping"].items()}
    return data
