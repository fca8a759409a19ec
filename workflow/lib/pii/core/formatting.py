"""How a number is printed in every table: the Markdown tables of the scoring stage and the report page alike."""

import math


def format_number(value: float | None, decimals: int, sign: bool = False) -> str:
    """Fixed decimals, a real minus sign, ± for a change that rounds to zero, — for a missing value."""
    if value is None or not math.isfinite(value):
        return "—"
    if sign and round(value, decimals) == 0:
        return f"±{0:.{decimals}f}"
    text = f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"
    return text.replace("-", "−")


def format_p(p: float | None) -> str:
    """p<0.001 or p=0.123; empty when there is no test."""
    if p is None or not math.isfinite(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
