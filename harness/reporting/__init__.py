"""Human-readable results.

    tables     the one metric order and number format
    markdown   report.md; write_reports (report.md + report.html)
    html       report.html: one self-contained page with plots and a problem browser
    terminal   the eval progress bar, results table and headline
"""
