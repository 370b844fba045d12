"""Processes that each run one single-thread TFLite interpreter (``ai-edge-litert``).

XNNPACK scales poorly across threads on small CPUs (2 threads: 1.15x one
thread on BirdNET), while independent interpreters, one per core, scale
almost linearly. This module is imported by the worker processes, so it
imports nothing heavy (no torch).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

_interpreter = None
_indices: tuple[int, tuple[int, ...], int] = (0, (0,), 0)


def make_interpreter(model_path: str, threads: int, tensor_name: str, pooled: Sequence[str] = ()):
    """An interpreter whose intermediate tensors stay readable, and its tensor indices.

    :func:`run` returns the tensor ``tensor_name`` followed by the mean and the
    max over height and width of each (NHWC) tensor named in ``pooled``.
    """
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "intended for debugging": it is how an inner tensor can be read
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=model_path, num_threads=threads, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    inner = tuple(index[name] for name in (tensor_name, *pooled))
    indices = (interpreter.get_input_details()[0]["index"], inner, interpreter.get_output_details()[0]["index"])
    return interpreter, indices


def run(interpreter, indices: tuple[int, tuple[int, ...], int], batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner tensors, output) of one batch; resizes the input when the batch size changes."""
    source, inner, output = indices
    if tuple(interpreter.get_input_details()[0]["shape"]) != batch.shape:
        interpreter.resize_tensor_input(source, list(batch.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(source, np.ascontiguousarray(batch, dtype=np.float32))
    interpreter.invoke()
    first, *rest = (interpreter.get_tensor(i) for i in inner)
    pooled = [reduce(tensor, axis=(1, 2)) for tensor in rest for reduce in (np.mean, np.max)]
    inner_values = np.concatenate([first, *pooled], axis=1) if pooled else first.copy()
    return inner_values, interpreter.get_tensor(output).copy()


def initialise(model_path: str, tensor_name: str, pooled: Sequence[str] = ()) -> None:
    """Worker initialiser: one single-thread interpreter per process."""
    global _interpreter, _indices
    _interpreter, _indices = make_interpreter(model_path, 1, tensor_name, pooled)


def run_in_worker(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return run(_interpreter, _indices, batch)
