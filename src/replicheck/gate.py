"""The release gate of ``scan --fail-above`` / ``--fail-if-copying``: whether a finished scan's
summary should stop a training or release pipeline, and why (issue #22).

A gate must not fire on noise: the replica rate is judged by the lower end of its 95% Wilson
interval, so a rate that might be below the limit passes, and C_T by its one-sided p-value.
"""

from __future__ import annotations

EXIT_GATE = 3  # a scan that ran and found more copying than the pipeline allows


def gate_failures(summary: dict, *, fail_above: float | None = None, fail_if_copying: float | None = None) -> list[str]:
    """Why the scan summarised by ``summary`` fails the gate (empty: it passes).

    ``fail_above``: the largest replica rate allowed; the gate fails when the lower bound of the
    rate's 95% interval exceeds it. ``fail_if_copying``: a significance level; the gate fails when a
    level's C_T p-value (copying side) is below it."""
    reasons = []
    if fail_above is not None:
        copies = summary["combined"]["n_copies"]
        low = copies["ci95"][0]
        if low > fail_above:
            reasons.append(f"{copies['count']} of {copies['total']} synthetic images are replicas "
                           f"({copies['rate']:.1%}, 95% CI from {low:.1%}), above --fail-above {fail_above:.1%}")
    if fail_if_copying is not None:
        for level, statistics in summary.get("dataset", {}).items():
            c_t = statistics.get("C_T", {})
            if c_t.get("available") and c_t["p_value"] < fail_if_copying:
                reasons.append(f"{level} level: C_T {c_t['C_T']:+.2f} (p={c_t['p_value']:.2g}) is below "
                               f"--fail-if-copying {fail_if_copying:g}: data copying")
        if not any(s.get("C_T", {}).get("available") for s in summary.get("dataset", {}).values()):
            reasons.append("--fail-if-copying needs C_T, which no level could compute "
                           "(it needs --holdout and the data-set tests)")
    return reasons
