"""Benchmarks that write JSON (and Markdown) under reports/bench/, peers measured in the same run.

    sc        the SC-8shot self-consistency workload and its run: engine vs HF generate vs HF continuous batching
    systems   the systems SC-8shot compares (engine, hf, hf-cb), the workload they run, their run records
    machine   machine and model facts, GEMM rate / bandwidth, peak RSS, the throughput ceiling
    output    SC-8shot's JSON, Markdown table and throughput plot
    kernels   attention kernels vs their torch references, and timings on CUDA
"""
