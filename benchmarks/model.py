"""Forward time and peak memory per patch: MaskMed `small` and `base` next to nnU-Net v2's default network.

The peer is nnU-Net v2's default 3d_fullres network as nnU-Net plans it for a CT (6 stages,
32..320 features, two 3x3x3 convs per stage, instance norm, LeakyReLU), built with
`dynamic_network_architectures.PlainConvUNet`, with the same patch size and class count.
Each measurement runs in a fresh child process so that one model's memory does not hide another's.
Also reports the Full-Scale Aware Deformable Transformer's peak memory (forward + backward, training)
for a 128^3 patch at batch 2, the figure that says whether it scales.

Goal: `small` forward at most 1.0x the nnU-Net time on CPU.

The peer needs `pip install --no-deps dynamic_network_architectures einops` (with its dependencies
pip would replace the CPU torch by a CUDA build through timm/torchvision).

    python3 -m benchmarks.model                      # CPU, 128^3, 15 classes
    python3 -m benchmarks.model --device cuda --batch 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
import warnings

import torch


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_network(name: str, num_classes: int, patch: tuple[int, int, int]) -> torch.nn.Module:
    if name.startswith("nnU-Net 3d_fullres"):
        from dynamic_network_architectures.architectures.unet import PlainConvUNet

        network = PlainConvUNet(
            input_channels=1,
            n_stages=6,
            features_per_stage=[32, 64, 128, 256, 320, 320],
            conv_op=torch.nn.Conv3d,
            kernel_sizes=3,
            strides=[1, 2, 2, 2, 2, 2],
            n_conv_per_stage=2,
            num_classes=num_classes + 1,
            n_conv_per_stage_decoder=2,
            conv_bias=True,
            norm_op=torch.nn.InstanceNorm3d,
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=torch.nn.LeakyReLU,
            nonlin_kwargs={"inplace": True},
            deep_supervision=False,
        )
        if "oneDNN" in name:
            # The same network with MaskMed's Conv3d, which always takes oneDNN on CPU (PyTorch falls back to
            # its slow im2col kernel for small batch-1 inputs): separates the architecture from that routing.
            from maskmed_core.model.blocks import Conv3d

            for module in network.modules():
                if type(module) is torch.nn.Conv3d:
                    module.__class__ = Conv3d
        return network
    from maskmed_core.model import MaskMed, preset

    preset_name = name.split()[-1]
    return MaskMed(preset(preset_name, num_classes, patch_size=patch, spacing=(1.0, 1.0, 1.0)))


def _forward(network: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    outputs = network(image)
    if isinstance(outputs, dict):
        # What inference needs from a patch: the per-class probabilities at patch resolution.
        return network.head.class_probabilities(outputs)
    return outputs.softmax(1)


def measure_forward(name, num_classes, patch, batch, device, repeats, queue):
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    network = build_network(name, num_classes, patch).to(device).eval()
    params = sum(p.numel() for p in network.parameters())
    image = torch.randn(batch, 1, *patch, device=device)
    with torch.inference_mode():
        _forward(network, image)  # warm-up (oneDNN primitive creation, cuDNN autotune)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = _current_rss_mib()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _forward(network, image)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    cuda = device == "cuda"
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else max(0.0, _peak_rss_mib() - rss_before)
    queue.put((name, params, statistics.median(times), peak))


def measure_transformer(patch, batch, device, queue):
    """FSA transformer alone, training mode, forward + backward on `small` encoder features."""
    warnings.filterwarnings("ignore")
    from maskmed_core.model import MaskMed, preset
    from maskmed_core.ops import active_backend

    model = MaskMed(preset("small", 15, patch_size=patch, spacing=(1.0, 1.0, 1.0))).to(device)
    with torch.no_grad():
        features = model.encoder(torch.randn(batch, 1, *patch, device=device))
    features = [f.detach().requires_grad_() for f in features]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    rss_before = _current_rss_mib()
    start = time.perf_counter()
    outputs = model.transformer(features)
    sum(o.float().mean() for o in outputs).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = max(0.0, _peak_rss_mib() - rss_before)
    shapes = [tuple(f.shape[2:]) for f in features]
    queue.put((shapes, elapsed, peak, active_backend(device)))


def run_child(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128), help="patch size (d h w), voxels")
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--skip-base", action="store_true", help="leave out the paper-scale preset (slow on CPU)")
    parser.add_argument("--skip-transformer-memory", action="store_true")
    args = parser.parse_args()
    patch = tuple(args.patch)

    from maskmed_core.cli import _cpu_name

    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"patch {patch} voxels, batch {args.batch}, {args.classes} classes, device {args.device}, "
          f"median of {args.repeats} forward passes (inference mode, after one warm-up)")
    names = ["nnU-Net 3d_fullres", "nnU-Net 3d_fullres oneDNN", "MaskMed small"]
    names += [] if args.skip_base else ["MaskMed base"]
    rows = {}
    for name in names:
        rows[name] = run_child(measure_forward, name, args.classes, patch, args.batch, args.device, args.repeats)
    peer = rows["nnU-Net 3d_fullres"]
    print()
    print(f"{'network':26s} {'params (M)':>10s} {'forward (s)':>12s} {'peak mem (MiB)':>15s} "
          f"{'time / nnU-Net':>15s} {'mem / nnU-Net':>14s}")
    for name, params, seconds, peak in rows.values():
        print(f"{name:26s} {params / 1e6:10.2f} {seconds:12.3f} {peak:15.0f} "
              f"{seconds / peer[2]:15.2f} {peak / max(peer[3], 1e-9):14.2f}")

    if not args.skip_transformer_memory:
        shapes, seconds, peak, backend = run_child(measure_transformer, (128, 128, 128), 2, args.device)
        print()
        print(f"FSA transformer of `small`, 128^3 patch, batch 2, forward + backward (op backend: {backend}):")
        print(f"  value levels {shapes}")
        print(f"  time {seconds:.2f} s, peak memory {peak:.0f} MiB")


if __name__ == "__main__":
    main()
