// Autocast for iedvr::modulated_deform_conv2d: unlike torchvision's deform_conv2d, which casts to
// float32, the op runs in the autocast dtype (float16 on CUDA, bfloat16 on CPU by default), so the
// alignment module takes part in mixed precision instead of forcing float32 (the paper's point).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace iedvr {
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor forward_autocast(const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& mask, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            int64_t deformable_groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("iedvr::modulated_deform_conv2d", "")
                             .typed<decltype(forward_autocast<autocast_key, device_type>)>();
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device_type);
  return op.call(at::autocast::cached_cast(dtype, input, device_type),
                 at::autocast::cached_cast(dtype, offset, device_type),
                 at::autocast::cached_cast(dtype, mask, device_type),
                 at::autocast::cached_cast(dtype, weight, device_type),
                 at::autocast::cached_cast(dtype, bias, device_type), stride, padding, dilation,
                 groups, deformable_groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(iedvr, AutocastCPU, m) {
  m.impl("modulated_deform_conv2d",
         &forward_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(iedvr, AutocastCUDA, m) {
  m.impl("modulated_deform_conv2d",
         &forward_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace iedvr
