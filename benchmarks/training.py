"""Training on the CPU: MaskMed `small` train step next to nnU-Net v2's `nnUNetTrainer.train_step`, and data loading.

In one run, at one patch size P (default 64 x 96 x 96, z, y, x) and batch B (default 2), target spacing 3 x 3 x 3 mm,
2 torch threads, each tool in a fresh spawned child process:

- train step time: the median (and min / max) of N steps after 2 warm-up steps, each on its own batch; a step is
  forward + loss + backward + gradient clipping (norm 12) + optimizer step, what the two trainers do per iteration
  (data loading excluded: it is measured separately, below). Both tools train on the SAME batches: augmented patches
  of the real CT in ../shared/data (abdomen_ct_3mm.nii.gz, already at 3 mm) with its TotalSegmentator labels mapped
  to the 15 AMOS classes (amos15_from_totalseg_v2.json), drawn by MaskMed's own loader (below, 0 workers) before
  the measurements and stored once;
  - MaskMed: `MaskMed(preset("small", 15, patch_size=P, spacing=(3, 3, 3)))`, `build_criterion(config)` (the
    Hungarian-matched set criterion with deep supervision on every decoder layer), AdamW with `maskmed train`'s
    default learning rate and weight decay, the trainer loop's step without its scheduler (no autocast on CPU);
  - nnU-Net: a real `nnUNetTrainer` (3d_fullres, the plans of benchmarks/nnunet_peer.py: the default planner's
    PlainConvUNet for that spacing and patch, batch size B) on the CPU; its network, optimizer (SGD, momentum 0.99,
    Nesterov, lr 1e-2, weight decay 3e-5) and loss (`DC_and_CE_loss` in `DeepSupervisionWrapper` with nnU-Net's
    weights) come from its own `build_network_architecture` (deep supervision on), `configure_optimizers` and
    `_build_loss`, i.e. what `initialize()` calls (`initialize()` itself also needs a preprocessed dataset folder, to
    pick its dataset class); the step is its own `train_step`. The targets at each deep-supervision scale are built
    beforehand (nnU-Net's data loader does that) with its `DownsampleSegForDSTransform`, on int16 labels like its
    loader's;
- peak RSS of the whole child process (imports, model, optimizer state, the stored batches; nothing subtracted):
  VmHWM of /proc/self/status, as benchmarks/inference.py measures it (not ru_maxrss: see there why);
- data loading: MaskMed's `PatchDataset` + `make_loader` (what `maskmed train` builds: `PatchSampler`, `Augmenter`
  with the "default" augmentation preset and the AMOS left/right class pairs) on the real CT preprocessed through
  `preprocess_cases` (the training cache), batch B, with 0, 1 and 2 worker processes: batches per second after the
  workers' start-up and their first prefetched batches, set against MaskMed's train steps per second (the "loader /
  step ratio"; the loader keeps up when it is >= 1). Measured alone: in training the workers take their CPU time
  from the same cores as the step, so "CPU s / batch" is printed too. With 0 workers the loader runs in the main
  process with its ``--threads`` torch threads, as `maskmed train --workers 0` does; on a busy machine those threads
  mostly wait for each other (one torch thread there was about 4x faster than two under contention);
- "others": the cores other processes kept busy during each timed part (from /proc/stat, minus the child's own
  CPU time and that of its loader workers). On a shared 2-core machine anything above ~0.2 inflates the times.

Both models have random weights (the step time does not depend on them).

The peer needs nnU-Net v2 without its dependencies (they would replace the CPU torch by a CUDA build), then the
missing non-torch ones:

    pip install --no-deps nnunetv2 "acvl-utils>=0.2.6,<0.3" batchgenerators batchgeneratorsv2 \
        dynamic-network-architectures
    pip install threadpoolctl blosc2 pandas scikit-image nibabel connected-components-3d matplotlib seaborn \
        scikit-learn

    python3 -m benchmarks.training                        # both tools, loader with 0, 1, 2 workers
    python3 -m benchmarks.training --steps 3 --skip-nnunet
    python3 -m benchmarks.training --patch 64 128 128 --batch 2 --workers 0 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks import nnunet_peer
from benchmarks._common import (
    GIB,
    LABEL_MAPPING,
    REAL_CT,
    REAL_LABELS,
    SPACING_ZYX,
    busy_cpu_seconds,
    cpu_seconds,
    peak_rss_bytes,
    print_machine,
    run_child,
    run_in_workdir,
)

PATCH_ZYX = (64, 96, 96)
BATCH = 2
WARMUP_STEPS = 2
# profile_maskmed's batches: 1 warm-up step, 3 timed ones, 1 under torch.profiler.
PROFILED_STEPS = 5
AUGMENTATION = "default"
GRAD_CLIP = 12.0  # both trainers
SEED = 0


# ----- CPU accounting ----------------------------------------------------------------------------------------------
def _tree_cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its live descendants (e.g. DataLoader workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue  # ended meanwhile
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    me = os.getpid()
    descendants, frontier = set(), {me}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - descendants
        descendants |= frontier
    return cpu_seconds() + sum(times.get(pid, 0.0) for pid in descendants)


class _Window:
    """Wall time, own CPU time (with descendants) and the cores other processes kept busy, over a ``with`` block."""

    def __enter__(self) -> _Window:
        self._busy, self._cpu, self._start = busy_cpu_seconds(), _tree_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._start
        self.cpu = _tree_cpu_seconds() - self._cpu
        self.others = max(0.0, busy_cpu_seconds() - self._busy - self.cpu) / self.wall


# ----- inputs (child processes) ------------------------------------------------------------------------------------
def _cases(cache_dir: str, patch, image_path: str, label_path: str, mapping_path: str):
    """The real CT as a preprocessed training case (from the cache when it is there), its plans and classes."""
    from maskmed_core.classes import AMOS15_CLASSES
    from maskmed_core.label_mapping import read_label_mapping
    from maskmed_core.plans import Plans
    from maskmed_core.training.cache import preprocess_cases
    from maskmed_core.training.dataset import Case, DatasetSpec

    classes = list(AMOS15_CLASSES)
    spec = DatasetSpec(
        root=Path(image_path).parent,
        cases=[Case("abdomen_ct_3mm", Path(image_path), Path(label_path))],
        labels={c.name: c.label for c in classes},
        file_ending=".nii.gz",
    )
    plans = Plans(spacing=SPACING_ZYX, patch_size=tuple(patch))
    cases = preprocess_cases(
        spec, plans, [c.label for c in classes], cache_dir, label_mapping=read_label_mapping(mapping_path)
    )
    return cases, classes


def _patch_dataset(cases, classes, patch):
    """What `maskmed train` builds (trainer._make_loader): sampler, default augmentation with the lateral pairs."""
    from maskmed_core.classes import lateral_pairs
    from maskmed_core.training.augmentation import Augmenter, augmentation_preset
    from maskmed_core.training.loader import PatchDataset
    from maskmed_core.training.sampling import PatchSampler

    pairs = [(a + 1, b + 1) for a, b in lateral_pairs(classes)]
    sampler = PatchSampler(cases, patch, seed=SEED)
    augmenter = Augmenter(augmentation_preset(AUGMENTATION), patch, lateral_pairs=pairs, seed=SEED)
    return PatchDataset(sampler, augmenter, seed=SEED, rank=0, world_size=1), augmenter.region_size


def prepare_batches(
    path: str, cache_dir: str, patch, batch: int, count: int, image_path: str, label_path: str, mapping_path: str
) -> dict:
    """Preprocess the real CT into ``cache_dir`` and store ``count`` augmented batches from MaskMed's loader."""
    import numpy as np
    import torch

    from maskmed_core.training.loader import make_loader

    torch.set_num_threads(1)
    cases, classes = _cases(cache_dir, patch, image_path, label_path, mapping_path)
    dataset, region = _patch_dataset(cases, classes, patch)
    iterator = iter(make_loader(dataset, batch, 0))
    images, labels = [], []
    for _ in range(count):
        item = next(iterator)
        images.append(item["image"].numpy())
        labels.append(item["labels"].numpy().astype(np.uint8))
    images_array, labels_array = np.stack(images), np.stack(labels)
    np.savez(path, images=images_array, labels=labels_array)
    present = [len(np.unique(b[b > 0])) for b in labels_array.reshape(count * batch, -1)]
    return {
        "case_shape": tuple(cases[0].image.shape),
        "region": tuple(region),
        "foreground": float((labels_array > 0).mean()),
        "classes_per_patch": (min(present), statistics.median(present), max(present)),
    }


def make_nnunet_plans(folder: str, env_root: str, patch, threads: int) -> dict:
    """nnunet_peer's trained-model folder (plans.json, dataset.json) for this patch; its architecture."""
    nnunet_peer.set_environment(env_root, threads)
    from maskmed_core.classes import AMOS15_CLASSES
    from maskmed_core.plans import Plans

    nnunet_peer.build_model_folder(
        folder, SPACING_ZYX, tuple(patch), [c.name for c in AMOS15_CLASSES], Plans().intensity
    )
    arch = nnunet_peer.plan_architecture(SPACING_ZYX, tuple(patch))["arch_kwargs"]
    return {"stages": arch["n_stages"], "features": arch["features_per_stage"], "strides": arch["strides"]}


# ----- measurements (child processes) ------------------------------------------------------------------------------
def _load_batches(path: str):
    import numpy as np

    with np.load(path) as stored:
        return stored["images"], stored["labels"]


def _timed_steps(step, prepare, steps: int, images, labels) -> dict:
    """``step(prepare(image, labels))`` on each stored batch; the first WARMUP_STEPS are warm-up, the next ``steps``
    timed (their wall time, CPU time and others). ``prepare`` (the tool's loader output from the stored uint8
    labels, one batch at a time so that all batches are not held in that form) runs outside the clock."""
    times, losses = [], []
    for index in range(WARMUP_STEPS):
        losses.append(step(prepare(images[index], labels[index])))
    with _Window() as window:
        for index in range(WARMUP_STEPS, WARMUP_STEPS + steps):
            batch = prepare(images[index], labels[index])
            tick = time.perf_counter()
            losses.append(step(batch))
            times.append(time.perf_counter() - tick)
            del batch
    return {
        "times": times,
        "cpu_per_step": window.cpu / len(times),
        "others": window.others,
        "losses": losses,
    }


def _maskmed_training_parts(patch, fast: bool):
    """What `maskmed train` builds for a step: config, model, criterion, parameters, AdamW with its defaults; ``fast``
    False is the former step (TrainConfig.fast_step)."""
    import torch

    from maskmed_core.allocator import retain_freed_memory
    from maskmed_core.classes import AMOS15_CLASSES
    from maskmed_core.model import MaskMed, preset
    from maskmed_core.model.heads import build_criterion
    from maskmed_core.training.trainer import TrainConfig

    defaults = TrainConfig(dataset="", output="")  # `maskmed train`'s optimizer settings
    config = preset("small", len(AMOS15_CLASSES), patch_size=tuple(patch), spacing=SPACING_ZYX)
    torch.manual_seed(SEED)
    model = MaskMed(config).train()
    criterion = build_criterion(config, logits_first=fast)
    model.transformer.fused_value_projection = fast
    if fast:
        retain_freed_memory()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=defaults.learning_rate, weight_decay=defaults.weight_decay)
    return config, model, criterion, parameters, optimizer, defaults


def measure_maskmed(batches_path: str, patch, steps: int, threads: int, fast: bool = True) -> dict:
    """MaskMed's train step; ``fast`` False is the former step (``maskmed train --reference-step``): the same
    function, computed the slower way (see TrainConfig.fast_step)."""
    import torch

    torch.set_num_threads(threads)
    config, model, criterion, parameters, optimizer, defaults = _maskmed_training_parts(patch, fast)

    def prepare(image, label_map):  # what MaskMed's loader yields: float32 image, int64 labels
        return torch.from_numpy(image), torch.from_numpy(label_map).long()

    def step(batch) -> float:  # trainer.train's loop body (no autocast on CPU, no scheduler)
        image, label_map = batch
        losses = criterion(model(image), label_map)
        loss = losses["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        optimizer.step()
        return float(loss.detach())

    images, labels = _load_batches(batches_path)
    rss_before = _rss_bytes()
    result = _timed_steps(step, prepare, steps, images, labels)
    result.update(
        peak=peak_rss_bytes(),
        rss_before=rss_before,
        params=sum(p.numel() for p in model.parameters()),
        queries=config.head.num_queries,
        strides=config.encoder.strides,
        optimizer=f"AdamW lr {defaults.learning_rate:g}, weight decay {defaults.weight_decay:g}",
        cpu_total=cpu_seconds(),
    )
    return result


def profile_maskmed(batches_path: str, patch, threads: int, fast: bool = True) -> dict:
    """Where one MaskMed train step spends its time: wall time per part (forward of each network part, the
    criterion with its Hungarian matching, backward, clipping + optimizer) over 3 steps after a warm-up, and
    torch.profiler's most expensive operators (self CPU time) of one step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    from maskmed_core.model import criterion as criterion_module

    _, model, criterion, parameters, optimizer, _ = _maskmed_training_parts(patch, fast)
    parts: dict[str, float] = {}

    def add(name: str, seconds: float) -> None:
        parts[name] = parts.get(name, 0.0) + seconds

    for name in ("encoder", "transformer", "pixel_decoder", "query_decoder"):
        module = getattr(model, name)
        module.register_forward_pre_hook(lambda _m, _i, n=name: parts.__setitem__(f"_{n}", time.perf_counter()))
        module.register_forward_hook(
            lambda _m, _i, _o, n=name: add(f"forward: {n}", time.perf_counter() - parts[f"_{n}"])
        )
    match = criterion_module.hungarian_match

    def timed_match(*args, **kwargs):
        tick = time.perf_counter()
        result = match(*args, **kwargs)
        add("criterion: Hungarian matching", time.perf_counter() - tick)
        return result

    criterion_module.hungarian_match = timed_match
    images, labels = _load_batches(batches_path)

    def step(index: int) -> None:
        image, label_map = torch.from_numpy(images[index]), torch.from_numpy(labels[index]).long()
        tick = time.perf_counter()
        outputs = model(image)
        add("forward: total", time.perf_counter() - tick)
        tick = time.perf_counter()
        loss = criterion(outputs, label_map)["loss"]
        add("criterion: total (matching, point sampling, losses on 4 layers)", time.perf_counter() - tick)
        tick = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        add("backward", time.perf_counter() - tick)
        tick = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(parameters, GRAD_CLIP)
        optimizer.step()
        add("clip + optimizer", time.perf_counter() - tick)

    step(0)
    parts.clear()
    timed_steps = range(1, PROFILED_STEPS - 1)
    for index in timed_steps:
        step(index)
    timed = {k: v / len(timed_steps) for k, v in parts.items() if not k.startswith("_")}
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(PROFILED_STEPS - 1)
    operators = [
        (event.key, event.self_cpu_time_total / 1e6, event.count)
        for event in sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    ]
    return {"parts": timed, "operators": operators}


def measure_nnunet(batches_path: str, folder: str, env_root: str, batch: int, steps: int, threads: int) -> dict:
    nnunet_peer.set_environment(env_root, threads)
    import torch

    torch.set_num_threads(threads)
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans = json.loads((Path(folder) / "plans.json").read_text())
    dataset_json = json.loads((Path(folder) / "dataset.json").read_text())
    plans["configurations"][nnunet_peer.CONFIGURATION]["batch_size"] = batch
    plans["continue_training"] = False  # nnUNetTrainer.__init__ pops it (nnunetv2 2.8)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        trainer = nnUNetTrainer(plans, nnunet_peer.CONFIGURATION, 0, dataset_json, device=torch.device("cpu"))
        # nnUNetTrainer.initialize() without its dataset class (which needs a preprocessed dataset folder):
        trainer._set_batch_size_and_oversample()
        trainer.num_input_channels = determine_num_input_channels(
            trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json
        )
        torch.manual_seed(SEED)
        trainer.network = trainer.build_network_architecture(
            trainer.plans_manager,
            trainer.configuration_manager,
            trainer.num_input_channels,
            trainer.label_manager.num_segmentation_heads,
            trainer.enable_deep_supervision,
        ).to(trainer.device)
        trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
        trainer.loss = trainer._build_loss()
        trainer.was_initialized = True
        trainer.on_train_epoch_start()  # network.train(), the epoch's learning rate
    if trainer._do_i_compile() or trainer.grad_scaler is not None:
        raise RuntimeError("expected nnU-Net's CPU path: no torch.compile, no grad scaler, no autocast")

    # What nnU-Net's data loader hands over: float32 data, per deep-supervision scale int16 targets (B, 1, z, y, x).
    scales = trainer._get_deep_supervision_scales()
    downsample = DownsampleSegForDSTransform(ds_scales=scales)

    def prepare(image, label_map):  # nnUNetDataLoader.generate_train_batch's collation of the transformed samples
        per_sample = [
            downsample(segmentation=torch.from_numpy(sample).to(torch.int16)[None])["segmentation"]
            for sample in label_map
        ]
        targets = [torch.stack([sample[level] for sample in per_sample]) for level in range(len(scales))]
        return {"data": torch.from_numpy(image), "target": targets}

    def step(batch) -> float:
        return float(trainer.train_step(batch)["loss"])

    images, labels = _load_batches(batches_path)
    target_shapes = [tuple(t.shape[2:]) for t in prepare(images[0], labels[0])["target"]]
    rss_before = _rss_bytes()
    result = _timed_steps(step, prepare, steps, images, labels)
    result.update(
        peak=peak_rss_bytes(),
        rss_before=rss_before,
        params=sum(p.numel() for p in trainer.network.parameters()),
        batch_size=trainer.batch_size,
        target_shapes=target_shapes,
        loss_weights=[round(float(w), 4) for w in trainer.loss.weight_factors],
        loss=f"{type(trainer.loss).__name__}({type(trainer.loss.loss).__name__})",
        optimizer=_describe_sgd(trainer.optimizer),
        cpu_total=cpu_seconds(),
    )
    return result


def _describe_sgd(optimizer) -> str:
    group = optimizer.param_groups[0]
    return (
        f"{type(optimizer).__name__} lr {group['lr']:g}, momentum {group['momentum']}, "
        f"nesterov {group['nesterov']}, weight decay {group['weight_decay']:g}"
    )


def measure_loader(
    cache_dir: str,
    patch,
    batch: int,
    workers: int,
    batches: int,
    threads: int,
    image_path: str,
    label_path: str,
    mapping_path: str,
) -> dict:
    """Batches per second of MaskMed's training loader after start-up (and after draining the prefetched batches)."""
    import torch

    from maskmed_core.training.loader import make_loader

    torch.set_num_threads(threads)  # the main process's, as in training; make_loader gives workers 1 thread each
    cases, classes = _cases(cache_dir, patch, image_path, label_path, mapping_path)
    dataset, _ = _patch_dataset(cases, classes, patch)
    loader = make_loader(dataset, batch, workers)
    tick = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - tick
    for _ in range(2 * workers):  # batches the workers prefetched while the first was made (prefetch_factor 2)
        next(iterator)
    with _Window() as window:
        for _ in range(batches):
            next(iterator)
    del iterator, loader  # stops the persistent workers
    return {
        "first": first,
        "seconds_per_batch": window.wall / batches,
        "cpu_per_batch": window.cpu / batches,
        "others": window.others,
        "peak": peak_rss_bytes(),
        "cpu_total": cpu_seconds(),
    }


def _rss_bytes() -> int:
    from maskmed_core.inference.checks import proc_field_bytes

    return proc_field_bytes("/proc/self/status", "VmRSS") or 0


# ----- report ------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=PATCH_ZYX, metavar=("Z", "Y", "X"), help="patch size")
    parser.add_argument("--batch", type=int, default=BATCH, help="patches per train step and per loader batch")
    parser.add_argument("--steps", type=int, default=8, help=f"timed train steps per tool (+{WARMUP_STEPS} warm-up)")
    parser.add_argument("--skip-nnunet", action="store_true", help="run only MaskMed")
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2), help="loader worker counts to measure")
    parser.add_argument("--loader-batches", type=int, default=30, help="timed loader batches per worker count")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in both tools")
    parser.add_argument("--real-ct", default=REAL_CT, help="the real CT (default: ../shared/data/ct/...)")
    parser.add_argument("--real-labels", default=REAL_LABELS, help="its TotalSegmentator v2 label map")
    parser.add_argument("--label-mapping", default=LABEL_MAPPING, help="TotalSegmentator -> AMOS label mapping")
    parser.add_argument("--workdir", help="keep the cache and inputs here (default: a temporary folder, removed)")
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1 or args.loader_batches < 1:
        parser.error("--steps, --batch and --loader-batches must be at least 1")

    print_machine("nnunetv2", "monai")
    run_in_workdir(args.workdir, "maskmed-training-bench-", lambda workdir: _run(args, workdir))


def _run(args: argparse.Namespace, workdir: Path) -> None:
    patch, batch = tuple(args.patch), args.batch
    inputs = (args.real_ct, args.real_labels, args.label_mapping)
    cache_dir = str(workdir / "cache")
    batches_path = str(workdir / f"batches_{'x'.join(map(str, patch))}_b{batch}.npz")
    stored = max(WARMUP_STEPS + args.steps, PROFILED_STEPS)  # fewer would leave the profile without batches
    data = run_child(prepare_batches, batches_path, cache_dir, patch, batch, stored, *inputs)
    nnunet_folder, env_root = workdir / "nnunet_3d_fullres", workdir / "nnunet_env"
    nnunet_info = None
    if not args.skip_nnunet:
        nnunet_info = run_child(make_nnunet_plans, str(nnunet_folder), str(env_root), patch, args.threads)

    print(
        f"settings: patch {patch} (z, y, x) at {SPACING_ZYX} mm, batch {batch}, {args.steps} timed steps after "
        f"{WARMUP_STEPS} warm-up, {args.threads} torch threads, CPU (float32, no autocast), random weights, one "
        "process per measurement"
    )
    print(
        f"  data: real CT {os.path.basename(args.real_ct)} ({' x '.join(map(str, data['case_shape']))} voxels z, y, "
        f"x at 3 mm) with its TotalSegmentator labels mapped to the 15 AMOS classes; MaskMed's loader, "
        f"{AUGMENTATION!r} augmentation (sampled region {data['region']}), 33 % foreground-centred draws; "
        f"{data['foreground'] * 100:.0f} % foreground voxels, classes per patch min/median/max "
        f"{'/'.join(f'{v:g}' for v in data['classes_per_patch'])}; the same batches for both tools"
    )

    started = time.perf_counter()
    peer = None
    if not args.skip_nnunet:
        peer = run_child(
            measure_nnunet, batches_path, str(nnunet_folder), str(env_root), batch, args.steps, args.threads
        )
    former = run_child(measure_maskmed, batches_path, patch, args.steps, args.threads, False)
    ours = run_child(measure_maskmed, batches_path, patch, args.steps, args.threads, True)
    single = run_child(measure_maskmed, batches_path, patch, args.steps, 1, True) if args.threads != 1 else None
    print(
        f"  MaskMed small: {ours['queries']} queries, strides {ours['strides']}; build_criterion (set criterion); "
        f"{ours['optimizer']}; clip {GRAD_CLIP:g}"
    )
    if peer is not None and nnunet_info is not None:
        print(
            f"  nnU-Net 3d_fullres: nnUNetTrainer (its __init__, build_network_architecture, configure_optimizers, "
            f"_build_loss, on_train_epoch_start, train_step), PlainConvUNet {nnunet_info['stages']} stages, features "
            f"{nnunet_info['features']}, deep supervision at {len(peer['target_shapes'])} scales; {peer['loss']} "
            f"weights {peer['loss_weights']}; {peer['optimizer']}; clip 12"
        )
    print(
        f"measured in {time.perf_counter() - started:.0f} s; load average (1, 5, 15 min) now: "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} (above {args.threads} means other processes shared the CPU)"
    )

    print()
    header = (
        f"{'tool':18s} {'params M':>8s} {'step s (median)':>15s} {'min-max s':>11s} {'CPU s/step':>10s} "
        f"{'others':>6s} {'peak RSS GiB':>12s} {'time / nnU-Net':>14s} {'mem / nnU-Net':>13s}"
    )
    print(header)
    print("-" * len(header))
    rows = [("MaskMed former step", former), ("MaskMed small", ours)]
    if single is not None:
        rows.append(("MaskMed, 1 thread", single))
    if peer is not None:
        rows.insert(0, ("nnU-Net 3d_fullres", peer))
    for name, r in rows:
        median = statistics.median(r["times"])
        spread = f"{min(r['times']):.2f}-{max(r['times']):.2f}"
        if peer is not None:
            time_ratio = f"{median / statistics.median(peer['times']):14.2f}"
            mem_ratio = f"{r['peak'] / peer['peak']:13.2f}"
        else:
            time_ratio, mem_ratio = f"{'-':>14s}", f"{'-':>13s}"
        print(
            f"{name:18s} {r['params'] / 1e6:8.2f} {median:15.2f} {spread:>11s} {r['cpu_per_step']:10.2f} "
            f"{r['others']:6.2f} {r['peak'] / GIB:12.2f} {time_ratio} {mem_ratio}"
        )
    print(
        "(step: forward + loss + backward + clip + optimizer step; CPU s/step: user + system time of all threads; "
        "others: cores kept busy by other processes during the timed steps; peak RSS: VmHWM of the whole process)"
    )
    for name, r in rows:
        losses = ", ".join(f"{v:.3f}" for v in r["losses"])
        print(f"  {name}: RSS before the first step {r['rss_before'] / GIB:.2f} GiB; losses {losses}")
    speedup = statistics.median(former["times"]) / statistics.median(ours["times"])
    print(
        f"  MaskMed training step, this version vs the former step (same function, same batches, {args.threads} "
        f"threads): {speedup:.2f}x steps per second ({statistics.median(former['times']):.2f} s -> "
        f"{statistics.median(ours['times']):.2f} s); peak RSS {ours['peak'] / former['peak']:.2f}x"
    )
    if single is not None:
        print(
            f"  1 torch thread instead of {args.threads}: {statistics.median(single['times']):.2f} s per step "
            f"({statistics.median(ours['times']) / statistics.median(single['times']):.2f}x the speed); on a busy "
            "2-core machine one thread is the robust choice (OpenMP threads wait for each other when one is "
            "descheduled)"
        )
    profile_result = run_child(profile_maskmed, batches_path, patch, args.threads, True)
    print()
    print(f"profile of one MaskMed train step (this version, {args.threads} threads; wall seconds, mean of 3 steps):")
    for name, seconds in sorted(profile_result["parts"].items(), key=lambda item: -item[1]):
        print(f"  {name:66s} {seconds:7.2f}")
    print("  most expensive operators of one step (torch.profiler, self CPU seconds summed over threads, calls):")
    for key, seconds, count in profile_result["operators"]:
        print(f"    {key[:60]:60s} {seconds:7.2f} {count:6d}")
    if peer is not None:
        ratio = statistics.median(ours["times"]) / statistics.median(peer["times"])
        print(
            f"  MaskMed small / nnU-Net: {ratio:.2f}x step time, {ours['cpu_per_step'] / peer['cpu_per_step']:.2f}x "
            f"CPU time per step, {ours['peak'] / peer['peak']:.2f}x peak RSS"
        )

    step_s = statistics.median(ours["times"])
    print()
    print(
        f"data loading: MaskMed PatchDataset + make_loader, {AUGMENTATION!r} augmentation, batch {batch}, "
        f"{args.loader_batches} timed batches per setting; MaskMed's train step {step_s:.2f} s = "
        f"{1 / step_s:.3f} steps/s"
    )
    header = (
        f"{'workers':>7s} {'batches/s':>9s} {'s/batch':>7s} {'CPU s/batch':>11s} {'first batch s':>13s} "
        f"{'others':>6s} {'loader / step ratio':>19s} {'keeps up':>8s}"
    )
    print(header)
    print("-" * len(header))
    loader_others = []
    for workers in args.workers:
        r = run_child(measure_loader, cache_dir, patch, batch, workers, args.loader_batches, args.threads, *inputs)
        rate = 1 / r["seconds_per_batch"]
        ratio = rate * step_s
        loader_others.append((workers, r["others"]))
        print(
            f"{workers:7d} {rate:9.2f} {r['seconds_per_batch']:7.2f} {r['cpu_per_batch']:11.2f} {r['first']:13.2f} "
            f"{r['others']:6.2f} {ratio:19.1f} {'yes' if ratio >= 1 else 'NO':>8s}"
        )
        if workers == 0:
            share = r["cpu_per_batch"] / ours["cpu_per_step"]
            print(
                f"        (one batch costs {share * 100:.0f} % of a MaskMed train step's CPU time; with workers "
                "it comes out of the same cores as the step)"
            )
    print(
        "(loader / step ratio: batches/s over MaskMed's train steps/s, measured apart; >= 1: the loader keeps up; "
        "others: cores kept busy by other processes meanwhile)"
    )
    contended = [f"the {name} steps" for name, r in rows if r["others"] > 0.2]
    contended += [f"the loader with {workers} workers" for workers, others in loader_others if others > 0.2]
    if contended:
        print(f"warning: other processes shared the CPU during {', '.join(contended)}: those times are inflated")


if __name__ == "__main__":
    main()
