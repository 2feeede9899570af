"""Ranges of class partitions: what one run of a per-class job covers."""

import pytest

from dedup_assets.partitions import (
    MAX_CLASSES_PER_RUN,
    RANGE_END_TAG,
    RANGE_START_TAG,
    ClassRange,
    class_ranges,
)

ORDER = [f"c{i:02d}" for i in range(10)]


def covered(ranges: list[ClassRange], order: list[str]) -> list[str]:
    out = []
    for r in ranges:
        a, b = order.index(r.start), order.index(r.end)
        assert b - a + 1 == r.size
        out += order[a : b + 1]
    return out


@pytest.mark.parametrize(
    "wanted",
    [[], ["c03"], ["c00", "c01"], ORDER, ["c09", "c00", "c05", "c04"], ["c01", "c03", "c05"]],
)
@pytest.mark.parametrize("parts", [1, 2, 3, 20])
def test_ranges_cover_exactly_the_wanted_classes(wanted, parts):
    ranges = class_ranges(wanted, ORDER, parts=parts)
    assert covered(ranges, ORDER) == [k for k in ORDER if k in wanted]
    stretches = sum(
        1 for i, k in enumerate(ORDER) if k in wanted and (i == 0 or ORDER[i - 1] not in wanted)
    )
    # As few runs as the gaps allow, and at least `parts` where there are that many classes.
    assert len(ranges) >= min(parts, len(wanted))
    assert len(ranges) <= max(stretches, 0) + min(parts, len(wanted))


def test_one_stretch_is_one_run_and_big_ones_are_split():
    assert class_ranges(ORDER, ORDER) == [ClassRange("c00", "c09", 10)]
    order = [f"k{i:05d}" for i in range(2 * MAX_CLASSES_PER_RUN + 1)]
    ranges = class_ranges(order, order)
    assert [r.size for r in ranges] == [MAX_CLASSES_PER_RUN, MAX_CLASSES_PER_RUN, 1]
    assert covered(ranges, order) == order


def test_tags_and_names():
    r = ClassRange("a b", "z", 3)
    assert r.tags() == {RANGE_START_TAG: "a b", RANGE_END_TAG: "z"}
    assert str(r) == "a b .. z (3 classes)" and str(ClassRange("x", "x", 1)) == "x"


def test_an_unregistered_class_is_refused():
    with pytest.raises(KeyError, match="not registered"):
        class_ranges(["nope"], ORDER)


def test_the_console_log_drops_only_the_note_about_per_class_check_outputs():
    """`dedup run --verbose` prints Dagster's console log; a step with a per-class check
    (class_latents' latents_valid, whose verdicts are per-partition evaluations) always gets
    Dagster's note that it "did not yield" the check's output. That note alone is dropped:
    one naming another output, and every other line, is printed."""
    import logging

    import dagster as dg

    from dedup_assets.assets import latents  # noqa: F401 - its per-class check registers
    from dedup_assets.assets.class_batch import console_logger

    made = console_logger.logger_fn(
        dg.build_init_logger_context(logger_config={"log_level": "INFO", "name": "dagster"})
    )
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    made.handlers = [Keep()]
    note = "op 'class_latents' did not yield or return expected outputs {%s}."
    made.info(note % "'class_latents_latents_valid'")
    made.info(note % "'result'")
    made.info(note % "'class_latents_latents_valid', 'result'")
    made.info("class_latents: encoded 40 new images")
    assert seen == [
        note % "'result'",
        note % "'class_latents_latents_valid', 'result'",
        "class_latents: encoded 40 new images",
    ]
