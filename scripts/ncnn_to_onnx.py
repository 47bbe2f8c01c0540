#!/usr/bin/env python3
"""Converts an ncnn SRVGGNetCompact model (Real-ESRGAN's realesr-animevideov3) to ONNX.

Usage: ncnn_to_onnx.py MODEL.param MODEL.bin OUT.onnx

The converter reads the ncnn text graph and refuses any layer it does not know, so a
different network is an error, never a silently wrong model. Supported layers: Input,
Split, Convolution (3x3 or any square kernel, stride 1, bias), PReLU (per channel),
PixelShuffle (PyTorch order = ONNX DepthToSpace CRD), Interp (nearest or bilinear,
integer scale) and BinaryOp add. The output graph is opset 13, input `input`
[1,3,h,w] in 0-1, output `output` [1,3,s*h,s*w].

ncnn's .bin layout (ModelBinFromDataReader): per layer in graph order, a convolution's
weights start with a 4-byte tag (0x01306B47 = fp16, 0 = fp32), padded to 4 bytes;
biases and PReLU slopes are raw fp32 with no tag.
"""
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_TAG = 0x01306B47
FP32_TAG = 0


def fail(msg):
    sys.exit(f"ncnn_to_onnx: {msg}")


def parse_param(path):
    with open(path, encoding="ascii") as f:
        lines = [ln.split() for ln in f if ln.strip()]
    if not lines or lines[0] != ["7767517"]:
        fail(f"{path}: not an ncnn param file (magic 7767517 missing)")
    n_layers = int(lines[1][0])
    layers = []
    for tok in lines[2 : 2 + n_layers]:
        ltype, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        ins = tok[4 : 4 + n_in]
        outs = tok[4 + n_in : 4 + n_in + n_out]
        params = {}
        for kv in tok[4 + n_in + n_out :]:
            k, v = kv.split("=", 1)
            if int(k) < 0:
                fail(f"layer {name}: array parameters are not supported")
            params[int(k)] = float(v) if any(c in v for c in ".eE") else int(v)
        layers.append((ltype, name, ins, outs, params))
    if len(layers) != n_layers:
        fail(f"{path}: header says {n_layers} layers, found {len(layers)}")
    return layers


class Bin:
    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            fail(f"weights file ends early (need {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def tagged(self, count):
        (tag,) = struct.unpack("<I", self.take(4))
        if tag == FP16_TAG:
            raw = self.take((count * 2 + 3) // 4 * 4)
            return np.frombuffer(raw[: count * 2], dtype="<f2").astype(np.float32)
        if tag == FP32_TAG:
            return np.frombuffer(self.take(count * 4), dtype="<f4").copy()
        fail(f"unsupported weight tag 0x{tag:08X} at offset {self.pos - 4}")

    def raw_f32(self, count):
        return np.frombuffer(self.take(count * 4), dtype="<f4").copy()


def convert(param_path, bin_path, out_path):
    layers = parse_param(param_path)
    weights = Bin(bin_path)
    nodes, inits = [], []
    alias = {}  # ncnn blob -> ONNX value (Split just fans a blob out)
    channels = {}  # blob -> channel count, to size PReLU slopes and check kernels
    scale_total = None
    input_blob = None

    def src(blob):
        return alias.get(blob, blob)

    for ltype, name, ins, outs, p in layers:
        if ltype == "Input":
            input_blob = outs[0]
            alias[input_blob] = "input"
            channels[input_blob] = 3
        elif ltype == "Split":
            for o in outs:
                alias[o] = src(ins[0])
                channels[o] = channels[ins[0]]
        elif ltype == "Convolution":
            num_out, k = p[0], p.get(1, 1)
            if p.get(3, 1) != 1 or p.get(2, 1) != 1:
                fail(f"layer {name}: only stride 1, dilation 1 convolutions are supported")
            pad = p.get(4, 0)
            size = p[6]
            c_in = size // (num_out * k * k)
            if c_in * num_out * k * k != size or c_in != channels[ins[0]]:
                fail(f"layer {name}: weight size {size} does not match {num_out}x{channels[ins[0]]}x{k}x{k}")
            w = weights.tagged(size).reshape(num_out, c_in, k, k)
            inits.append(numpy_helper.from_array(w, f"{name}.weight"))
            conv_in = [src(ins[0]), f"{name}.weight"]
            if p.get(5, 0):
                inits.append(numpy_helper.from_array(weights.raw_f32(num_out), f"{name}.bias"))
                conv_in.append(f"{name}.bias")
            nodes.append(
                helper.make_node(
                    "Conv", conv_in, [outs[0]], name=name, kernel_shape=[k, k], pads=[pad] * 4, strides=[1, 1]
                )
            )
            channels[outs[0]] = num_out
        elif ltype == "PReLU":
            n = p.get(0, 1)
            slope = weights.raw_f32(n).reshape(n, 1, 1)
            inits.append(numpy_helper.from_array(slope, f"{name}.slope"))
            nodes.append(helper.make_node("PRelu", [src(ins[0]), f"{name}.slope"], [outs[0]], name=name))
            channels[outs[0]] = channels[ins[0]]
        elif ltype == "PixelShuffle":
            r = p.get(0, 1)
            if p.get(1, 0) != 0:
                fail(f"layer {name}: only PixelShuffle mode 0 (PyTorch order) is supported")
            nodes.append(helper.make_node("DepthToSpace", [src(ins[0])], [outs[0]], name=name, blocksize=r, mode="CRD"))
            channels[outs[0]] = channels[ins[0]] // (r * r)
            scale_total = r
        elif ltype == "Interp":
            mode = {1: "nearest", 2: "linear"}.get(p.get(0, 0))
            if mode is None:
                fail(f"layer {name}: Interp resize type {p.get(0)} is not supported")
            sh, sw = float(p.get(1, 1.0)), float(p.get(2, 1.0))
            scales = numpy_helper.from_array(np.array([1, 1, sh, sw], dtype=np.float32), f"{name}.scales")
            inits.append(scales)
            kw = {"mode": mode}
            if mode == "nearest":
                # PyTorch's F.interpolate(mode="nearest"), which the network was trained with.
                kw.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            else:
                kw.update(coordinate_transformation_mode="pytorch_half_pixel" if p.get(6, 0) == 0 else "align_corners")
            nodes.append(helper.make_node("Resize", [src(ins[0]), "", f"{name}.scales"], [outs[0]], name=name, **kw))
            channels[outs[0]] = channels[ins[0]]
        elif ltype == "BinaryOp":
            if p.get(0, 0) != 0 or len(ins) != 2:
                fail(f"layer {name}: only a two-input BinaryOp add is supported")
            nodes.append(helper.make_node("Add", [src(ins[0]), src(ins[1])], [outs[0]], name=name))
            channels[outs[0]] = channels[ins[0]]
        else:
            fail(f"layer {name}: unsupported ncnn layer type {ltype}")

    if weights.pos != len(weights.data):
        fail(f"{len(weights.data) - weights.pos} bytes of weights left unused: the param file does not match the bin")
    if input_blob is None or scale_total is None:
        fail("the graph has no Input or no PixelShuffle: not an SRVGGNetCompact model")
    last = layers[-1][3][0]
    if channels[last] != 3:
        fail(f"the output has {channels[last]} channels, expected 3")
    # The final blob becomes `output` (rename it in the node that produces it).
    for node in nodes:
        node.output[:] = ["output" if o == last else o for o in node.output]

    graph = helper.make_graph(
        nodes,
        "srvgg_compact",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "oh", "ow"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="comine-ncnn2onnx")
    model.ir_version = 8  # readable by every ONNX Runtime since 1.14
    model.metadata_props.append(onnx.StringStringEntryProto(key="scale", value=str(scale_total)))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out_path)
    print(f"ncnn_to_onnx: {len(nodes)} nodes, scale x{scale_total}, wrote {out_path}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        fail("usage: ncnn_to_onnx.py MODEL.param MODEL.bin OUT.onnx")
    convert(*sys.argv[1:])
