"""Processes that each run one single-thread TFLite interpreter (``ai-edge-litert``).

XNNPACK scales poorly across threads on small CPUs (2 threads: 1.15x one
thread on BirdNET), while independent interpreters, one per core, scale
almost linearly. This module is imported by the worker processes, so it
imports nothing heavy (no torch).
"""

from __future__ import annotations

import warnings

import numpy as np

_interpreter = None
_indices: tuple[int, int, int] = (0, 0, 0)


def make_interpreter(model_path: str, threads: int, tensor_name: str):
    """An interpreter whose intermediate tensor ``tensor_name`` stays readable, and its tensor indices."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "intended for debugging": it is how an inner tensor can be read
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=model_path, num_threads=threads, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inner = next(d["index"] for d in interpreter.get_tensor_details() if d["name"] == tensor_name)
    indices = (interpreter.get_input_details()[0]["index"], inner, interpreter.get_output_details()[0]["index"])
    return interpreter, indices


def run(interpreter, indices: tuple[int, int, int], batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inner tensor, output) of one batch; resizes the input when the batch size changes."""
    source, inner, output = indices
    if tuple(interpreter.get_input_details()[0]["shape"]) != batch.shape:
        interpreter.resize_tensor_input(source, list(batch.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(source, np.ascontiguousarray(batch, dtype=np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(inner).copy(), interpreter.get_tensor(output).copy()


def initialise(model_path: str, tensor_name: str) -> None:
    """Worker initialiser: one single-thread interpreter per process."""
    global _interpreter, _indices
    _interpreter, _indices = make_interpreter(model_path, 1, tensor_name)


def run_in_worker(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return run(_interpreter, _indices, batch)
