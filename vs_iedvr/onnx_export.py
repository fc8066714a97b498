"""ONNX export, for vs-mlrt (core.trt.Model, core.ov.Model) and other ONNX runtimes.

    export_onnx(net, "edvr.onnx", target="openvino", arch="edvr-m")             # any frame size
    export_onnx(net, "edvr.onnx", target="tensorrt", arch="edvr-m", size=(320, 180))

The graph takes the window's frames stacked in channels, as vs-mlrt joins the planes of its
`clips`: input [1, 3 * T, H, W], float32 RGB on [0, 1], frame t (time n - T//2 + t) in channels
3t..3t+2; output [1, 3, H * scale, W * scale]. Frames of any size go in: the graph pads them to a
multiple of 4 by repeating the last row and column (as the model file does) and crops the result.

The deformable convolution becomes, per target:
- "tensorrt": ONNX's standard DeformConv (opset 19), which TensorRT's ONNX parser and onnx's
  reference evaluator implement. Its offset layout is ours (per offset group, per tap, (dy, dx)),
  its mask multiplies as ours does (ours is already through a sigmoid), and its sampling is
  bilinear over a zero-padded input, as ours.
- "openvino": OpenVINO's ONNX reader has no rule for DeformConv but reads
  org.openvinotoolkit::DeformableConv2D (inputs X, offset, W, mask; no bias: an Add follows).
  That op moves samples that fall less than a pixel outside the feature map onto its edge,
  where ours (and DeformConv) blend them with zeros, so the frame's border pixels would differ
  after trained offsets. The input is therefore padded with zeros first and the op told to pad
  nothing: the samples it then moves land on the zeros, as ours.
"""

import copy
import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from .model_file import UNTRAINED, WEIGHT_DTYPES, crop_output, script, written_atomically
from .network import IEDVR, count_parameters

OPSET = 19
OPENVINO_DOMAIN = "org.openvinotoolkit"
TARGETS = {"tensorrt": "for TensorRT (vs-mlrt's core.trt): ONNX's DeformConv, opset 19",
           "openvino": "for OpenVINO (vs-mlrt's core.ov): org.openvinotoolkit::DeformableConv2D"}
INPUT_NAME, OUTPUT_NAME = "input", "output"
METADATA_KEY = "vs_iedvr"
# The size traced when the export is for any size; nothing about it stays in the graph.
TRACE_SIZE = (44, 36)  # width, height


@script
def pad_to_multiple(frames: Tensor, multiple: int) -> Tensor:
    """Repeats the last row and column of [B, C, H, W] up to a multiple of `multiple`, the amounts
    computed in the graph from the input's size. Without a branch (padding by 0 is valid), so the
    ONNX graph has no If node."""
    pad_h = (multiple - frames.size(2) % multiple) % multiple
    pad_w = (multiple - frames.size(3) % multiple) % multiple
    return F.pad(frames, [0, pad_w, 0, pad_h], mode="replicate")


class StackedFramesNetwork(nn.Module):
    """The network with vs-mlrt's input layout and the padding for any frame size:
    [B, 3 * T, H, W] -> [B, 3, H * scale, W * scale]."""

    def __init__(self, network: IEDVR):
        super().__init__()
        self.network = network
        self.num_frames = network.config.num_frame
        self.scale = network.config.scale
        self.size_multiple = network.config.size_multiple

    def forward(self, stacked: Tensor) -> Tensor:
        padded = pad_to_multiple(stacked, self.size_multiple)
        frames = padded.unflatten(1, (self.num_frames, 3))
        return crop_output(self.network(frames), stacked, self.scale)


def _int_constant(g, values: list[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _deform_conv_symbolic(target: str):
    """The ONNX symbolic of iedvr::modulated_deform_conv2d for `target`."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "is", "is", "is", "i", "i")
    def symbolic(g, input, offset, mask, weight, bias, stride, padding, dilation, groups,
                 deformable_groups):
        kernel = symbolic_helper._get_tensor_sizes(weight)[2:]
        if symbolic_helper._is_none(bias):
            raise ValueError("ONNX export of modulated_deform_conv2d needs a bias (every "
                             "deformable convolution of these networks has one)")
        if target == "tensorrt":
            return g.op("DeformConv", input, weight, offset, bias, mask,
                        dilations_i=dilation, group_i=groups, kernel_shape_i=kernel,
                        offset_group_i=deformable_groups, pads_i=padding + padding,
                        strides_i=stride)
        if min(padding) < 1:
            raise ValueError("the OpenVINO form needs a padding of at least 1 (the zeros that "
                             f"make its border sampling ours), got {padding}")
        pads = _int_constant(g, [0, 0, padding[0], padding[1], 0, 0, padding[0], padding[1]])
        zero_padded = g.op("Pad", input, pads, mode_s="constant")
        output = g.op(f"{OPENVINO_DOMAIN}::DeformableConv2D", zero_padded, offset, weight, mask,
                      strides_i=stride, pads_i=[0, 0, 0, 0], dilations_i=dilation, group_i=groups,
                      deformable_groups_i=deformable_groups)
        return g.op("Add", output, g.op("Unsqueeze", bias, _int_constant(g, [1, 2])))

    return symbolic


class MissingOnnxError(ImportError):
    """The onnx package, which writes and reads the files, is not installed."""


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingOnnxError("ONNX export needs the onnx package: pip install onnx") from None
    return onnx


def _store_weights_as_float16(model) -> None:
    """Every float32 initializer stored as float16, turned back into float32 by a Cast at the
    start of the graph: half the file, and the runtime still computes in the precision it is
    asked for (OpenVINO keeps such weights compressed in memory)."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for initializer in graph.initializer:
        if initializer.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(initializer)
        name = initializer.name
        initializer.CopyFrom(numpy_helper.from_array(values.astype("float16"), f"{name}.float16"))
        casts.append(helper.make_node("Cast", [f"{name}.float16"], [name], to=TensorProto.FLOAT,
                                      name=f"{name}.to_float32"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)


def trace_to_onnx(module: nn.Module, example_inputs: tuple, target: str, input_names: list[str],
                  output_names: list[str], dynamic_axes: dict | None = None) -> bytes:
    """`module` as an ONNX model (serialised) whose deformable convolutions take `target`'s form."""
    buffer = io.BytesIO()
    torch.onnx.register_custom_op_symbolic("iedvr::modulated_deform_conv2d",
                                           _deform_conv_symbolic(target), OPSET)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter is the one that takes a symbolic for a custom op and
            # exports the size arithmetic of the padding; its deprecation says nothing to users.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(module, example_inputs, buffer, dynamo=False, opset_version=OPSET,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes,
                              custom_opsets={OPENVINO_DOMAIN: 1} if target == "openvino" else None)
    finally:
        torch.onnx.unregister_custom_op_symbolic("iedvr::modulated_deform_conv2d", OPSET)
    return buffer.getvalue()


def export_onnx(network: IEDVR, path, target: str, arch: str, size: tuple[int, int] | None = None,
                weights: dict | None = None, weights_dtype: str = "float32") -> dict:
    """Writes `network` as ONNX for `target` ("tensorrt" or "openvino") to `path`.

    size: (width, height) fixes the input's size; None leaves height and width dynamic.
    weights: the provenance to record; weights_dtype: "float32" or "float16" (stored as float16,
    cast to float32 in the graph). Returns the metadata written into the file."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be (width, height) with positive values, got {size!r}")
    onnx = _import_onnx()
    config = network.config
    wrapped = StackedFramesNetwork(copy.deepcopy(network).eval().float().cpu())
    width, height = size if size is not None else TRACE_SIZE
    example = torch.rand(1, 3 * config.num_frame, height, width)
    dynamic_axes = None if size is not None else {INPUT_NAME: {2: "height", 3: "width"},
                                                  OUTPUT_NAME: {2: "out_height", 3: "out_width"}}

    exported = trace_to_onnx(wrapped, (example,), target, [INPUT_NAME], [OUTPUT_NAME], dynamic_axes)
    model = onnx.load_from_string(exported)
    # The exporter cannot follow the crop's size arithmetic to the output's shape: declare it.
    output_shape = model.graph.output[0].type.tensor_type.shape
    for dim, value in zip(output_shape.dim, [1, 3, height * config.scale, width * config.scale]):
        if size is not None or not dim.dim_param:
            dim.dim_value = value
    if weights_dtype == "float16":
        _store_weights_as_float16(model)
    metadata = {
        "architecture": arch,
        "config": config.to_dict(),
        "scale": config.scale,
        "num_frames": config.num_frame,
        "target": target,
        "input": {"name": INPUT_NAME, "layout": "[1, 3 * frames, height, width]",
                  "frames": f"n - {config.center} .. n + {config.center}, RGB each",
                  "size": "dynamic" if size is None else f"{width}x{height}",
                  "range": [0.0, 1.0], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "layout": "[1, 3, height * scale, width * scale]"},
        "parameters": count_parameters(network),
        "weights": weights or dict(UNTRAINED),
        "weights_dtype": weights_dtype,
        "vs_iedvr_version": __version__,
        "torch_version": torch.__version__,
    }
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    model.producer_name = "vs-iedvr"
    model.producer_version = __version__
    with written_atomically(path) as temporary:
        onnx.save(model, str(temporary))
    return metadata


def read_onnx_metadata(path) -> dict:
    """The vs-iedvr metadata of an exported ONNX file; ValueError for any other file."""
    onnx = _import_onnx()
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises protobuf's DecodeError and others
        raise ValueError(f"{path} is not an ONNX file ({error})") from None
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(f"{path} is an ONNX file without vs-iedvr metadata; export it with "
                     "`vs-iedvr export --format onnx`")
