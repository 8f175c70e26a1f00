"""Benchmarks that write JSON (and Markdown) under reports/bench/, peers measured in the same run.

    sc        the SC-8shot self-consistency workload: engine vs HF generate vs HF continuous batching
    kernels   attention kernels vs their torch references, and timings on CUDA
"""
