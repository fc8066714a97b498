"""iedvr::modulated_deform_conv2d against the independent reference in dcn_reference.py,
torch.nn.functional.conv2d (zero offsets, unit mask), gradcheck and opcheck."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import vs_iedvr.ops
from dcn_reference import modulated_deform_conv2d_reference
from devices import requires_cuda

op = torch.ops.iedvr.modulated_deform_conv2d


@pytest.fixture(autouse=True)
def two_threads_at_least():
    """The kernels' parallel parts (tasks per chunk, images in parallel, a weight gradient per
    task) on two threads or more, also where tests/conftest.py gives a worker one core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Case:
    name: str
    batch: int = 1
    in_channels: int = 8
    out_channels: int = 8
    height: int = 9
    width: int = 9
    kernel: tuple = (3, 3)
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    groups: int = 1
    deformable_groups: int = 1
    offset_scale: float = 2.0
    bias: bool = True

    def conv_args(self):
        return (list(self.stride), list(self.padding), list(self.dilation), self.groups,
                self.deformable_groups)

    def out_size(self):
        return vs_iedvr.ops.output_size((self.height, self.width), self.kernel, self.stride,
                                        self.padding, self.dilation)

    def tensors(self, dtype=torch.float64, device="cpu", seed=0):
        generator = torch.Generator().manual_seed(seed)

        def randn(*shape, scale=1.0):
            return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(
                device=device, dtype=dtype)

        taps = self.kernel[0] * self.kernel[1]
        out_h, out_w = self.out_size()
        input = randn(self.batch, self.in_channels, self.height, self.width)
        offset = randn(self.batch, 2 * self.deformable_groups * taps, out_h, out_w,
                       scale=self.offset_scale)
        mask = torch.sigmoid(randn(self.batch, self.deformable_groups * taps, out_h, out_w))
        weight = randn(self.out_channels, self.in_channels // self.groups, *self.kernel, scale=0.3)
        bias = randn(self.out_channels) if self.bias else None
        return input, offset, mask, weight, bias


CASES = [
    Case("basic"),
    Case("groups2_dg8", in_channels=16, out_channels=12, groups=2, deformable_groups=8),
    Case("dg8_like_edvr", in_channels=32, out_channels=16, deformable_groups=8, height=12, width=10),
    Case("stride2_odd", height=11, width=7, stride=(2, 2), deformable_groups=2),
    Case("dilation2", dilation=(2, 2), padding=(2, 2), height=10, width=13),
    Case("batch3_rect_kernel", batch=3, kernel=(1, 3), padding=(0, 1), height=6, width=8),
    Case("kernel5_no_bias", kernel=(5, 5), padding=(2, 2), bias=False, deformable_groups=4),
    Case("far_outside", offset_scale=40.0, height=8, width=8),
    Case("no_padding", padding=(0, 0), height=7, width=9, in_channels=4, out_channels=6),
    # Deformable groups of 16 channels (the backward's unrolled runs), images in parallel.
    Case("batch2_runs_of_16", batch=2, in_channels=32, out_channels=8, deformable_groups=2,
         height=7, width=9),
    # More output pixels than one CPU column buffer holds: exercises the chunked loop.
    Case("several_chunks", in_channels=16, out_channels=8, height=48, width=50,
         deformable_groups=4),
]


def forward_and_grads(fn, tensors, conv_args, grad_output_seed=1):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
    out = fn(*leaves, *conv_args)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_output_seed),
                              dtype=torch.float64).to(out)
    out.backward(grad_output)
    return out.detach(), [t.grad if t is not None else None for t in leaves]


def assert_matches_reference(case, dtype, device, rtol, atol):
    tensors = case.tensors(dtype=dtype, device=device)
    out, grads = forward_and_grads(op, tensors, case.conv_args())
    ref_out, ref_grads = forward_and_grads(modulated_deform_conv2d_reference, tensors,
                                           case.conv_args())
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    for name, grad, ref_grad in zip(("input", "offset", "mask", "weight", "bias"), grads,
                                    ref_grads):
        if ref_grad is None:
            assert grad is None
            continue
        torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference_float64(case):
    assert_matches_reference(case, torch.float64, "cpu", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_reference_float32(case):
    assert_matches_reference(case, torch.float32, "cpu", rtol=2e-4, atol=2e-4)


LOOPS = ["baseline", "avx2", "avx512"]
# What each build of the loops needs, as /proc/cpuinfo names it: an oracle of its own beside the
# kernel's __builtin_cpu_supports.
LOOPS_NEED = {"baseline": set(), "avx2": {"avx2", "fma"},
              "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"}}


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def x86_loops_built() -> bool:
    """The AVX2 and AVX-512 builds exist in x86-64 libraries compiled by GCC (dcn_cpu.cpp)."""
    import platform
    return platform.machine() in ("x86_64", "AMD64")


def loops_this_cpu_runs(loops: str) -> bool:
    return LOOPS_NEED[loops] <= cpu_flags() and (loops == "baseline" or x86_loops_built())


def use_loops(loops: str, monkeypatch):
    """Has both passes take the `loops` build (IEDVR_CPU_ISA) and checks that they do."""
    if not loops_this_cpu_runs(loops):
        pytest.skip(f"this CPU cannot run the {loops} loops")
    monkeypatch.setenv("IEDVR_CPU_ISA", loops)
    assert torch.ops.iedvr.cpu_sampling_loops() == [loops, loops]


@pytest.mark.parametrize("loops", LOOPS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_build_of_the_cpu_loops_matches_reference(case, loops, monkeypatch):
    # The CPU loops are compiled three times (x86-64 baseline, AVX2+FMA, AVX-512); the tests
    # above run the one this CPU gets, this one each that it can run.
    use_loops(loops, monkeypatch)
    assert_matches_reference(case, torch.float64, "cpu", rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("loops", LOOPS)
def test_every_build_of_the_cpu_loops_matches_reference_in_16_bits(loops, monkeypatch):
    # bfloat16 tensors (the loops' 16-bit loads, conversions and stores) against the reference in
    # float64 on the same rounded values: within bfloat16's rounding of the result.
    use_loops(loops, monkeypatch)
    case = Case("bf16", in_channels=32, out_channels=16, height=12, width=14, deformable_groups=8)
    low = [t.to(torch.bfloat16) if t is not None else None for t in case.tensors(torch.float32)]
    exact = [t.double() if t is not None else None for t in low]
    out, grads = forward_and_grads(op, low, case.conv_args())
    ref_out, ref_grads = forward_and_grads(modulated_deform_conv2d_reference, exact,
                                           case.conv_args())
    for result, reference in zip([out, *grads], [ref_out, *ref_grads]):
        error = (result.double() - reference).norm() / reference.norm()
        assert error < 2e-2


def test_each_pass_takes_the_build_measured_fastest_for_it_that_this_cpu_has(monkeypatch):
    # docs/operator.md: the backward pass the widest build, the forward pass at most AVX2's.
    monkeypatch.delenv("IEDVR_CPU_ISA", raising=False)
    runnable = [loops for loops in LOOPS if loops_this_cpu_runs(loops)]
    forward = "avx2" if "avx2" in runnable else "baseline"
    assert torch.ops.iedvr.cpu_sampling_loops() == [forward, runnable[-1]]
    # A build this CPU lacks gives the best it has below it.
    monkeypatch.setenv("IEDVR_CPU_ISA", "avx512")
    assert torch.ops.iedvr.cpu_sampling_loops() == [runnable[-1], runnable[-1]]


def test_an_unknown_isa_cap_is_an_error_that_names_it(monkeypatch):
    monkeypatch.setenv("IEDVR_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="IEDVR_CPU_ISA must be baseline, avx2 or avx512.*sse9"):
        torch.ops.iedvr.cpu_sampling_loops()


def channels_last_slice(t):
    """t's values in the first channels of a wider channels-last tensor, as the network's offsets
    and mask are (chunks of the offset convolution's output): channel stride 1, pixel stride
    wider than the channel count."""
    wider = torch.cat([t, torch.full_like(t[:, :3], float("nan"))], dim=1)
    return wider.contiguous(memory_format=torch.channels_last)[:, : t.shape[1]]


LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "channels_last_slice": channels_last_slice,
    # Pixels not at one stride (a column slice): the kernel makes such a tensor contiguous.
    "column_slice": lambda t: F.pad(t, (0, 2), value=float("nan"))[..., : t.shape[-1]],
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "groups2_dg8", "stride2_odd", "batch3_rect_kernel", "several_chunks")], ids=lambda c: c.name)
def test_any_layout_matches_reference(case, layout):
    input, offset, mask, weight, bias = case.tensors()
    laid_out = [LAYOUTS[layout](t) for t in (input, offset, mask)]
    assert not laid_out[1].is_contiguous()
    out = op(*laid_out, weight, bias, *case.conv_args())
    expected = modulated_deform_conv2d_reference(input, offset, mask, weight, bias,
                                                 *case.conv_args())
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # The output takes the input's memory format, as conv2d's does (and the fake kernel says).
    conv_output = F.conv2d(laid_out[0], weight, None, case.stride, case.padding, case.dilation,
                           case.groups)
    assert out.stride() == conv_output.stride()



@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "groups2_dg8", "stride2_odd", "batch2_runs_of_16", "several_chunks")], ids=lambda c: c.name)
def test_any_layout_of_inputs_and_output_gradient_backpropagates_as_the_reference(case, layout):
    """The backward reads the output's gradient in the layout autograd hands it (channels-last
    from the network's convolutions) without copying it, and returns the input's gradient in the
    input's layout, as conv2d's backward does."""
    input, offset, mask, weight, bias = case.tensors()
    laid_out = [LAYOUTS[layout](t).requires_grad_() for t in (input, offset, mask)]
    out = op(*laid_out, weight, bias, *case.conv_args())
    grad_output = LAYOUTS[layout](torch.randn(out.shape, dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(1)))
    grads = torch.autograd.grad(out, laid_out, grad_output)
    leaves = [t.clone().requires_grad_() for t in (input, offset, mask)]
    expected = modulated_deform_conv2d_reference(*leaves, weight, bias, *case.conv_args())
    expected_grads = torch.autograd.grad(expected, leaves, grad_output)
    for name, grad, expected_grad in zip(("input", "offset", "mask"), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-9,
                                   msg=lambda m: f"{name}: {m}")
    if layout == "channels_last":
        assert grads[0].is_contiguous(memory_format=torch.channels_last)

def test_zero_offset_unit_mask_equals_conv2d():
    case = Case("conv", in_channels=16, out_channels=8, groups=2, deformable_groups=4,
                stride=(2, 1), dilation=(1, 2), padding=(1, 2), height=15, width=12)
    input, offset, mask, weight, bias = case.tensors(dtype=torch.float32)
    out = vs_iedvr.modulated_deform_conv2d(
        input, torch.zeros_like(offset), torch.ones_like(mask), weight, bias,
        stride=case.stride, padding=case.padding, dilation=case.dilation, groups=case.groups,
        deformable_groups=case.deformable_groups)
    expected = F.conv2d(input, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_integer_offset_shifts_the_image():
    # An offset of exactly (+1, +2) everywhere with a 1x1 kernel samples input[y + 1, x + 2].
    input = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    offset = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1).expand(1, 2, 5, 7).contiguous()
    mask = torch.ones(1, 1, 5, 7)
    out = vs_iedvr.modulated_deform_conv2d(input, offset, mask, torch.ones(1, 1, 1, 1))
    expected = torch.zeros(1, 1, 5, 7)
    expected[..., :4, :5] = input[..., 1:, 2:]
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("loops", LOOPS)
def test_samples_a_rounding_error_inside_the_far_edges(loops, monkeypatch):
    # x = W - 3.5e-7 is inside the image; in float32, x + 1 rounds up to W + 1, so floor(x)
    # computed as trunc(x + 1) - 1 would be W: a corner past the image (this read out of bounds).
    use_loops(loops, monkeypatch)
    height, width = 5, 16
    x = torch.randn(1, 8, height, width, generator=torch.Generator().manual_seed(0))
    offset = torch.zeros(1, 2 * 9, height, width)
    offset[:, 0::2] = -3.5e-7  # dy of every tap: just above the rows below
    offset[:, 1::2] = -3.5e-7  # dx: just left of the columns to the right
    mask = torch.ones(1, 9, height, width)
    weight = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(1))
    args = ([1, 1], [1, 1], [1, 1], 1, 1)
    out = op(x, offset, mask, weight, None, *args)
    expected = modulated_deform_conv2d_reference(x.double(), offset.double(), mask.double(),
                                                 weight.double(), None, *args)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_gradcheck_float64():
    case = Case("small", batch=2, in_channels=4, out_channels=4, height=5, width=6, groups=2,
                deformable_groups=2, stride=(2, 1))
    tensors = [t.requires_grad_(True) for t in case.tensors()]
    assert torch.autograd.gradcheck(lambda *t: op(*t, *case.conv_args()), tensors)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(bias, layout):
    # opcheck also compares the fake kernel's output strides with the real one's.
    case = Case("opcheck", in_channels=4, out_channels=4, height=6, width=5, deformable_groups=2,
                bias=bias)
    tensors = list(case.tensors(dtype=torch.float32))
    if layout == "channels_last":
        tensors[:3] = [LAYOUTS["channels_last"](t) for t in tensors[:3]]
    tensors = [t.requires_grad_(True) if t is not None else None for t in tensors]
    torch.library.opcheck(op.default, (*tensors, *case.conv_args()))


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_low_precision_close_to_float32(dtype, tolerance):
    case = Case("half", in_channels=32, out_channels=16, height=12, width=14, deformable_groups=8)
    low = [t.to(dtype) if t is not None else None for t in case.tensors(dtype=torch.float32)]
    # The float32 result on the same (rounded) inputs isolates the kernel's own error.
    high = [t.float() if t is not None else None for t in low]
    out, grads = forward_and_grads(op, low, case.conv_args())
    ref_out, ref_grads = forward_and_grads(op, high, case.conv_args())
    assert out.dtype == dtype
    for result, reference in zip([out, *grads], [ref_out, *ref_grads]):
        error = (result.float() - reference).norm() / reference.norm()
        assert error < tolerance


def test_autocast_cpu_runs_in_bfloat16():
    case = Case("autocast", in_channels=16, out_channels=8, deformable_groups=4)
    tensors = case.tensors(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(*tensors, *case.conv_args())
    assert out.dtype == torch.bfloat16
    reference = op(*tensors, *case.conv_args())
    assert ((out.float() - reference).norm() / reference.norm()) < 2e-2


BAD_ARGUMENTS = [
    ("input_3d", lambda t: t.update(input=t["input"][0]), "input must be a 4-D tensor"),
    ("weight_channels", lambda t: t.update(weight=t["weight"][:, :3]), "weight must have shape"),
    ("offset_channels", lambda t: t.update(offset=t["offset"][:, :9]), "offset must have shape"),
    ("mask_channels", lambda t: t.update(mask=t["mask"][:, :4]), "mask must have shape"),
    ("offset_size", lambda t: t.update(offset=t["offset"][..., :5]), "offset must have shape"),
    ("mixed_dtype", lambda t: t.update(offset=t["offset"].double()), "offset has dtype"),
    ("bias_size", lambda t: t.update(bias=t["bias"][:3]), "bias must have shape"),
    ("int_input", lambda t: t.update(input=t["input"].int()), "input must be float32"),
    ("dg_not_divisor", lambda t: t.update(deformable_groups=3), "divisible by deformable_groups"),
    ("groups_not_divisor", lambda t: t.update(groups=3), "divisible by groups"),
    ("zero_stride", lambda t: t.update(stride=[0, 1]), "stride must be >= 1"),
    ("no_channels", lambda t: t.update(input=t["input"][:, :0], weight=t["weight"][:, :0]),
     "at least one channel"),
    ("no_rows", lambda t: t.update(input=t["input"][:, :, :0]), "at least one channel, row"),
    ("float8", lambda t: t.update(input=t["input"].to(torch.float8_e4m3fn)), "input must be float32"),
    ("too_small", lambda t: t.update(input=t["input"][..., :1, :1], padding=[0, 0]),
     "smaller than the dilated kernel"),
]


@pytest.mark.parametrize("name, corrupt, message", BAD_ARGUMENTS, ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_raise_clear_errors(name, corrupt, message):
    input, offset, mask, weight, bias = Case("bad").tensors(dtype=torch.float32)
    args = dict(input=input, offset=offset, mask=mask, weight=weight, bias=bias, stride=[1, 1],
                padding=[1, 1], dilation=[1, 1], groups=1, deformable_groups=1)
    corrupt(args)
    with pytest.raises(RuntimeError, match=message):
        op(*args.values())


@requires_cuda
def test_mixed_devices_raise():
    input, offset, mask, weight, bias = Case("bad").tensors(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="all tensors must be on one device"):
        op(input.cuda(), offset, mask, weight, bias, [1, 1], [1, 1], [1, 1], 1, 1)


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cuda_matches_reference_float64(case):
    assert_matches_reference(case, torch.float64, "cuda", rtol=1e-9, atol=1e-9)


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cuda_matches_cpu_float32(case):
    cpu = case.tensors(dtype=torch.float32)
    cuda = [t.cuda() if t is not None else None for t in cpu]
    out, grads = forward_and_grads(op, cpu, case.conv_args())
    out_cuda, grads_cuda = forward_and_grads(op, cuda, case.conv_args())
    torch.testing.assert_close(out_cuda.cpu(), out, rtol=1e-4, atol=1e-4)
    for grad, grad_cuda in zip(grads, grads_cuda):
        if grad is not None:
            torch.testing.assert_close(grad_cuda.cpu(), grad, rtol=1e-3, atol=1e-3)


@requires_cuda
@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("several_chunks", "groups2_dg8")],
                         ids=lambda c: c.name)
def test_cuda_chunked_path_matches_reference(case, monkeypatch):
    # 37 pixels per chunk: many chunks, none aligned with the rows, a short last one.
    monkeypatch.setenv("IEDVR_CUDA_CHUNK_PIXELS", "37")
    assert_matches_reference(case, torch.float64, "cuda", rtol=1e-9, atol=1e-9)


@requires_cuda
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_cuda_low_precision_close_to_float32(dtype, tolerance):
    case = Case("half", in_channels=64, out_channels=64, height=40, width=36, deformable_groups=8)
    low = [t.to("cuda", dtype) if t is not None else None for t in case.tensors(dtype=torch.float32)]
    high = [t.float() if t is not None else None for t in low]
    out, grads = forward_and_grads(op, low, case.conv_args())
    ref_out, ref_grads = forward_and_grads(op, high, case.conv_args())
    assert out.dtype == dtype
    for result, reference in zip([out, *grads], [ref_out, *ref_grads]):
        assert ((result.float() - reference).norm() / reference.norm()) < tolerance


@requires_cuda
def test_cuda_autocast_runs_in_float16():
    case = Case("autocast", in_channels=16, out_channels=8, deformable_groups=4)
    tensors = [t.cuda() if t is not None else None for t in case.tensors(dtype=torch.float32)]
    with torch.autocast("cuda", dtype=torch.float16):
        out = op(*tensors, *case.conv_args())
    assert out.dtype == torch.float16


@requires_cuda
def test_cuda_gradcheck_float64():
    case = Case("small", batch=2, in_channels=4, out_channels=4, height=5, width=6, groups=2,
                deformable_groups=2)
    tensors = [t.requires_grad_(True) for t in case.tensors(device="cuda")]
    assert torch.autograd.gradcheck(lambda *t: op(*t, *case.conv_args()), tensors)


# The shape errors among BAD_ARGUMENTS: the fake kernel must raise them too, since torch.compile
# and torch.export trace with fake tensors and never reach the C++ checks.
SHAPE_ERRORS = [b for b in BAD_ARGUMENTS if b[0] in (
    "input_3d", "weight_channels", "offset_channels", "mask_channels", "offset_size", "bias_size",
    "mixed_dtype", "dg_not_divisor", "groups_not_divisor", "no_rows", "too_small")]


def bad_arguments(corrupt):
    input, offset, mask, weight, bias = Case("bad").tensors(dtype=torch.float32)
    args = dict(input=input, offset=offset, mask=mask, weight=weight, bias=bias, stride=[1, 1],
                padding=[1, 1], dilation=[1, 1], groups=1, deformable_groups=1)
    corrupt(args)
    return list(args.values())


@pytest.mark.parametrize("name, corrupt, message", SHAPE_ERRORS, ids=[b[0] for b in SHAPE_ERRORS])
def test_fake_kernel_rejects_what_the_kernel_rejects(name, corrupt, message):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = bad_arguments(corrupt)
    mode = FakeTensorMode()
    fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
    with mode, pytest.raises(RuntimeError, match=message):
        op(*fake)


@pytest.mark.parametrize("name", ["offset_size", "weight_channels", "mask_channels"])
def test_compiled_call_reports_the_shape_error(name):
    corrupt, message = next((c, m) for n, c, m in SHAPE_ERRORS if n == name)
    args = bad_arguments(corrupt)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: op(*a) * 2, backend="aot_eager", fullgraph=True)
    # Raised while tracing (TorchRuntimeError), not by the kernel when the compiled code runs.
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=message):
        compiled(*args)

    class Layer(torch.nn.Module):
        def forward(self, input, offset, mask, weight, bias):
            return op(input, offset, mask, weight, bias, *args[5:])

    with pytest.raises(RuntimeError, match=message):  # export runs no kernel at all
        torch.export.export(Layer(), tuple(args[:5]))


@pytest.mark.parametrize("weight_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("layout", ["contiguous", *LAYOUTS])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fake_backward_promises_the_strides_the_kernel_returns(case, layout, weight_layout):
    """torch.compile builds its graph on the fake kernel's strides and checks them against the
    real ones: each gradient in the layout of its tensor, for every layout the network hands it
    (channels-last activations and weights in training)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    lay_out = LAYOUTS.get(layout, lambda t: t)
    input, offset, mask, weight, bias = case.tensors()
    input, offset, mask = lay_out(input), lay_out(offset), lay_out(mask)
    weight = weight.contiguous(memory_format=weight_layout)
    output = op(input, offset, mask, weight, bias, *case.conv_args())
    tensors = [lay_out(torch.randn(output.shape, dtype=output.dtype)), input, offset, mask,
               weight, bias]
    backward = torch.ops.iedvr.modulated_deform_conv2d_backward
    real = backward(*tensors, *case.conv_args())
    mode = FakeTensorMode()
    fakes = [None if t is None else mode.from_tensor(t) for t in tensors]
    with mode:
        promised = backward(*fakes, *case.conv_args())
    for name, grad, fake in zip(("input", "offset", "mask", "weight", "bias"), real, promised):
        assert (grad is None) == (fake is None), name
        if grad is not None:
            assert grad.stride() == fake.stride(), name


def test_fake_kernel_shapes_follow_stride_padding_dilation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    case = Case("geometry", batch=2, height=11, width=13, stride=(2, 3), padding=(2, 1),
                dilation=(2, 1), kernel=(3, 2), groups=2, deformable_groups=2, out_channels=6)
    real = case.tensors(dtype=torch.float32)
    expected = op(*real, *case.conv_args()).shape
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) if t is not None else None for t in real]
        assert op(*fake, *case.conv_args()).shape == expected


MASKS = {"input": [True, False, False, False, False],
         "offset_and_mask": [False, True, True, False, False],
         "weight_and_bias": [False, False, False, True, True],
         "input_and_weight": [True, False, False, True, False],
         "none": [False] * 5}


@pytest.mark.parametrize("wanted", MASKS.values(), ids=MASKS.keys())
def test_backward_computes_only_the_gradients_asked_for(wanted):
    case = Case("mask", batch=2, in_channels=8, out_channels=6, groups=2, deformable_groups=2,
                stride=(2, 1), height=9, width=10)
    tensors = case.tensors()
    grad_output = torch.randn(op(*tensors, *case.conv_args()).shape, dtype=torch.float64)
    grads = torch.ops.iedvr.modulated_deform_conv2d_backward(grad_output, *tensors,
                                                            *case.conv_args(), wanted)
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    expected = torch.autograd.grad(modulated_deform_conv2d_reference(*leaves, *case.conv_args()),
                                   leaves, grad_output)
    for name, grad, want, reference in zip(("input", "offset", "mask", "weight", "bias"), grads,
                                           wanted, expected):
        if want:
            torch.testing.assert_close(grad, reference, rtol=1e-9, atol=1e-9,
                                       msg=lambda m: f"{name}: {m}")
        else:
            assert grad is None, name


def test_autograd_asks_only_for_the_gradients_of_inputs_that_require_them():
    from torch.utils._python_dispatch import TorchDispatchMode

    backward_op = torch.ops.iedvr.modulated_deform_conv2d_backward.default
    masks = []

    class RecordMasks(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is backward_op:
                masks.append(list(args[11]))
            return func(*args, **(kwargs or {}))

    case = Case("frozen", deformable_groups=2)
    input, offset, mask, weight, bias = case.tensors()
    # A frozen layer's weight and bias, with the offsets trained: the alignment's usual case when
    # fine-tuning only the offset predictors.
    input, offset = input.requires_grad_(True), offset.requires_grad_(True)
    out = op(input, offset, mask, weight, bias, *case.conv_args())
    with RecordMasks():
        grad_input, grad_offset = torch.autograd.grad(out.square().sum(), (input, offset))
    assert masks == [[True, True, False, False, False]]
    leaves = [t.detach().requires_grad_(True) for t in (input, offset)]
    reference = modulated_deform_conv2d_reference(leaves[0], leaves[1], mask, weight, bias,
                                                  *case.conv_args())
    expected = torch.autograd.grad(reference.square().sum(), leaves)
    torch.testing.assert_close(grad_input, expected[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad_offset, expected[1], rtol=1e-9, atol=1e-9)


def test_opcheck_backward_with_a_partial_mask():
    case = Case("opcheck", in_channels=4, out_channels=4, height=6, width=5, deformable_groups=2)
    tensors = case.tensors(dtype=torch.float32)
    grad_output = torch.randn(op(*tensors, *case.conv_args()).shape)
    torch.library.opcheck(torch.ops.iedvr.modulated_deform_conv2d_backward.default,
                          (grad_output, *tensors, *case.conv_args(), [True, False, True, False, True]))
