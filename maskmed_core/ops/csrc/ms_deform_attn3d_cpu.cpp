// 3D multi-scale deformable attention: CPU forward and backward (ATen, OpenMP through at::parallel_for).
//
// Semantics follow maskmed_core/ops/reference.py exactly, which is 5-D grid_sample with trilinear
// interpolation, zero padding and align_corners=False:
//   * value (N, S, M, Dh), every level flattened in (d, h, w) C order, levels concatenated along S;
//   * sampling_locations (N, Lq, M, L, P, 3), last axis (x, y, z) = (w, h, d), 0 and 1 the outer faces;
//   * attention_weights (N, Lq, M, L, P);
//   * output (N, Lq, M*Dh).
// The pixel coordinate of a location is computed with grid_sample's own arithmetic
// (grid = 2*loc - 1, pixel = ((grid + 1) * size - 1) / 2) so that locations exactly on voxel centres and
// corners pick the same floor() corner, and therefore the same one-sided gradient, as the reference.
// Corners outside the volume contribute zero value; their interpolation weights still take part in the
// location gradient of the corners that are inside, as in grid_sample.
//
// Parallelisation:
//   * forward: over (n, q) queries; every query writes its own output row.
//   * backward: over (n, m, l) work items. grad_value[n, level l, :, m, :] is touched only by item
//     (n, m, l), and grad_sampling_locations / grad_attention_weights[n, :, m, l, :] only by that item,
//     so nothing races and nothing needs atomics or per-thread buffers. When there are fewer items than
//     threads, queries are additionally split into chunks and grad_value is accumulated with atomic adds.
//
// Speed: the work is dominated by cache misses on the random trilinear corners of the large levels, so
// corner footprints are computed a few samples ahead and their cache lines prefetched; inner loops run over
// the Dh contiguous channels of one head with Dh a compile-time constant for the common widths.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ms_deform_attn3d_checks.h"

// Prefetch one cache line into all cache levels; RW = 1 announces a write.
#if defined(__GNUC__) || defined(__clang__)
#define MASKMED_PREFETCH(address, RW) __builtin_prefetch((address), (RW), 3)
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <xmmintrin.h>
#define MASKMED_PREFETCH(address, RW) _mm_prefetch(reinterpret_cast<const char*>(address), _MM_HINT_T0)
#else
#define MASKMED_PREFETCH(address, RW) ((void)0)
#endif

#ifndef MASKMED_PREFETCH_DISTANCE
#define MASKMED_PREFETCH_DISTANCE 8
#endif

namespace {

// Trilinear footprint of one sampling location in one level: the 8 corners (z-major, then y, then x),
// their flat voxel offsets inside the level, their weights and whether each one lies inside the volume.
template <typename scalar_t>
struct Footprint {
  int64_t offset[8];
  scalar_t weight[8];
  bool inside[8];
  // 1-D weights: index 0 is the floor corner, index 1 the next one.
  scalar_t wx[2], wy[2], wz[2];
};

// grid_sample's unnormalisation for align_corners=False, applied to grid = 2 * loc - 1 as the reference
// does; kept as the same sequence of roundings so that floor() agrees on exact voxel centres and faces.
template <typename scalar_t>
inline scalar_t pixel_coordinate(scalar_t loc, int64_t size) {
  const scalar_t grid = loc * static_cast<scalar_t>(2) - static_cast<scalar_t>(1);
  return ((grid + static_cast<scalar_t>(1)) * static_cast<scalar_t>(size) - static_cast<scalar_t>(1)) /
         static_cast<scalar_t>(2);
}

// Fills the footprint; returns false when every corner is outside (the sample contributes nothing,
// neither value nor gradient). A coordinate c has corners floor(c) and floor(c) + 1, so at least one is
// inside exactly when -1 <= c < size. NaN fails that test too and is treated as outside.
template <typename scalar_t>
inline bool footprint(const scalar_t* loc, int64_t D, int64_t H, int64_t W, Footprint<scalar_t>& f) {
  const scalar_t ix = pixel_coordinate(loc[0], W);
  const scalar_t iy = pixel_coordinate(loc[1], H);
  const scalar_t iz = pixel_coordinate(loc[2], D);
  if (!(ix >= static_cast<scalar_t>(-1) && ix < static_cast<scalar_t>(W) && iy >= static_cast<scalar_t>(-1) &&
        iy < static_cast<scalar_t>(H) && iz >= static_cast<scalar_t>(-1) && iz < static_cast<scalar_t>(D))) {
    return false;
  }
  const scalar_t fx = std::floor(ix), fy = std::floor(iy), fz = std::floor(iz);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy), z0 = static_cast<int64_t>(fz);
  // Same expressions as grid_sample: the weight of a corner is the distance to the opposite corner.
  f.wx[0] = (fx + 1) - ix;
  f.wx[1] = ix - fx;
  f.wy[0] = (fy + 1) - iy;
  f.wy[1] = iy - fy;
  f.wz[0] = (fz + 1) - iz;
  f.wz[1] = iz - fz;
  const bool okx[2] = {x0 >= 0, x0 + 1 < W};
  const bool oky[2] = {y0 >= 0, y0 + 1 < H};
  const bool okz[2] = {z0 >= 0, z0 + 1 < D};
  const int64_t base = (z0 * H + y0) * W + x0;
  int k = 0;
  for (int dz = 0; dz < 2; ++dz) {
    for (int dy = 0; dy < 2; ++dy) {
      for (int dx = 0; dx < 2; ++dx, ++k) {
        f.offset[k] = base + (dz * H + dy) * W + dx;
        f.weight[k] = f.wx[dx] * f.wy[dy] * f.wz[dz];
        f.inside[k] = okx[dx] && oky[dy] && okz[dz];
      }
    }
  }
  return true;
}

// Atomic floating-point add (C++17 has no std::atomic_ref): a compare-and-swap loop on the value's bits.
template <typename scalar_t>
inline void atomic_add(scalar_t* address, scalar_t increment) {
#if defined(__GNUC__) || defined(__clang__)
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(bits_t) == sizeof(scalar_t), "float or double only");
  bits_t* bits = reinterpret_cast<bits_t*>(address);
  bits_t expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  while (true) {
    scalar_t current;
    std::memcpy(&current, &expected, sizeof(scalar_t));
    const scalar_t updated = current + increment;
    bits_t desired;
    std::memcpy(&desired, &updated, sizeof(scalar_t));
    if (__atomic_compare_exchange_n(bits, &expected, desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      return;
    }
  }
#else
  static_assert(sizeof(std::atomic<scalar_t>) == sizeof(scalar_t), "lock-free floating-point atomics needed");
  auto* atom = reinterpret_cast<std::atomic<scalar_t>*>(address);
  scalar_t expected = atom->load(std::memory_order_relaxed);
  while (!atom->compare_exchange_weak(expected, expected + increment, std::memory_order_relaxed)) {
  }
#endif
}

using maskmed::Sizes;

// Software prefetch: samples are prepared (footprint computed, corner cache lines requested) this many
// samples ahead of the one being accumulated, so that the random accesses of several samples overlap.
constexpr int64_t kPrefetchDistance = MASKMED_PREFETCH_DISTANCE;
constexpr int64_t kRing = 2 * kPrefetchDistance;  // power of two, > kPrefetchDistance

// Prefetches every cache line of one voxel's Dh values of one head.
template <bool WRITE, typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t dh) {
  const char* begin = reinterpret_cast<const char*>(row);
  const char* last = reinterpret_cast<const char*>(row + dh) - 1;
  for (const char* line = begin; line <= last; line += 64) MASKMED_PREFETCH(line, WRITE ? 1 : 0);
  if ((reinterpret_cast<uintptr_t>(begin) >> 6) != (reinterpret_cast<uintptr_t>(last) >> 6)) {
    MASKMED_PREFETCH(last, WRITE ? 1 : 0);
  }
}

// ------------------------------------------------------------------------------------------------------
// Forward. DH > 0 fixes the head width at compile time (the inner loops unroll); DH == 0 reads it at run time.
// Samples of one chunk of queries are contiguous: sample j = ((n * Lq + q) * M + m) * L * P + l * P + p.
template <typename scalar_t, int DH>
void forward_kernel(const scalar_t* __restrict value, const int64_t* shapes, const int64_t* starts,
                    const scalar_t* __restrict locations, const scalar_t* __restrict weights,
                    scalar_t* __restrict output, const Sizes& s) {
  const int64_t dh = DH > 0 ? DH : s.Dh;
  const int64_t M = s.M, L = s.L, P = s.P, Lq = s.Lq;
  const int64_t LP = L * P;
  const int64_t voxel_stride = M * dh;  // distance between neighbouring voxels of one head in value
  const int64_t samples_per_query = M * LP;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, samples_per_query));
  at::parallel_for(0, s.N * Lq, grain, [&](int64_t begin, int64_t end) {
    Footprint<scalar_t> ring[kRing];
    bool inside_any[kRing];
    const scalar_t* base[kRing];
    const int64_t first = begin * samples_per_query, last = end * samples_per_query;
    auto prepare = [&](int64_t j) {
      const int64_t slot = j & (kRing - 1);
      const int64_t l = (j / P) % L;
      const int64_t row = j / LP;  // (n * Lq + q) * M + m
      const int64_t m = row % M;
      const int64_t n = row / (M * Lq);
      const int64_t D = shapes[3 * l], H = shapes[3 * l + 1], W = shapes[3 * l + 2];
      Footprint<scalar_t>& f = ring[slot];
      inside_any[slot] = footprint(locations + 3 * j, D, H, W, f);
      const scalar_t* b = value + ((n * s.S + starts[l]) * M + m) * dh;
      base[slot] = b;
      if (inside_any[slot]) {
        for (int k = 0; k < 8; ++k) {
          if (f.inside[k]) prefetch_row<false>(b + f.offset[k] * voxel_stride, dh);
        }
      }
    };
    for (int64_t j = first; j < std::min(last, first + kPrefetchDistance); ++j) prepare(j);
    scalar_t acc_local[DH > 0 ? DH : 1] = {};  // zeroed again at the first sample of every row
    for (int64_t j = first; j < last; ++j) {
      if (j + kPrefetchDistance < last) prepare(j + kPrefetchDistance);
      const int64_t row = j / LP;
      scalar_t* __restrict out = output + row * dh;
      scalar_t* __restrict acc = DH > 0 ? acc_local : out;
      if (j % LP == 0) {
        for (int64_t c = 0; c < dh; ++c) acc[c] = 0;
      }
      const int64_t slot = j & (kRing - 1);
      if (inside_any[slot]) {
        const Footprint<scalar_t>& f = ring[slot];
        const scalar_t a = weights[j];
        for (int k = 0; k < 8; ++k) {
          if (!f.inside[k]) continue;
          const scalar_t w = a * f.weight[k];
          const scalar_t* __restrict v = base[slot] + f.offset[k] * voxel_stride;
          for (int64_t c = 0; c < dh; ++c) acc[c] += w * v[c];
        }
      }
      if (DH > 0 && (j + 1) % LP == 0) {
        for (int64_t c = 0; c < dh; ++c) out[c] = acc[c];
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------------
// Backward for queries [q_begin, q_end) of work item (n, m, l). ATOMIC adds into grad_value atomically
// (used only when several threads share one item's grad_value slice).
template <typename scalar_t, int DH, bool ATOMIC>
void backward_item(const scalar_t* __restrict value, const int64_t* shapes, const int64_t* starts,
                   const scalar_t* __restrict locations, const scalar_t* __restrict weights,
                   const scalar_t* __restrict grad_output, scalar_t* __restrict grad_value,
                   scalar_t* __restrict grad_locations, scalar_t* __restrict grad_weights, const Sizes& s,
                   int64_t n, int64_t m, int64_t l, int64_t q_begin, int64_t q_end) {
  const int64_t dh = DH > 0 ? DH : s.Dh;
  const int64_t M = s.M, L = s.L, P = s.P, Lq = s.Lq;
  const int64_t voxel_stride = M * dh;
  const int64_t D = shapes[3 * l], H = shapes[3 * l + 1], W = shapes[3 * l + 2];
  const scalar_t sD = static_cast<scalar_t>(D), sH = static_cast<scalar_t>(H), sW = static_cast<scalar_t>(W);
  const int64_t level_offset = (n * s.S + starts[l]) * voxel_stride + m * dh;
  const scalar_t* value_l = value + level_offset;
  scalar_t* grad_value_l = grad_value + level_offset;
  Footprint<scalar_t> ring[kRing];
  bool inside_any[kRing];
  // Sample index of the j-th (q, p) of this item.
  auto sample_of = [&](int64_t j) {
    const int64_t q = q_begin + j / P, p = j % P;
    return (((n * Lq + q) * M + m) * L + l) * P + p;
  };
  auto prepare = [&](int64_t j) {
    const int64_t slot = j & (kRing - 1);
    Footprint<scalar_t>& f = ring[slot];
    inside_any[slot] = footprint(locations + 3 * sample_of(j), D, H, W, f);
    if (inside_any[slot]) {
      for (int k = 0; k < 8; ++k) {
        if (!f.inside[k]) continue;
        const int64_t offset = f.offset[k] * voxel_stride;
        prefetch_row<false>(value_l + offset, dh);
        prefetch_row<true>(grad_value_l + offset, dh);
      }
    }
  };
  const int64_t count = (q_end - q_begin) * P;
  for (int64_t j = 0; j < std::min(count, kPrefetchDistance); ++j) prepare(j);
  for (int64_t j = 0; j < count; ++j) {
    if (j + kPrefetchDistance < count) prepare(j + kPrefetchDistance);
    const int64_t sample = sample_of(j);
    const int64_t q = q_begin + j / P;
    const scalar_t* __restrict g = grad_output + ((n * Lq + q) * M + m) * dh;
    scalar_t* grad_loc = grad_locations + 3 * sample;
    const int64_t slot = j & (kRing - 1);
    if (!inside_any[slot]) {
      grad_loc[0] = grad_loc[1] = grad_loc[2] = 0;
      grad_weights[sample] = 0;
      continue;
    }
    const Footprint<scalar_t>& f = ring[slot];
    const scalar_t a = weights[sample];
    // dot[k] = <value at corner k, grad_output>; zero for corners outside.
    scalar_t dot[8];
    for (int k = 0; k < 8; ++k) {
      dot[k] = 0;
      if (!f.inside[k]) continue;
      const int64_t offset = f.offset[k] * voxel_stride;
      const scalar_t* __restrict v = value_l + offset;
      scalar_t* gv = grad_value_l + offset;
      const scalar_t w = a * f.weight[k];
      scalar_t acc = 0;
      for (int64_t c = 0; c < dh; ++c) {
        acc += v[c] * g[c];
        if (ATOMIC) {
          atomic_add(gv + c, w * g[c]);
        } else {
          gv[c] += w * g[c];
        }
      }
      dot[k] = acc;
    }
    // grad of the sample w.r.t. its pixel coordinate, per axis: sum_k dot[k] * d weight[k] / d coord,
    // with d wx[0] / dx = -1 and d wx[1] / dx = +1 (likewise y and z), as grid_sample computes it.
    scalar_t gx = 0, gy = 0, gz = 0, ga = 0;
    int k = 0;
    for (int dz = 0; dz < 2; ++dz) {
      for (int dy = 0; dy < 2; ++dy) {
        for (int dx = 0; dx < 2; ++dx, ++k) {
          const scalar_t d = dot[k];
          ga += f.weight[k] * d;
          const scalar_t tx = f.wy[dy] * f.wz[dz] * d;
          const scalar_t ty = f.wx[dx] * f.wz[dz] * d;
          const scalar_t tz = f.wx[dx] * f.wy[dy] * d;
          gx += dx ? tx : -tx;
          gy += dy ? ty : -ty;
          gz += dz ? tz : -tz;
        }
      }
    }
    grad_weights[sample] = ga;
    // d pixel / d loc = size (align_corners=False), and the output is scaled by the attention weight.
    grad_loc[0] = gx * a * sW;
    grad_loc[1] = gy * a * sH;
    grad_loc[2] = gz * a * sD;
  }
}

template <typename scalar_t, int DH>
void backward_kernel(const scalar_t* value, const int64_t* shapes, const int64_t* starts,
                     const scalar_t* locations, const scalar_t* weights, const scalar_t* grad_output,
                     scalar_t* grad_value, scalar_t* grad_locations, scalar_t* grad_weights, const Sizes& s) {
  const int64_t items = s.N * s.M * s.L;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Enough (n, m, l) items to keep every thread busy: each item is owned by one thread, no atomics.
  // Otherwise split the queries of each item into chunks and add into grad_value atomically.
  int64_t chunks = 1;
  if (items < threads && s.Lq > 1 && !at::in_parallel_region()) {
    chunks = std::min<int64_t>(s.Lq, (4 * threads + items - 1) / items);
  }
  const int64_t chunk_len = (s.Lq + chunks - 1) / chunks;
  at::parallel_for(0, items * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t item = task / chunks, chunk = task % chunks;
      const int64_t l = item % s.L;
      const int64_t m = (item / s.L) % s.M;
      const int64_t n = item / (s.L * s.M);
      const int64_t q_begin = chunk * chunk_len, q_end = std::min(s.Lq, q_begin + chunk_len);
      if (q_begin >= q_end) continue;
      if (chunks > 1) {
        backward_item<scalar_t, DH, true>(value, shapes, starts, locations, weights, grad_output, grad_value,
                                          grad_locations, grad_weights, s, n, m, l, q_begin, q_end);
      } else {
        backward_item<scalar_t, DH, false>(value, shapes, starts, locations, weights, grad_output, grad_value,
                                           grad_locations, grad_weights, s, n, m, l, q_begin, q_end);
      }
    }
  });
}

// Calls fn with a compile-time head width for the common ones, 0 (run time) otherwise.
template <typename Fn>
void dispatch_head_width(int64_t dh, Fn&& fn) {
  switch (dh) {
    case 4: fn(std::integral_constant<int, 4>()); break;
    case 8: fn(std::integral_constant<int, 8>()); break;
    case 16: fn(std::integral_constant<int, 16>()); break;
    case 32: fn(std::integral_constant<int, 32>()); break;
    case 64: fn(std::integral_constant<int, 64>()); break;
    default: fn(std::integral_constant<int, 0>()); break;
  }
}

// ------------------------------------------------------------------------------------------------------
// Input checks shared by forward and backward (the shapes and level table in ms_deform_attn3d_checks.h, shared
// with the CUDA backend); returns the sizes.
Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes s = maskmed::check_shapes("cpu", value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights);
  const std::vector<std::pair<const char*, const at::Tensor*>> all = {
      {"value", &value},
      {"spatial_shapes", &spatial_shapes},
      {"level_start_index", &level_start_index},
      {"sampling_locations", &sampling_locations},
      {"attention_weights", &attention_weights}};
  for (const auto& [name, tensor] : all) {
    TORCH_CHECK(tensor->device().is_cpu(), "ms_deform_attn3d (cpu): ", name, " must be a CPU tensor, got one on ",
                tensor->device());
  }
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn3d (cpu): value must be float32 or float64, got ", value.scalar_type());
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "ms_deform_attn3d (cpu): value, sampling_locations and attention_weights must share a dtype, got ",
              value.scalar_type(), ", ", sampling_locations.scalar_type(), " and ", attention_weights.scalar_type());
  maskmed::check_levels("cpu", spatial_shapes, level_start_index, s.S);
  return s;
}

}  // namespace

at::Tensor ms_deform_attn3d_forward(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                                    const at::Tensor& level_start_index_in, const at::Tensor& sampling_locations_in,
                                    const at::Tensor& attention_weights_in) {
  const Sizes s = check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                               attention_weights_in);
  const auto value = value_in.contiguous();
  const auto shapes = spatial_shapes_in.contiguous();
  const auto starts = level_start_index_in.contiguous();
  const auto locations = sampling_locations_in.contiguous();
  const auto weights = attention_weights_in.contiguous();
  auto output = at::empty({s.N, s.Lq, s.M * s.Dh}, value.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn3d_forward_cpu", [&] {
    dispatch_head_width(s.Dh, [&](auto head_width) {
      forward_kernel<scalar_t, decltype(head_width)::value>(
          value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
          locations.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), s);
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn3d_backward(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                                                  const at::Tensor& level_start_index_in,
                                                  const at::Tensor& sampling_locations_in,
                                                  const at::Tensor& attention_weights_in,
                                                  const at::Tensor& grad_output_in) {
  const Sizes s = check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                               attention_weights_in);
  maskmed::check_grad_output("cpu", grad_output_in, s);
  TORCH_CHECK(grad_output_in.device().is_cpu(), "ms_deform_attn3d (cpu): grad_output must be a CPU tensor");
  TORCH_CHECK(grad_output_in.scalar_type() == value_in.scalar_type(), "ms_deform_attn3d (cpu): grad_output must be ",
              value_in.scalar_type(), ", got ", grad_output_in.scalar_type());
  const auto value = value_in.contiguous();
  const auto shapes = spatial_shapes_in.contiguous();
  const auto starts = level_start_index_in.contiguous();
  const auto locations = sampling_locations_in.contiguous();
  const auto weights = attention_weights_in.contiguous();
  const auto grad_output = grad_output_in.contiguous();
  auto grad_value = at::zeros_like(value);  // dense: scatter-added into below
  // Every element of these two is written by the kernel (zero for samples entirely outside).
  auto grad_locations = at::empty_like(locations);
  auto grad_weights = at::empty_like(weights);
  if (grad_weights.numel() == 0 || s.Dh == 0) {
    grad_locations.zero_();
    grad_weights.zero_();
    return {grad_value, grad_locations, grad_weights};
  }
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn3d_backward_cpu", [&] {
    dispatch_head_width(s.Dh, [&](auto head_width) {
      backward_kernel<scalar_t, decltype(head_width)::value>(
          value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
          locations.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
          grad_value.data_ptr<scalar_t>(), grad_locations.data_ptr<scalar_t>(), grad_weights.data_ptr<scalar_t>(),
          s);
    });
  });
  return {grad_value, grad_locations, grad_weights};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "3D multi-scale deformable attention, CPU kernels (trilinear, zero padding, align_corners=False).";
  m.def("forward", &ms_deform_attn3d_forward,
        "forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> output\n\n"
        "value (N, S, M, Dh) float32/float64; spatial_shapes (L, 3) int64 (D, H, W); level_start_index (L,)\n"
        "int64; sampling_locations (N, Lq, M, L, P, 3) normalised (x, y, z) = (w, h, d) with 0 and 1 the\n"
        "outer faces; attention_weights (N, Lq, M, L, P). Returns (N, Lq, M*Dh).",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"));
  m.def("backward", &ms_deform_attn3d_backward,
        "backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output)\n"
        "-> [grad_value, grad_sampling_locations, grad_attention_weights]\n\n"
        "Gradients of sum(forward(...) * grad_output) with grid_sample's conventions (floor-based corners,\n"
        "corners outside contribute zero value). grad_output is (N, Lq, M*Dh).",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"));
}
