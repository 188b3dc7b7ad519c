// Volume-rendering compositing over packed rays, CUDA C++ (impl='cuda' of kernels.render.composite).
// One thread per ray walks its samples front to back; same formulas as kernels/triton/composite.py:
//   a_i = sigma_i delta_i, T_i = exp(-sum_{j<i} a_j), w_i = T_i (1 - exp(-a_i)),
//   backward dL/da_i = u_i T_{i+1} - (total - sum_{k<=i} u_k w_k), u_i = dL/dw_i.
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

template <typename scalar_t>
__global__ void composite_fwd_kernel(const scalar_t* __restrict__ sigma, const scalar_t* __restrict__ rgb,
                                     const scalar_t* __restrict__ delta, scalar_t delta_val,
                                     const scalar_t* __restrict__ t, const int64_t* __restrict__ start,
                                     const int64_t* __restrict__ count, scalar_t* __restrict__ out_rgb,
                                     scalar_t* __restrict__ out_acc, scalar_t* __restrict__ out_depth,
                                     scalar_t* __restrict__ out_w, scalar_t* __restrict__ out_T,
                                     int64_t n_rays, bool shade) {
  const int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const int64_t s0 = start[r], n = count[r];
  scalar_t tau = 0, acc = 0, depth = 0, cr = 0, cg = 0, cb = 0;
  for (int64_t k = s0; k < s0 + n; ++k) {
    const scalar_t a = sigma[k] * (delta ? delta[k] : delta_val);
    const scalar_t T = exp(-tau);
    if (out_T) out_T[k] = T;
    if (shade) {
      const scalar_t w = T * (scalar_t(1) - exp(-a));
      out_w[k] = w;
      acc += w;
      if (t) depth += w * t[k];
      cr += w * rgb[3 * k];
      cg += w * rgb[3 * k + 1];
      cb += w * rgb[3 * k + 2];
    }
    tau += a;
  }
  if (!shade) return;
  out_acc[r] = acc;
  if (out_depth) out_depth[r] = depth;
  out_rgb[3 * r] = cr;
  out_rgb[3 * r + 1] = cg;
  out_rgb[3 * r + 2] = cb;
}

template <typename scalar_t>
__global__ void composite_bwd_kernel(const scalar_t* __restrict__ sigma, const scalar_t* __restrict__ rgb,
                                     const scalar_t* __restrict__ delta, scalar_t delta_val,
                                     const scalar_t* __restrict__ t, const int64_t* __restrict__ start,
                                     const int64_t* __restrict__ count, const scalar_t* __restrict__ g_rgb,
                                     const scalar_t* __restrict__ g_acc, const scalar_t* __restrict__ g_depth,
                                     const scalar_t* __restrict__ g_w, const scalar_t* __restrict__ total,
                                     scalar_t* __restrict__ d_sigma, scalar_t* __restrict__ d_rgb,
                                     scalar_t* __restrict__ d_delta, scalar_t* __restrict__ d_t,
                                     int64_t n_rays) {
  const int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (r >= n_rays) return;
  const int64_t s0 = start[r], n = count[r];
  const scalar_t gr = g_rgb[3 * r], gg = g_rgb[3 * r + 1], gb = g_rgb[3 * r + 2], ga = g_acc[r];
  const scalar_t gd = g_depth ? g_depth[r] : scalar_t(0);
  scalar_t tau = 0, done = 0;  // optical depth and sum of u_k w_k before sample k
  const scalar_t tot = total[r];
  for (int64_t k = s0; k < s0 + n; ++k) {
    const scalar_t dl = delta ? delta[k] : delta_val;
    const scalar_t a = sigma[k] * dl;
    const scalar_t T = exp(-tau), T_next = exp(-(tau + a));
    const scalar_t w = T * (scalar_t(1) - exp(-a));
    scalar_t u = gr * rgb[3 * k] + gg * rgb[3 * k + 1] + gb * rgb[3 * k + 2] + ga;
    if (t) u += gd * t[k];
    if (g_w) u += g_w[k];
    done += u * w;
    const scalar_t d_a = u * T_next - (tot - done);
    d_sigma[k] = d_a * dl;
    if (d_delta) d_delta[k] = d_a * sigma[k];
    if (d_t) d_t[k] = w * gd;
    d_rgb[3 * k] = w * gr;
    d_rgb[3 * k + 1] = w * gg;
    d_rgb[3 * k + 2] = w * gb;
    tau += a;
  }
}

template <typename T>
const T* ptr_or_null(const torch::Tensor& x) { return x.numel() ? x.data_ptr<T>() : nullptr; }
template <typename T>
T* mut_or_null(torch::Tensor& x) { return x.numel() ? x.data_ptr<T>() : nullptr; }

constexpr int kThreads = 256;

}  // namespace

// delta, t: empty tensors when absent. Returns {rgb (R,3), acc (R,), depth (R,) or empty, weights (S,)}.
std::vector<torch::Tensor> composite_forward(torch::Tensor sigma, torch::Tensor rgb, torch::Tensor delta,
                                             double delta_val, torch::Tensor t, torch::Tensor start,
                                             torch::Tensor count) {
  const c10::cuda::CUDAGuard guard(sigma.device());
  const int64_t R = count.size(0);
  auto out_rgb = torch::empty({R, 3}, sigma.options());
  auto acc = torch::empty({R}, sigma.options());
  auto depth = torch::empty({t.numel() ? R : 0}, sigma.options());
  auto w = torch::empty_like(sigma);
  if (R == 0) return {out_rgb, acc, depth, w};
  const int blocks = (int)((R + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_forward", [&] {
    composite_fwd_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        sigma.data_ptr<scalar_t>(), rgb.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(delta),
        (scalar_t)delta_val, ptr_or_null<scalar_t>(t), start.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
        out_rgb.data_ptr<scalar_t>(), acc.data_ptr<scalar_t>(), mut_or_null<scalar_t>(depth),
        w.data_ptr<scalar_t>(), nullptr, R, true);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out_rgb, acc, depth, w};
}

torch::Tensor composite_transmittance(torch::Tensor sigma_delta, torch::Tensor start, torch::Tensor count) {
  const c10::cuda::CUDAGuard guard(sigma_delta.device());
  const int64_t R = count.size(0);
  auto T = torch::empty_like(sigma_delta);
  if (R == 0) return T;
  const int blocks = (int)((R + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(sigma_delta.scalar_type(), "composite_transmittance", [&] {
    composite_fwd_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        sigma_delta.data_ptr<scalar_t>(), nullptr, nullptr, (scalar_t)1, nullptr, start.data_ptr<int64_t>(),
        count.data_ptr<int64_t>(), nullptr, nullptr, nullptr, nullptr, T.data_ptr<scalar_t>(), R, false);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return T;
}

// Returns {d_sigma, d_rgb, d_delta (or empty), d_t (or empty)}.
std::vector<torch::Tensor> composite_backward(torch::Tensor sigma, torch::Tensor rgb, torch::Tensor delta,
                                              double delta_val, torch::Tensor t, torch::Tensor start,
                                              torch::Tensor count, torch::Tensor g_rgb, torch::Tensor g_acc,
                                              torch::Tensor g_depth, torch::Tensor g_w, torch::Tensor total,
                                              bool need_delta, bool need_t) {
  const c10::cuda::CUDAGuard guard(sigma.device());
  const int64_t R = count.size(0);
  auto d_sigma = torch::zeros_like(sigma);
  auto d_rgb = torch::zeros_like(rgb);
  auto d_delta = need_delta ? torch::zeros_like(sigma) : torch::empty({0}, sigma.options());
  auto d_t = need_t ? torch::zeros_like(sigma) : torch::empty({0}, sigma.options());
  if (R == 0) return {d_sigma, d_rgb, d_delta, d_t};
  const int blocks = (int)((R + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "composite_backward", [&] {
    composite_bwd_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        sigma.data_ptr<scalar_t>(), rgb.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(delta), (scalar_t)delta_val,
        ptr_or_null<scalar_t>(t), start.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
        g_rgb.data_ptr<scalar_t>(), g_acc.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(g_depth),
        ptr_or_null<scalar_t>(g_w), total.data_ptr<scalar_t>(), d_sigma.data_ptr<scalar_t>(),
        d_rgb.data_ptr<scalar_t>(), mut_or_null<scalar_t>(d_delta), mut_or_null<scalar_t>(d_t), R);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {d_sigma, d_rgb, d_delta, d_t};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &composite_forward, "packed compositing forward (CUDA)");
  m.def("backward", &composite_backward, "packed compositing backward (CUDA)");
  m.def("transmittance", &composite_transmittance, "packed exclusive transmittance (CUDA)");
}
