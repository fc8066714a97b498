"""Which frames make the window of a frame: the plugin's border rule (csrc/vsfilter/vs_filter.cpp),
for the Python code that builds windows itself (vs_iedvr.mlrt's shifted clips, evaluation)."""


def fold(i: int, first: int, last: int, border: str = "reflect") -> int:
    """Index `i` folded into [first, last] by reflection about the ends (or clamped to them with
    border="replicate"): the plugin's rule, periodic for windows wider than the range."""
    if first == last:
        return first
    if border == "replicate":
        return min(max(i, first), last)
    period = 2 * (last - first)
    offset = (i - first) % period
    return first + (offset if offset <= last - first else period - offset)
