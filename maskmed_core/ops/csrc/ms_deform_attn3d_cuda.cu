// CUDA backend of 3D multi-scale deformable attention (maskmed_core.ops).
//
// Semantics are those of maskmed_core/ops/reference.py: trilinear 5-D grid_sample with zero padding and
// align_corners=False on every level, weighted by the attention weights and summed over levels and points.
//
//   value               (N, S, M, Dh)         float64 / float32 / float16 / bfloat16
//   spatial_shapes      (L, 3)  int64         (D_l, H_l, W_l)
//   level_start_index   (L,)    int64         checked for shape only; offsets are derived from the shapes
//                                             (as the reference does)
//   sampling_locations  (N, Lq, M, L, P, 3)   accumulation type, (x, y, z) = (w, h, d) in [0, 1]
//   attention_weights   (N, Lq, M, L, P)      accumulation type
//   output              (N, Lq, M*Dh)         value dtype
//
// The accumulation type is at::opmath_type<value dtype>: float64 for float64 values, float32 otherwise.
//
// Thread mapping: a "group" of TPG = min(32, next_pow2(Dh)) consecutive lanes of one warp handles one
// (n, q, m); lane j of the group handles channels j, j + TPG, ... Each lane recomputes the (cheap) location
// arithmetic of every point; the TPG lanes read TPG consecutive channels of every corner voxel, so one
// corner is one coalesced segment. In the backward pass the gradients of the location and of the attention
// weight of a point are reduced over the channels with warp shuffles inside the group and written by the
// group's first lane with plain stores (every point belongs to exactly one group: no atomics, no zero fill).
// Only grad_value is scattered with atomicAdd (into a float32 buffer for float16/bfloat16 values).
//
// Bit compatibility with the reference: torch computes grid = 2*loc - 1 (two tensor ops, one rounding
// since 2*loc is exact) and its CUDA grid sampler unnormalises with ((grid + 1) * size - 1) / 2, which
// nvcc compiles to fma(grid + 1, size, -1) * 0.5 (checked in the SASS of libtorch_cuda's
// grid_sampler_3d_kernel / grid_sampler_3d_backward_kernel for float and double). pixel_coord() below
// performs exactly these operations with an explicit fma, so floor() selects the same corners as the
// reference also at faces, voxel centres and voxel corners, where the location gradient is discontinuous.

#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
// c10/cuda/CUDAStream.h provides at::cuda::getCurrentCUDAStream (at::cuda re-exports c10::cuda) without
// ATen/cuda/CUDAContext.h, which needs the cuSPARSE/cuBLAS/cuSOLVER headers that a minimal toolkit lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "ms_deform_attn3d_checks.h"

namespace {

constexpr int kThreadsPerBlock = 256;  // a multiple of 32: groups never straddle warps
constexpr int kMaxLevels = 1024;       // 4 int64 of dynamic shared memory per level
constexpr int64_t kMaxBlocks = 65535LL * 16;  // the grid-stride loops cover any remainder
// Up to this many elements of value the kernels compute offsets in int32 (fewer registers). Every int32
// intermediate is below 3 * numel(value) in magnitude (a corner one voxel beyond the level, for D = 1), so
// 2^29 keeps it below 2^31. Larger tensors use int64 throughout.
constexpr int64_t kMaxInt32Elements = int64_t{1} << 29;

__device__ __forceinline__ float fma_op(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_op(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ float floor_op(float a) { return floorf(a); }
__device__ __forceinline__ double floor_op(double a) { return floor(a); }

// Normalised location -> voxel coordinate, bit-identical to torch's 2*loc-1 followed by grid_sample's
// unnormalisation (align_corners=False): 0 -> -0.5, 1 -> size - 0.5, voxel i has its centre at i.
template <typename T, typename index_t>
__device__ __forceinline__ T pixel_coord(T loc, index_t size) {
  const T grid = fma_op(loc, T(2), T(-1));  // == round(2*loc - 1): 2*loc is exact
  return fma_op(grid + T(1), static_cast<T>(size), T(-1)) * T(0.5);
}

// Shared memory per block: [0, 3L) the shapes (D, H, W per level), [3L, 4L) the start of each level along
// S, or -1 for a level that is empty or does not fit into S (such a level contributes nothing; this only
// guards memory accesses, the caller is responsible for consistent shapes). Must be called by all threads
// of the block before any of them leaves.
__device__ __forceinline__ void load_levels(int64_t* sm, const int64_t* __restrict__ spatial_shapes, int L,
                                            int64_t S) {
  for (int i = threadIdx.x; i < 3 * L; i += blockDim.x) {
    sm[i] = spatial_shapes[i];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t start = 0;
    bool overflow = false;
    for (int l = 0; l < L; ++l) {
      const int64_t D = sm[3 * l + 0], H = sm[3 * l + 1], W = sm[3 * l + 2];
      int64_t level_start = -1;
      if (D > 0 && H > 0 && W > 0 && !overflow) {
        const int64_t room = S - start;  // >= 0
        if (H <= room / D && W <= room / (D * H)) {  // D*H*W <= room without overflow
          level_start = start;
          start += D * H * W;
        } else {
          overflow = true;
        }
      }
      sm[3 * L + l] = level_start;
    }
  }
  __syncthreads();
}

// Corner geometry of one sampling point on one level. Corner k: dz = k >> 2, dy = (k >> 1) & 1, dx = k & 1.
// index_t: int32_t when value has at most kMaxInt32Elements elements (then every corner offset, also of
// corners just outside the level, fits with room to spare), else int64_t.
template <typename T, typename index_t>
struct Corners {
  T wx0, wx1, wy0, wy1, wz0, wz1;  // linear weights along each axis (grid_sample's convention)
  index_t off[8];                  // offset of the corner voxel in elements of value, relative to the level
  bool ok[8];                      // corner inside the level (else it reads as zero)
};

// Returns false when no corner of the point lies inside the level (then the sample and all its gradients
// are zero, as in grid_sample with zero padding, also for far-away or NaN locations).
template <typename T, typename index_t>
__device__ __forceinline__ bool make_corners(T ix, T iy, T iz, index_t D, index_t H, index_t W,
                                             index_t stride_s, Corners<T, index_t>& c) {
  // Some corner is inside iff -1 <= floor(i) <= size-1 iff -1 <= i < size. Checking this first also keeps
  // the float -> int64 conversions below in range.
  if (!(ix >= T(-1) && ix < static_cast<T>(W) && iy >= T(-1) && iy < static_cast<T>(H) && iz >= T(-1) &&
        iz < static_cast<T>(D))) {
    return false;
  }
  const T fx = floor_op(ix), fy = floor_op(iy), fz = floor_op(iz);
  const index_t x0 = static_cast<index_t>(fx), y0 = static_cast<index_t>(fy), z0 = static_cast<index_t>(fz);
  // As in grid_sample: weight of the lower corner = (i0 + 1) - i, of the upper one = i - i0.
  c.wx0 = (fx + T(1)) - ix;
  c.wx1 = ix - fx;
  c.wy0 = (fy + T(1)) - iy;
  c.wy1 = iy - fy;
  c.wz0 = (fz + T(1)) - iz;
  c.wz1 = iz - fz;
  // Lower corner index >= -1 and upper corner index <= size, by the range check above.
  const bool bx[2] = {x0 >= 0, x0 + 1 < W};
  const bool by[2] = {y0 >= 0, y0 + 1 < H};
  const bool bz[2] = {z0 >= 0, z0 + 1 < D};
  const index_t oz[2] = {z0 * H * W, (z0 + 1) * H * W};
  const index_t oy[2] = {y0 * W, (y0 + 1) * W};
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int dz = k >> 2, dy = (k >> 1) & 1, dx = k & 1;
    c.ok[k] = bz[dz] && by[dy] && bx[dx];
    c.off[k] = (oz[dz] + oy[dy] + x0 + dx) * stride_s;  // only dereferenced when ok[k]
  }
  return true;
}

template <typename scalar_t, typename T, typename index_t>
__device__ __forceinline__ void load_corners(const scalar_t* __restrict__ v, const Corners<T, index_t>& c,
                                             T (&out)[8]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    out[k] = c.ok[k] ? static_cast<T>(v[c.off[k]]) : T(0);
  }
}

// ------------------------------------------------------------------------------------------------ forward

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock) ms_deform_attn3d_forward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
    const at::opmath_type<scalar_t>* __restrict__ sampling_locations,
    const at::opmath_type<scalar_t>* __restrict__ attention_weights, scalar_t* __restrict__ output, int64_t N,
    int64_t S, int64_t M, int64_t Dh, int64_t Lq, int L, int P, int tpg_log2) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ int64_t levels_sm[];
  load_levels(levels_sm, spatial_shapes, L, S);
  const int64_t* shapes_sm = levels_sm;
  const int64_t* starts_sm = levels_sm + 3 * L;

  const int tpg = 1 << tpg_log2;
  const int64_t total = (N * Lq * M) << tpg_log2;
  const index_t stride_s = static_cast<index_t>(M * Dh);
  const index_t channels = static_cast<index_t>(Dh);
  const int64_t LP = static_cast<int64_t>(L) * P;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t g = t >> tpg_log2;  // (n * Lq + q) * M + m
    const int lane = static_cast<int>(t & (tpg - 1));
    const int64_t m = g % M;
    const int64_t n = g / (M * Lq);
    const scalar_t* value_nm = value + (n * S * M + m) * Dh;  // value[n, 0, m, 0]
    const T* loc_g = sampling_locations + g * LP * 3;
    const T* attn_g = attention_weights + g * LP;
    scalar_t* out_g = output + g * Dh;
    // Dh > 32 only: the lane loops over its channels, recomputing the location arithmetic.
    for (index_t ch = lane; ch < channels; ch += tpg) {
      T acc = T(0);
      for (int l = 0; l < L; ++l) {
        const int64_t start = starts_sm[l];
        if (start < 0) {
          continue;
        }
        const index_t D = static_cast<index_t>(shapes_sm[3 * l + 0]);
        const index_t H = static_cast<index_t>(shapes_sm[3 * l + 1]);
        const index_t W = static_cast<index_t>(shapes_sm[3 * l + 2]);
        const scalar_t* v = value_nm + static_cast<index_t>(start) * stride_s + ch;
        const T* loc_l = loc_g + l * P * 3;
        const T* attn_l = attn_g + l * P;
        for (int p = 0; p < P; ++p) {
          const T ix = pixel_coord(loc_l[3 * p + 0], W);
          const T iy = pixel_coord(loc_l[3 * p + 1], H);
          const T iz = pixel_coord(loc_l[3 * p + 2], D);
          Corners<T, index_t> c;
          if (!make_corners(ix, iy, iz, D, H, W, stride_s, c)) {
            continue;
          }
          T vv[8];
          load_corners(v, c, vv);
          const T r00 = c.wx0 * vv[0] + c.wx1 * vv[1];
          const T r01 = c.wx0 * vv[2] + c.wx1 * vv[3];
          const T r10 = c.wx0 * vv[4] + c.wx1 * vv[5];
          const T r11 = c.wx0 * vv[6] + c.wx1 * vv[7];
          const T p0 = c.wy0 * r00 + c.wy1 * r01;
          const T p1 = c.wy0 * r10 + c.wy1 * r11;
          acc += attn_l[p] * (c.wz0 * p0 + c.wz1 * p1);
        }
      }
      out_g[ch] = static_cast<scalar_t>(acc);
    }
  }
}

// ----------------------------------------------------------------------------------------------- backward

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock) ms_deform_attn3d_backward_kernel(
    const scalar_t* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
    const at::opmath_type<scalar_t>* __restrict__ sampling_locations,
    const at::opmath_type<scalar_t>* __restrict__ attention_weights, const scalar_t* __restrict__ grad_output,
    at::opmath_type<scalar_t>* __restrict__ grad_value,  // value's layout, accumulation type, zero-filled
    at::opmath_type<scalar_t>* __restrict__ grad_locations, at::opmath_type<scalar_t>* __restrict__ grad_weights,
    int64_t N, int64_t S, int64_t M, int64_t Dh, int64_t Lq, int L, int P, int tpg_log2) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ int64_t levels_sm[];
  load_levels(levels_sm, spatial_shapes, L, S);
  const int64_t* shapes_sm = levels_sm;
  const int64_t* starts_sm = levels_sm + 3 * L;

  const int tpg = 1 << tpg_log2;
  // The lanes of this thread's group inside its warp (blockDim.x is a multiple of 32 and of tpg).
  const unsigned warp_lane = threadIdx.x & 31u;
  const unsigned group_mask =
      tpg == 32 ? 0xffffffffu : (((1u << tpg) - 1u) << (warp_lane & ~static_cast<unsigned>(tpg - 1)));

  const int64_t total = (N * Lq * M) << tpg_log2;
  const index_t stride_s = static_cast<index_t>(M * Dh);
  const index_t channels = static_cast<index_t>(Dh);
  const int64_t LP = static_cast<int64_t>(L) * P;
  // All lanes of a group run the same iterations of every loop below except the channel loop, so every
  // lane of the group reaches each shuffle.
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t g = t >> tpg_log2;
    const int lane = static_cast<int>(t & (tpg - 1));
    const int64_t m = g % M;
    const int64_t n = g / (M * Lq);
    const int64_t value_offset = (n * S * M + m) * Dh;  // value[n, 0, m, 0]
    const scalar_t* value_nm = value + value_offset;
    T* grad_value_nm = grad_value + value_offset;
    const T* loc_g = sampling_locations + g * LP * 3;
    const T* attn_g = attention_weights + g * LP;
    T* grad_loc_g = grad_locations + g * LP * 3;
    T* grad_attn_g = grad_weights + g * LP;
    const scalar_t* grad_out_g = grad_output + g * Dh;
    const T grad_out_lane = lane < channels ? static_cast<T>(grad_out_g[lane]) : T(0);

    for (int l = 0; l < L; ++l) {
      const int64_t start = starts_sm[l];
      const index_t D = static_cast<index_t>(shapes_sm[3 * l + 0]);
      const index_t H = static_cast<index_t>(shapes_sm[3 * l + 1]);
      const index_t W = static_cast<index_t>(shapes_sm[3 * l + 2]);
      const index_t level_offset = start < 0 ? index_t(0) : static_cast<index_t>(start) * stride_s;
      const scalar_t* v_level = value_nm + level_offset;
      T* gv_level = grad_value_nm + level_offset;
      const T* loc_l = loc_g + l * P * 3;
      const T* attn_l = attn_g + l * P;
      for (int p = 0; p < P; ++p) {
        const T aw = attn_l[p];
        // Sums over this lane's channels of grad_out * sample and grad_out * d sample / d (ix, iy, iz).
        T g_w = T(0), g_x = T(0), g_y = T(0), g_z = T(0);
        Corners<T, index_t> c;
        const bool inside = start >= 0 && make_corners(pixel_coord(loc_l[3 * p + 0], W),
                                                       pixel_coord(loc_l[3 * p + 1], H),
                                                       pixel_coord(loc_l[3 * p + 2], D), D, H, W, stride_s, c);
        if (inside) {  // the same for all lanes of the group
          T cw[8];
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            cw[k] = ((k & 1) ? c.wx1 : c.wx0) * ((k & 2) ? c.wy1 : c.wy0) * ((k & 4) ? c.wz1 : c.wz0);
          }
          for (index_t ch = lane; ch < channels; ch += tpg) {
            const T go = ch == lane ? grad_out_lane : static_cast<T>(grad_out_g[ch]);
            T vv[8];
            load_corners(v_level + ch, c, vv);
            const T r00 = c.wx0 * vv[0] + c.wx1 * vv[1];
            const T r01 = c.wx0 * vv[2] + c.wx1 * vv[3];
            const T r10 = c.wx0 * vv[4] + c.wx1 * vv[5];
            const T r11 = c.wx0 * vv[6] + c.wx1 * vv[7];
            const T p0 = c.wy0 * r00 + c.wy1 * r01;
            const T p1 = c.wy0 * r10 + c.wy1 * r11;
            const T sample = c.wz0 * p0 + c.wz1 * p1;
            // d sample / d ix: the x-weights are (x0+1-ix, ix-x0), so each x-pair contributes v1 - v0.
            const T dx = c.wz0 * (c.wy0 * (vv[1] - vv[0]) + c.wy1 * (vv[3] - vv[2])) +
                         c.wz1 * (c.wy0 * (vv[5] - vv[4]) + c.wy1 * (vv[7] - vv[6]));
            const T dy = c.wz0 * (r01 - r00) + c.wz1 * (r11 - r10);
            const T dz = p1 - p0;
            g_w += go * sample;
            g_x += go * dx;
            g_y += go * dy;
            g_z += go * dz;
            const T scale = aw * go;
            T* gv = gv_level + ch;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
              if (c.ok[k]) {
                atomicAdd(gv + c.off[k], scale * cw[k]);
              }
            }
          }
        }
        // Reduce over the group's channels (all lanes of the group are here, whatever `inside` was).
        for (int offset = tpg >> 1; offset > 0; offset >>= 1) {
          g_w += __shfl_xor_sync(group_mask, g_w, offset, tpg);
          g_x += __shfl_xor_sync(group_mask, g_x, offset, tpg);
          g_y += __shfl_xor_sync(group_mask, g_y, offset, tpg);
          g_z += __shfl_xor_sync(group_mask, g_z, offset, tpg);
        }
        if (lane == 0) {
          const int pt = l * P + p;
          grad_attn_g[pt] = g_w;
          // d ix / d loc_x = W (ix = loc_x * W - 0.5), likewise H for y and D for z.
          grad_loc_g[3 * pt + 0] = g_x * aw * static_cast<T>(W);
          grad_loc_g[3 * pt + 1] = g_y * aw * static_cast<T>(H);
          grad_loc_g[3 * pt + 2] = g_z * aw * static_cast<T>(D);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------- host

using maskmed::Sizes;

at::ScalarType accumulate_type(at::ScalarType value_type) {
  return value_type == at::kDouble ? at::kDouble : at::kFloat;
}

// Input checks shared by forward and backward (the shapes and level table in ms_deform_attn3d_checks.h, shared
// with the CPU backend); returns the sizes.
Sizes check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                   const at::Tensor& sampling_locations, const at::Tensor& attention_weights) {
  const Sizes s = maskmed::check_shapes("cuda", value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights);
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn3d (cuda): value must be a CUDA tensor, got ", value.device());
  const auto device = value.device();
  const std::pair<const char*, const at::Tensor*> others[] = {{"spatial_shapes", &spatial_shapes},
                                                             {"level_start_index", &level_start_index},
                                                             {"sampling_locations", &sampling_locations},
                                                             {"attention_weights", &attention_weights}};
  for (const auto& named : others) {
    TORCH_CHECK(named.second->device() == device, "ms_deform_attn3d (cuda): ", named.first,
                " must be on the device of value (", device, "), got ", named.second->device());
  }
  const auto vtype = value.scalar_type();
  TORCH_CHECK(vtype == at::kFloat || vtype == at::kDouble || vtype == at::kHalf || vtype == at::kBFloat16,
              "ms_deform_attn3d (cuda): value must be float32, float64, float16 or bfloat16, got ", vtype);
  const auto atype = accumulate_type(vtype);
  TORCH_CHECK(sampling_locations.scalar_type() == atype, "ms_deform_attn3d (cuda): sampling_locations must be ",
              atype, " for ", vtype, " values, got ", sampling_locations.scalar_type());
  TORCH_CHECK(attention_weights.scalar_type() == atype, "ms_deform_attn3d (cuda): attention_weights must be ",
              atype, " for ", vtype, " values, got ", attention_weights.scalar_type());
  TORCH_CHECK(s.L <= kMaxLevels, "ms_deform_attn3d (cuda): at most ", kMaxLevels, " levels, got ", s.L);
  TORCH_CHECK(s.L * s.P * 3 <= std::numeric_limits<int>::max(),
              "ms_deform_attn3d (cuda): too many points per query: L=", s.L, ", P=", s.P);
  maskmed::check_levels("cuda", spatial_shapes, level_start_index, s.S);
  return s;
}

// log2 of the group size: the smallest power of two >= Dh, at most 32 (one warp).
int group_log2(int64_t Dh) {
  int k = 0;
  while (k < 5 && (int64_t{1} << k) < Dh) {
    ++k;
  }
  return k;
}

int64_t num_blocks(const Sizes& s, int tpg_log2) {
  const int64_t threads = (s.N * s.Lq * s.M) << tpg_log2;
  return std::min<int64_t>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
}

at::Tensor ms_deform_attn3d_forward(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                                    const at::Tensor& level_start_index_in, const at::Tensor& sampling_locations_in,
                                    const at::Tensor& attention_weights_in) {
  const Sizes s = check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                               attention_weights_in);
  const at::cuda::OptionalCUDAGuard device_guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();

  at::Tensor output = at::empty({s.N, s.Lq, s.M * s.Dh}, value.options());
  const int tpg_log2 = group_log2(s.Dh);
  const int64_t blocks = num_blocks(s, tpg_log2);
  if (output.numel() == 0 || blocks == 0) {
    return output;
  }
  const size_t shared_bytes = static_cast<size_t>(4 * s.L) * sizeof(int64_t);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn3d_forward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    auto kernel = value.numel() <= kMaxInt32Elements ? ms_deform_attn3d_forward_kernel<scalar_t, int32_t>
                                                     : ms_deform_attn3d_forward_kernel<scalar_t, int64_t>;
    kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, shared_bytes, stream>>>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), sampling_locations.data_ptr<opmath_t>(),
        attention_weights.data_ptr<opmath_t>(), output.data_ptr<scalar_t>(), s.N, s.S, s.M, s.Dh, s.Lq,
        static_cast<int>(s.L), static_cast<int>(s.P), tpg_log2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_deform_attn3d_backward(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes_in, const at::Tensor& level_start_index_in,
    const at::Tensor& sampling_locations_in, const at::Tensor& attention_weights_in,
    const at::Tensor& grad_output_in) {
  const Sizes s = check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                               attention_weights_in);
  maskmed::check_grad_output("cuda", grad_output_in, s);
  TORCH_CHECK(grad_output_in.device() == value_in.device(),
              "ms_deform_attn3d (cuda): grad_output must be on the device of value (", value_in.device(), "), got ",
              grad_output_in.device());
  TORCH_CHECK(grad_output_in.is_floating_point(), "ms_deform_attn3d (cuda): grad_output must be floating point, got ",
              grad_output_in.scalar_type());
  const at::cuda::OptionalCUDAGuard device_guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();
  const at::Tensor grad_output = grad_output_in.to(value.scalar_type()).contiguous();

  const auto vtype = value.scalar_type();
  const bool half_type = vtype == at::kHalf || vtype == at::kBFloat16;
  // float16/bfloat16: scatter into a float32 buffer (atomicAdd on half is slow and lossy), cast at the end.
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(accumulate_type(vtype)));
  // Every element of these two is written by the kernel (one group per point).
  at::Tensor grad_locations = at::empty_like(sampling_locations);
  at::Tensor grad_weights = at::empty_like(attention_weights);

  const int tpg_log2 = group_log2(s.Dh);
  const int64_t blocks = num_blocks(s, tpg_log2);
  if (blocks > 0) {
    const size_t shared_bytes = static_cast<size_t>(4 * s.L) * sizeof(int64_t);
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vtype, "ms_deform_attn3d_backward_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      auto kernel = value.numel() <= kMaxInt32Elements ? ms_deform_attn3d_backward_kernel<scalar_t, int32_t>
                                                       : ms_deform_attn3d_backward_kernel<scalar_t, int64_t>;
      kernel<<<static_cast<unsigned>(blocks), kThreadsPerBlock, shared_bytes, stream>>>(
          value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(), sampling_locations.data_ptr<opmath_t>(),
          attention_weights.data_ptr<opmath_t>(), grad_output.data_ptr<scalar_t>(),
          grad_value_acc.data_ptr<opmath_t>(), grad_locations.data_ptr<opmath_t>(), grad_weights.data_ptr<opmath_t>(),
          s.N, s.S, s.M, s.Dh, s.Lq, static_cast<int>(s.L), static_cast<int>(s.P), tpg_log2);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor grad_value = half_type ? grad_value_acc.to(vtype) : grad_value_acc;
  return std::make_tuple(grad_value, grad_locations, grad_weights);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "3D multi-scale deformable attention, CUDA kernels (maskmed_core.ops)";
  m.def("forward", &ms_deform_attn3d_forward,
        "forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> output",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"));
  m.def("backward", &ms_deform_attn3d_backward,
        "backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output) "
        "-> (grad_value, grad_sampling_locations, grad_attention_weights)",
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"));
}
