"""`alignzoo tinyworld eval`'s band table: issue 13's bands for the base models, on hand-made rows."""

from alignzoo.tinyworld.training.compose.model_eval import band_checks, format_bands


def _row(overall, single=0.8, position=0.1, attr=0.05):
    return {"overall": overall, "single_object": single, "position": position, "color_attr": attr}


def test_bands_of_the_teacher_and_the_turbo_model():
    results = {
        "tiny-sd-v2": {"1": _row(0.1, single=0.2), "4": _row(0.353), "8": _row(0.36, single=0.75), "16": _row(0.61, position=0.41)},
        "tiny-turbo": {"1": _row(0.298), "4": _row(0.315)},
    }
    checks = {what: (value, ok) for what, value, _band, ok in band_checks(results)}
    assert not any("1 steps" in w for w in checks)  # the teacher's bands are for 4-16 steps
    assert checks["tiny-sd-v2 overall, 4 steps"] == (0.353, True)
    assert checks["tiny-sd-v2 single_object, 8 steps"] == (0.75, True)  # the band's edge is inside
    assert checks["tiny-sd-v2 overall, 16 steps"] == (0.61, False) and checks["tiny-sd-v2 position, 16 steps"] == (0.41, False)
    assert checks["tiny-turbo overall, 1 step / 4 steps"] == (round(0.298 / 0.315, 3), True)
    assert len(checks) == 3 * 4 + 1
    text = format_bands(band_checks(results))
    assert "| tiny-sd-v2 overall, 16 steps | 0.610 | [0.35, 0.6] | NO |" in text
    low_turbo = band_checks({"tiny-turbo": {"1": _row(0.2), "4": _row(0.3)}})
    assert low_turbo == [("tiny-turbo overall, 1 step / 4 steps", 0.667, ">= 0.8", False)]
    assert "no band applies" in format_bands(band_checks({"tiny-lcm-v2": {"4": _row(0.4)}}))
