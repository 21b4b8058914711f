// Input checks of the 3D multi-scale deformable attention op shared by the CPU (.cpp) and CUDA (.cu) backends.
//
// What both backends need is checked here, once: tensor ranks and sizes, int64 level tables, positive level
// shapes, level_start_index equal to the running sum of the level volumes and the levels filling value's S axis.
// What differs stays in each backend: the device (CPU tensors / one CUDA device) and the dtypes it computes in
// (CPU: float32/float64; CUDA: also float16/bfloat16 values with float32 locations and weights), and the CUDA
// kernel's own limits (levels in shared memory, int32 point counts).
//
// The level tables are read on the host; for CUDA tensors that is a copy of 4 * L int64 values (one small
// device synchronisation per call), the price of refusing inconsistent tables instead of reading past a level.
#pragma once

#include <torch/extension.h>

#include <cstdint>

namespace maskmed {

// Sizes of one call: value (N, S, M, Dh), sampling_locations (N, Lq, M, L, P, 3).
struct Sizes {
  int64_t N, S, M, Dh, Lq, L, P;
};

// Ranks and sizes of the five inputs (any device, any floating dtype); returns the sizes.
// backend names the op in the messages: "cpu" or "cuda".
inline Sizes check_shapes(const char* backend, const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights) {
  TORCH_CHECK(value.defined() && spatial_shapes.defined() && level_start_index.defined() &&
                  sampling_locations.defined() && attention_weights.defined(),
              "ms_deform_attn3d (", backend, "): an input tensor is undefined");
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong && level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn3d (", backend, "): spatial_shapes and level_start_index must be int64, got ",
              spatial_shapes.scalar_type(), " and ", level_start_index.scalar_type());
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn3d (", backend, "): value must be (N, S, M, Dh), got ",
              value.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 3 && spatial_shapes.size(0) >= 1,
              "ms_deform_attn3d (", backend, "): spatial_shapes must be (L, 3) with L >= 1, got ",
              spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == L, "ms_deform_attn3d (", backend,
              "): level_start_index must be (L,) = (", L, ",), got ", level_start_index.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 3, "ms_deform_attn3d (", backend,
              "): sampling_locations must be (N, Lq, M, L, P, 3), got ", sampling_locations.sizes());
  TORCH_CHECK(attention_weights.dim() == 5, "ms_deform_attn3d (", backend,
              "): attention_weights must be (N, Lq, M, L, P), got ", attention_weights.sizes());
  const Sizes s{value.size(0), value.size(1), value.size(2), value.size(3),
                sampling_locations.size(1), L, sampling_locations.size(4)};
  TORCH_CHECK(sampling_locations.size(0) == s.N && sampling_locations.size(2) == s.M &&
                  sampling_locations.size(3) == L,
              "ms_deform_attn3d (", backend, "): sampling_locations ", sampling_locations.sizes(),
              " does not match (N, Lq, M, L, P, 3) with N=", s.N, ", M=", s.M, ", L=", L);
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), "ms_deform_attn3d (", backend,
              "): attention_weights ", attention_weights.sizes(),
              " must equal the first five sizes of sampling_locations ", sampling_locations.sizes());
  return s;
}

// The level table: every level (D, H, W) positive, level_start_index[l] the number of voxels of the levels
// before l, and the levels together exactly value's S voxels.
inline void check_levels(const char* backend, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
                         int64_t S) {
  const at::Tensor shapes = spatial_shapes.to(at::kCPU).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU).contiguous();
  const int64_t* shape = shapes.data_ptr<int64_t>();
  const int64_t* start = starts.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t D = shape[3 * l], H = shape[3 * l + 1], W = shape[3 * l + 2];
    TORCH_CHECK(D > 0 && H > 0 && W > 0, "ms_deform_attn3d (", backend, "): spatial_shapes[", l, "] = (", D, ", ",
                H, ", ", W, ") must be positive");
    TORCH_CHECK(start[l] == total, "ms_deform_attn3d (", backend, "): level_start_index[", l, "] = ", start[l],
                " but the levels before it hold ", total, " voxels");
    total += D * H * W;
  }
  TORCH_CHECK(total == S, "ms_deform_attn3d (", backend, "): value.size(1) = ", S,
              " must equal the sum of D*H*W over spatial_shapes = ", total);
}

// grad_output of the backward pass: (N, Lq, M*Dh).
inline void check_grad_output(const char* backend, const at::Tensor& grad_output, const Sizes& s) {
  TORCH_CHECK(grad_output.defined(), "ms_deform_attn3d (", backend, "): grad_output is undefined");
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == s.N && grad_output.size(1) == s.Lq &&
                  grad_output.size(2) == s.M * s.Dh,
              "ms_deform_attn3d (", backend, "): grad_output must be (N, Lq, M*Dh) = (", s.N, ", ", s.Lq, ", ",
              s.M * s.Dh, "), got ", grad_output.sizes());
}

}  // namespace maskmed
