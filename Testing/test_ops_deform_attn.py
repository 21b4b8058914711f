"""Every built backend of ms_deform_attn3d equals the PyTorch reference (float64, forward and gradients)."""

from __future__ import annotations

import os

import pytest
import torch

from maskmed_core.ops import available_backends, ms_deform_attn3d, ms_deform_attn3d_reference

COMPILED = [b for b in ("cpu", "cuda") if b in available_backends()]


def _device(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


def make_inputs(shapes, n=2, lq=7, m=2, dh=3, p=2, device="cpu", dtype=torch.float64, seed=0, spread=0.2):
    """Random op inputs; locations in [-spread, 1 + spread] so some fall outside the volume."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    num_levels = len(shapes)
    value = torch.randn(n, s, m, dh, generator=generator, dtype=dtype)
    locations = torch.rand(n, lq, m, num_levels, p, 3, generator=generator, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(n, lq, m, num_levels, p, generator=generator, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    tensors = [t.to(device) for t in (value, spatial_shapes, level_start_index, locations, weights)]
    return tensors


def special_locations(shapes, n, m, p, dtype=torch.float64):
    """Locations exactly on faces (0, 1), voxel centres ((i+0.5)/size), voxel corners and outside."""
    num_levels = len(shapes)
    points = []
    for d, h, w in shapes:
        for x, y, z in [
            (0.0, 0.0, 0.0),
            (1.0, 1.0, 1.0),
            (0.5 / w, 0.5 / h, 0.5 / d),
            ((w - 0.5) / w, (h - 0.5) / h, (d - 0.5) / d),
            (1.0 / w, 2.0 / h, 1.0 / d),
            (-0.3, 0.5, 0.5),
            (0.5, 1.4, 0.5),
            (0.5, 0.5, -1.0 / d),
            (1.0 + 0.5 / w, 0.5, 0.5),
        ]:
            points.append((x, y, z))
    lq = len(points)
    loc = torch.tensor(points, dtype=dtype).view(lq, 1, 1, 1, 3).expand(lq, m, num_levels, p, 3)
    return loc.unsqueeze(0).expand(n, -1, -1, -1, -1, -1).contiguous()


def compare(backend, inputs, atol=1e-9):
    value, shapes, starts, locations, weights = inputs
    ref_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ref = ms_deform_attn3d_reference(*ref_in)
    out = ms_deform_attn3d(*out_in, backend=backend)
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-7)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    for index, name in ((0, "value"), (3, "sampling_locations"), (4, "attention_weights")):
        torch.testing.assert_close(out_in[index].grad, ref_in[index].grad, atol=atol, rtol=1e-7, msg=name)


def test_reference_is_always_available():
    assert available_backends()[0] == "reference"


def test_reference_samples_voxel_centres_exactly():
    # One level, one head, one point at the centre of voxel (d=1, h=2, w=3): the output is that voxel's value.
    d, h, w = 3, 4, 5
    value = torch.arange(d * h * w, dtype=torch.float64).view(1, d * h * w, 1, 1)
    shapes = torch.tensor([[d, h, w]])
    starts = torch.tensor([0])
    loc = torch.tensor([(3 + 0.5) / w, (2 + 0.5) / h, (1 + 0.5) / d], dtype=torch.float64).view(1, 1, 1, 1, 1, 3)
    weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn3d_reference(value, shapes, starts, loc, weights)
    assert out.item() == pytest.approx(1 * h * w + 2 * w + 3)


def test_reference_zero_outside_and_half_on_face():
    value = torch.ones(1, 8, 1, 1, dtype=torch.float64)
    shapes, starts = torch.tensor([[2, 2, 2]]), torch.tensor([0])
    weights = torch.ones(1, 2, 1, 1, 1, dtype=torch.float64)
    loc = torch.tensor([[-0.5, 0.5, 0.5], [0.0, 0.5, 0.5]], dtype=torch.float64).view(1, 2, 1, 1, 1, 3)
    out = ms_deform_attn3d_reference(value, shapes, starts, loc, weights)
    # Fully outside -> 0; on the x=0 face -> half of the trilinear corners are outside.
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize(
    "shapes",
    [
        [(4, 8, 8), (8, 16, 16), (16, 32, 32)],
        [(3, 5, 7)],
        [(2, 3, 4), (3, 4, 5), (4, 5, 6), (5, 6, 7), (1, 2, 2)],
    ],
)
def test_backend_matches_reference_levels(backend, shapes):
    compare(backend, make_inputs(shapes, device=_device(backend)))


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("m,p", [(1, 1), (2, 4), (8, 8), (3, 5)])
def test_backend_matches_reference_heads_points(backend, m, p):
    compare(backend, make_inputs([(3, 4, 5), (2, 2, 3)], m=m, p=p, dh=4, device=_device(backend), seed=m * 10 + p))


@pytest.mark.parametrize("backend", COMPILED)
def test_backend_matches_reference_on_faces_centres_and_outside(backend):
    shapes = [(4, 8, 8), (2, 3, 5)]
    value, spatial_shapes, starts, _, _ = make_inputs(shapes, m=2, p=2)
    locations = special_locations(shapes, n=2, m=2, p=2)
    weights = torch.rand(locations.shape[:-1], dtype=torch.float64)
    device = _device(backend)
    compare(backend, [t.to(device) for t in (value, spatial_shapes, starts, locations, weights)])


@pytest.mark.parametrize("backend", COMPILED)
def test_backend_gradcheck(backend):
    inputs = make_inputs([(2, 3, 4), (1, 2, 2)], n=1, lq=2, m=2, dh=2, p=2, device=_device(backend), spread=0.1)
    value, shapes, starts, locations, weights = inputs
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()

    def fn(v, loc, w):
        return ms_deform_attn3d(v, shapes, starts, loc, w, backend=backend)

    assert torch.autograd.gradcheck(fn, (value, locations, weights), eps=1e-6, atol=1e-5)


def test_reference_gradcheck():
    value, shapes, starts, locations, weights = make_inputs([(2, 3, 4)], n=1, lq=2, m=1, dh=2, p=1, spread=0.1)
    for t in (value, locations, weights):
        t.requires_grad_()

    def fn(v, loc, w):
        return ms_deform_attn3d_reference(v, shapes, starts, loc, w)

    assert torch.autograd.gradcheck(fn, (value, locations, weights), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", COMPILED)
def test_backend_float32_close_to_reference(backend):
    inputs = make_inputs([(4, 8, 8), (8, 16, 16)], m=4, dh=8, p=4, lq=50, dtype=torch.float32, device=_device(backend))
    out = ms_deform_attn3d(*inputs, backend=backend)
    ref = ms_deform_attn3d_reference(*inputs)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_takes_half_precision_values_with_float32_locations(dtype):
    # As the backends are called with autocast off (benchmarks/deform_attn.py --dtype bfloat16 failed on a GPU).
    inputs = make_inputs([(4, 8, 8), (8, 16, 16)], m=4, dh=8, p=4, lq=50, dtype=torch.float32)
    value = inputs[0].to(dtype)
    out = ms_deform_attn3d_reference(value, *inputs[1:])
    assert out.dtype == dtype
    expected = ms_deform_attn3d_reference(value.float(), *inputs[1:])
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)
    value.requires_grad_()
    ms_deform_attn3d_reference(value, *inputs[1:]).float().sum().backward()
    assert value.grad is not None and value.grad.dtype == dtype


@pytest.mark.cuda
@pytest.mark.skipif("cuda" not in COMPILED, reason="needs a CUDA GPU and the built cuda backend")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_accumulates_in_float32(dtype):
    inputs = make_inputs([(4, 8, 8), (8, 16, 16)], m=4, dh=8, p=4, lq=50, dtype=torch.float32, device="cuda")
    value = inputs[0].to(dtype)
    out = ms_deform_attn3d(value, *inputs[1:], backend="cuda")
    assert out.dtype == dtype
    ref = ms_deform_attn3d_reference(value.float(), *inputs[1:])
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    value.requires_grad_()
    ms_deform_attn3d(value, *inputs[1:], backend="cuda").float().sum().backward()
    assert value.grad is not None and torch.isfinite(value.grad.float()).all()


def test_forced_reference_environment(monkeypatch):
    from maskmed_core.ops.dispatch import active_backend

    monkeypatch.setenv("MASKMED_OPS", "reference")
    assert active_backend("cpu") == "reference"


def test_unknown_backend_is_refused():
    inputs = make_inputs([(2, 2, 2)])
    with pytest.raises(ValueError, match="unknown backend"):
        ms_deform_attn3d(*inputs, backend="tpu")


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="only CI guarantees that setup.sh ran `maskmed build-ops`")
def test_cpu_backend_is_built_in_ci():
    assert "cpu" in available_backends(), "setup.sh should have built the C++ op; run `maskmed build-ops --verbose`"


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("broken, message", [
    ("starts", "level_start_index\\[1\\] = 7 but the levels before it hold 8 voxels"),
    ("shape", "spatial_shapes\\[0\\] = \\(0, 2, 2\\) must be positive"),
    ("weights", "attention_weights .* must equal the first five sizes"),
])
def test_backends_share_the_input_checks(backend, broken, message):
    """ms_deform_attn3d_checks.h: both compiled backends refuse the same inconsistent inputs."""
    value, shapes, starts, locations, weights = make_inputs([(2, 2, 2), (1, 2, 3)], device=_device(backend))
    if broken == "starts":
        starts = starts.clone()
        starts[1] = 7
    elif broken == "shape":
        shapes = shapes.clone()
        shapes[0, 0] = 0
    else:
        weights = weights[..., :1]
    with pytest.raises(RuntimeError, match=f"ms_deform_attn3d \\({backend}\\): {message}"):
        ms_deform_attn3d(value, shapes, starts, locations, weights, backend=backend)


def test_build_ops_exit_code_follows_the_build_status(monkeypatch, capsys):
    from maskmed_core.cli import main
    from maskmed_core.ops import build

    def reports(status):
        return lambda kinds, verbose=False: [build.BuildReport("cpu", status, None, status.value)]

    monkeypatch.setattr(build, "build_ops", reports(build.BuildStatus.SKIPPED))
    assert main(["build-ops"]) == 0
    monkeypatch.setattr(build, "build_ops", reports(build.BuildStatus.FAILED))
    assert main(["build-ops"]) == 1
    assert "failed to build" in capsys.readouterr().err
    assert build.BuildReport("cpu", build.BuildStatus.ALREADY_BUILT, None, "").built
