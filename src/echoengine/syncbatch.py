"""What makes a step across processes the step of one process on the whole batch: batch norm, dropout, mixup.

In a run across processes (:mod:`echoengine.ddp`) each rank holds an equal
part of every global batch, and DDP averages the gradients. Three things
would still make it another run than a single process's on the same
batches, and each is made the same here:

- **Batch norm** normalises with the statistics of the batch it sees: each
  rank's part. ``nn.SyncBatchNorm`` shares them, but only for CUDA (and XPU,
  HPU) tensors; on the CPU it raises ``ValueError: SyncBatchNorm expected
  input tensor to be on GPU``. :class:`SyncedBatchNorm` works on any
  backend (gloo): the per-channel sum and count, then the sum of squared
  deviations from the global mean, are summed over the ranks with the
  differentiable ``torch.distributed.nn.functional.all_reduce``, so the
  forward pass, the backward pass (autograd sums the statistics' gradients
  over the ranks) and the running statistics are those of one batch norm
  over the whole batch.
- **Dropout** draws its mask from torch's generator, which every rank seeds
  alike: the ranks would draw the same mask for their parts.
  :class:`ShardedDropout` draws the whole batch's mask, as one process
  would, and keeps this rank's part; every generator then moves on as one
  process's would.
- **Mixup** pairs the examples of a batch: :func:`mix` gathers the whole
  batch, mixes it as one process would and keeps this rank's part.

(A multi-label loss normalised by the known labels of the batch divides by
those of the whole batch: :func:`summed`, in ``training.MaskedBCE``.)

:func:`convert` swaps the layers for these when there are several
processes (on CUDA: ``nn.SyncBatchNorm`` through timm's conversion, which
keeps the activation of timm's norm-and-activation layers; dropout is left
as it is there) and :func:`revert` puts the original layers back. A swapped
layer shares its parameters and buffers with the original, so the state
dict (checkpoints, ``weights.pt``) keeps the plain layers' keys and loads
into the model a bundle builds. With one process each is the plain layer.

Examples
--------
>>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
>>> convert(model, torch.device("cpu")) is model  # one process: nothing to share
True
>>> synced = SyncedBatchNorm.of(model[1])
>>> synced.train()(torch.randn(4, 4, 5, 5)).shape, list(synced.state_dict()) == list(model[1].state_dict())
(torch.Size([4, 4, 5, 5]), True)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn import functional
from torch.nn.modules.batchnorm import _BatchNorm

from echoengine import ddp
from echoengine.augment import mixup
from echoengine.errors import EchoError

__all__ = ["ShardedDropout", "SyncedBatchNorm", "convert", "mix", "revert", "summed", "synchronised"]

#: The batch-norm classes swapped as they are (with timm's BatchNormAct2d); other subclasses are refused.
_PLAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SyncedBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch, summed over the ranks.

    Built from a layer by :meth:`of`, which it shares its parameters and
    buffers with; a timm norm-and-activation layer keeps its ``drop`` and
    ``act`` after the normalisation. Out of training, or with one process,
    it is the plain layer.

    Examples
    --------
    >>> layer = nn.BatchNorm1d(3)
    >>> x = torch.randn(6, 3)
    >>> bool(torch.allclose(SyncedBatchNorm.of(layer).train()(x), nn.BatchNorm1d(3).train()(x)))
    True
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    @classmethod
    def of(cls, layer: _BatchNorm) -> SyncedBatchNorm:
        """A synchronised layer sharing ``layer``'s parameters, buffers, mode (and timm's ``drop`` and ``act``)."""
        synced = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
        synced.weight, synced.bias = layer.weight, layer.bias
        synced.running_mean, synced.running_var = layer.running_mean, layer.running_var
        synced.num_batches_tracked = layer.num_batches_tracked
        for name in ("drop", "act"):
            if isinstance(getattr(layer, name, None), nn.Module):
                synced.add_module(name, getattr(layer, name))
        return _remember(synced, layer)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = self._synced(input) if self.training and ddp.world() > 1 else super().forward(input)
        for name in ("drop", "act"):
            if name in self._modules:
                output = self._modules[name](output)
        return output

    def _synced(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the global batch's mean and (biased) variance; update the running statistics with them."""
        self._check_input_dim(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        count = x.new_full((1,), x.numel() // x.size(1), dtype=torch.float64)
        total = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        count = float(total[-1])
        if count < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got {count:.0f} in all")
        mean = total[:-1] / count
        centred = x - mean.to(x.dtype).view(shape)
        var = all_reduce(centred.square().sum(dims, dtype=torch.float64)) / count
        self._update_running(mean.detach(), var.detach(), count)
        output = centred * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """The running statistics, updated as ``F.batch_norm`` updates them (with the unbiased variance)."""
        if not self.track_running_stats or self.running_mean is None:
            return
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        with torch.no_grad():
            self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
            unbiased = var * (count / (count - 1))
            self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


class ShardedDropout(nn.Dropout):
    """Dropout with this rank's part of the mask one process would draw for the whole batch.

    Every rank holds an equal part of the global batch (rank ``r`` the
    ``r``-th) and the same generator state, so each draws the whole batch's
    mask (``F.dropout`` of ones, as one process's ``F.dropout`` draws it)
    and keeps its rows. Out of training, with one process, or with ``p`` 0
    or 1 (no draw), it is the plain layer.

    Examples
    --------
    >>> layer = ShardedDropout.of(nn.Dropout(0.5))
    >>> _ = torch.manual_seed(0); a = layer(torch.ones(4, 3))
    >>> _ = torch.manual_seed(0); b = nn.Dropout(0.5)(torch.ones(4, 3))
    >>> bool(torch.equal(a, b))
    True
    """

    @classmethod
    def of(cls, layer: nn.Dropout) -> ShardedDropout:
        """The sharded layer for ``layer`` (same ``p``, mode)."""
        return _remember(cls(layer.p, layer.inplace), layer)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        world = ddp.world()
        if not self.training or world == 1 or self.p in (0.0, 1.0) or input.dim() == 0:
            return super().forward(input)
        part = input.shape[0]
        ones = torch.ones((part * world, *input.shape[1:]), dtype=input.dtype, device=input.device)
        if input.dim() == 4 and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last):
            ones = ones.contiguous(memory_format=torch.channels_last)  # drawn in the same memory order
        mask = functional.dropout(ones, self.p, training=True)
        rank = ddp.rank()
        return input * mask[rank * part : (rank + 1) * part]


def mix(images: torch.Tensor, targets: torch.Tensor, *, alpha: float,
        rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`echoengine.augment.mixup` of the global batch, this rank's part (the batch itself with one process).

    Every rank gathers the parts, mixes the whole batch with the same
    ``rng`` (seeded alike on every rank) and keeps its part, so pairs cross
    the ranks and ``rng`` moves on as in one process.

    Examples
    --------
    >>> x, y = mix(torch.rand(4, 3), torch.eye(4), alpha=0.4, rng=np.random.default_rng(0))
    >>> x.shape, y.shape
    (torch.Size([4, 3]), torch.Size([4, 4]))
    """
    world = ddp.world()
    if world == 1:
        return mixup(images, targets, alpha=alpha, rng=rng)
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    whole = [_gathered(images.contiguous(), world), _gathered(targets.contiguous(), world)]
    mixed = mixup(*whole, alpha=alpha, rng=rng)
    part, rank = images.shape[0], ddp.rank()
    images, targets = (tensor[rank * part : (rank + 1) * part] for tensor in mixed)
    return (images.contiguous(memory_format=torch.channels_last) if channels_last else images), targets


def summed(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks, out of autograd (itself with one process): a count of the whole batch.

    Examples
    --------
    >>> int(summed(torch.tensor(3)))
    3
    """
    if ddp.world() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def _gathered(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """The ranks' equal parts of ``tensor``, concatenated in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


def convert(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` ready for training across the ranks (:func:`synchronised`); itself, untouched, with one process."""
    if ddp.world() == 1:
        return model
    return synchronised(model, cuda=device.type == "cuda")


def synchronised(model: nn.Module, *, cuda: bool) -> nn.Module:
    """``model`` with the layers swapped for those of a run across processes (in place).

    On CUDA, its batch norm becomes ``nn.SyncBatchNorm`` through timm's
    conversion (torch's own would keep timm's ``BatchNormAct2d`` activation
    as a child its forward never calls); elsewhere its batch norm and
    ``nn.Dropout`` layers become :class:`SyncedBatchNorm` and
    :class:`ShardedDropout`. A batch-norm subclass of unknown behaviour is
    refused rather than left unsynchronised.
    """
    if cuda:
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(model)
    return _swap(model, _for_processes)


def revert(model: nn.Module) -> nn.Module:
    """``model`` with the layers :func:`convert` swapped on the CPU back to the originals, in the same mode."""
    def original(layer: nn.Module) -> nn.Module | None:
        if not isinstance(layer, (SyncedBatchNorm, ShardedDropout)):
            return None
        return layer.plain.train(layer.training)

    return _swap(model, original)


def _remember(swapped: nn.Module, layer: nn.Module) -> nn.Module:
    """``swapped`` in ``layer``'s mode, holding ``layer`` (not as a submodule: the state dict stays the layer's)."""
    swapped.train(layer.training)
    object.__setattr__(swapped, "plain", layer)
    return swapped


def _for_processes(layer: nn.Module) -> nn.Module | None:
    """The layer a run across processes on the CPU uses for ``layer``; None to keep it (and look inside)."""
    if isinstance(layer, (SyncedBatchNorm, ShardedDropout)):
        return layer
    if type(layer) is nn.Dropout:
        return ShardedDropout.of(layer)
    if not isinstance(layer, _BatchNorm):
        return None
    if type(layer) in _PLAIN_NORMS or _timm_norm_act(layer):
        return SyncedBatchNorm.of(layer)
    raise EchoError(f"cannot synchronise batch norm across processes: {type(layer).__qualname__} is not a "
                    "plain batch-norm layer")


def _timm_norm_act(layer: nn.Module) -> bool:
    """Whether ``layer`` is timm's ``BatchNormAct2d`` (batch norm, then its ``drop`` and ``act``)."""
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return False
    return type(layer) is BatchNormAct2d


def _swap(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """``module`` with each module ``m`` in it (itself included) for which ``replace(m)`` is not None replaced."""
    new = replace(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        module.add_module(name, _swap(child, replace))
    return module
