"""One way to open an exported ONNX graph in ONNX Runtime on the CPU, for every compiled encoder."""

from __future__ import annotations


def cpu_session(onnx_bytes: bytes, threads: int):
    """An ``onnxruntime.InferenceSession`` over ``onnx_bytes`` (kept in memory, nothing written to disk):
    ``threads`` intra-op threads, sequential execution, every graph optimisation, errors-only logging (no
    optimiser chatter on the user's stderr)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
