"""Scoring: typed records of samples and runs, metrics from graded samples, paired statistics.

    records   SampleRecord (a samples.jsonl line), BackendInfo, RunResults (results.json)
    metrics   accuracy, mean@n, maj@k, pass@k, rates: per-problem scores, clustered stderr
    stats     paired bootstrap, McNemar, exact sign-flip test, Wilson intervals, length buckets
"""
