"""Analysis of finished runs.

    runs      a finished run directory loaded (Run), per-problem scores, metric names
    compare   runs side by side and paired differences (`harness compare`)
    regress   the non-inferiority gate against a committed baseline (`harness regress`)
"""
