"""vs_iedvr.upscale keeps a YUV clip's range (issue 35): a full-range clip (_Range=FULL, as phones
and screen captures give) came back limited range, its levels changed without a word (Y 229 came
back 213). The oracle: a flat clip, which the shipped weights upscale to the same flat colour
within a few codes, so that any range conversion (16 of 255 codes at Y=229) shows."""

import numpy as np
import pytest
import vapoursynth as vs

import vs_iedvr

core = vs.core


def flat_clip(format_id: int, values: list[int], color_range: int | None):
    clip = core.std.BlankClip(width=32, height=24, format=format_id, length=5, color=values)
    props = {"_Matrix": 1}  # BT.709
    if color_range is not None:
        props["_Range"] = color_range
    return core.std.SetFrameProps(clip, **props)


@pytest.mark.parametrize("format_id, values, color_range", [
    (vs.YUV444P8, [229, 128, 128], vs.RANGE_FULL),
    (vs.YUV420P8, [229, 128, 128], vs.RANGE_FULL),
    (vs.YUV420P10, [916, 512, 512], vs.RANGE_FULL),
    (vs.YUV420P8, [200, 128, 128], vs.RANGE_LIMITED),
    (vs.YUV420P8, [200, 128, 128], None),  # no _Range: limited in and out, as resize assumes
], ids=["444p8-full", "420p8-full", "420p10-full", "420p8-limited", "420p8-unmarked"])
def test_the_range_and_levels_come_back_as_they_went_in(format_id, values, color_range):
    clip = flat_clip(format_id, values, color_range)
    out = vs_iedvr.upscale(clip, device_index=-1, fp16=False)
    frame = out.get_frame(2)
    assert (out.width, out.height, out.format.id) == (128, 96, format_id)
    if color_range is None:
        assert frame.props.get("_Range", vs.RANGE_LIMITED) == vs.RANGE_LIMITED
    else:
        assert frame.props["_Range"] == color_range
    tolerance = 3 << (clip.format.bits_per_sample - 8)  # codes of 8 bits
    for plane, value in enumerate(values):
        mean = float(np.asarray(frame[plane]).mean())
        assert abs(mean - value) <= tolerance, (plane, mean, value)
