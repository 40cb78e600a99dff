"""tasks/select.py: the accuracy-aware champion choice."""

from __future__ import annotations

import pytest

from tasks.core.errors import DistilleryError
from tasks.core.params import SelectParams
from tasks.select import select_champion, versus


def params(max_quality_drop=0.01, precisions=("int8",), speed_key="latency_ms_b256_t1") -> SelectParams:
    return SelectParams(
        max_quality_drop=max_quality_drop,
        precisions=precisions,
        speed_key=speed_key,
        registered_model="m",
        min_gain_over_trivial=0.05,
        min_macro_f1=None,
        min_r2=None,
        max_ece=1.0,
        max_drop_vs_champion=1.0,
        max_size_bytes=None,
        max_latency_ms=None,
        promote=True,
    )


def candidate(macro_f1: float, b1: float, b256: float) -> dict:
    return {
        "accuracy": macro_f1,
        "macro_f1": macro_f1,
        "weighted_f1": macro_f1,
        "ece_before_scaling": 0.03,
        "ece": 0.02,
        "mce": 0.05,
        "size_bytes": 1000,
        "latency_ms_b1_t1": b1,
        "latency_ms_b256_t1": b256,
        "confusion_matrix": [[1]],  # extra keys are not copied into the table
    }


@pytest.fixture
def candidates() -> dict[str, dict]:
    return {
        "teacher.fp32": candidate(0.900, b1=1.0, b256=40.0),
        "teacher.int8": candidate(0.896, b1=0.8, b256=20.0),
        "student.fp32": candidate(0.895, b1=0.3, b256=5.0),  # fastest overall, but fp32
        "student.int8": candidate(0.894, b1=0.5, b256=8.0),
        "pruned.int8": candidate(0.850, b1=0.1, b256=2.0),  # fastest int8, but too inaccurate
    }


def test_the_fastest_qualifying_int8_candidate_wins(candidates):
    champion, table = select_champion(candidates, params())
    assert champion == "student.int8"
    assert table["pruned.int8"]["qualifies"] is False
    assert table["pruned.int8"]["eligible"] is True
    assert table["pruned.int8"]["quality_drop"] == pytest.approx(0.05)
    assert table["student.fp32"]["eligible"] is False and table["student.fp32"]["qualifies"] is False
    assert table["teacher.int8"]["qualifies"] is True
    assert set(table) == set(candidates)
    assert "confusion_matrix" not in table["student.int8"]


def test_fp32_competes_only_when_allowed(candidates):
    champion, table = select_champion(candidates, params(precisions=("fp32", "int8")))
    assert champion == "student.fp32"
    assert table["student.fp32"]["qualifies"] is True


def test_the_speed_key_decides_what_fastest_means(candidates):
    candidates["teacher.int8"] = candidate(0.899, b1=0.2, b256=30.0)  # best at batch 1, worst at 256
    assert select_champion(candidates, params(speed_key="latency_ms_b1_t1"))[0] == "teacher.int8"
    assert select_champion(candidates, params(speed_key="latency_ms_b256_t1"))[0] == "student.int8"


def test_a_looser_drop_lets_the_fast_inaccurate_candidate_win(candidates):
    assert select_champion(candidates, params(max_quality_drop=0.06))[0] == "pruned.int8"


def test_a_candidate_exactly_at_the_floor_qualifies():
    candidates = {"teacher.fp32": candidate(0.75, 1.0, 10.0), "student.int8": candidate(0.375, 0.5, 5.0)}
    champion, table = select_champion(candidates, params(max_quality_drop=0.5))  # half of 0.75, exactly
    assert champion == "student.int8" and table["student.int8"]["quality_drop"] == 0.375


@pytest.mark.parametrize(
    ("best", "kept", "refused"),
    [(0.99, 0.9851, 0.9849), (0.30, 0.2985, 0.2975), (-0.2, -0.201, -0.2011)],
    ids=["easy", "hard table", "r2 below zero"],
)
def test_the_budget_is_a_share_of_the_best_quality_not_points(best, kept, refused):
    """0.5% of the best: half a point at 0.99, 0.15 points on a hard table whose best is
    0.30 (a fixed 1 point there would let a 3% worse champion through)."""
    candidates = {
        "teacher.fp32": candidate(best, 1.0, 10.0),
        "student.int8": candidate(kept, 0.5, 5.0),
        "pruned.int8": candidate(refused, 0.1, 1.0),
    }
    champion, table = select_champion(candidates, params(max_quality_drop=0.005))
    assert champion == "student.int8"
    assert table["pruned.int8"]["qualifies"] is False and table["student.int8"]["qualifies"] is True


def test_no_qualifying_candidate_fails_with_the_table(candidates):
    with pytest.raises(DistilleryError) as err:
        select_champion(candidates, params(max_quality_drop=0.001))
    message = str(err.value)
    assert "Nothing was promoted" in message
    assert (
        "select.max_quality_drop=0.001 (a share, so at least 0.8991) of the best candidate, teacher.fp32 (0.9000)"
        in message
    )
    assert (
        "| candidate | quality | quality_drop | eligible | within_budget | size_bytes | latency_ms_b256_t1 |" in message
    )
    for name in candidates:
        assert f"| {name} |" in message


def test_the_reference_alone_is_not_a_champion_when_only_int8_may_win():
    with pytest.raises(DistilleryError, match="Nothing was promoted"):
        select_champion({"teacher.fp32": candidate(0.9, 1.0, 10.0)}, params())


def test_a_missing_reference_is_refused(candidates):
    del candidates["teacher.fp32"]
    with pytest.raises(DistilleryError, match="teacher.fp32"):
        select_champion(candidates, params())


def test_size_and_latency_budgets_exclude_candidates(candidates):
    import dataclasses

    candidates["student.int8"]["size_bytes"] = 5000  # the fastest qualifying one, made too big
    champion, table = select_champion(candidates, dataclasses.replace(params(), max_size_bytes=2000))
    assert champion == "teacher.int8" and not table["student.int8"]["within_budget"]
    champion, table = select_champion(candidates, dataclasses.replace(params(), max_latency_ms=10.0))
    assert champion == "student.int8" and not table["teacher.int8"]["within_budget"]
    with pytest.raises(DistilleryError, match="max_size_bytes=10"):
        select_champion(candidates, dataclasses.replace(params(), max_size_bytes=10))


def test_the_pareto_front_keeps_only_the_candidates_nothing_beats_at_once() -> None:
    from tasks.select import pareto_front

    key = "latency_ms_b256_t1"
    table = {
        "teacher.fp32": {key: 4.0, "quality": 0.95, "size_bytes": 900},  # best quality
        "student.int8": {key: 1.0, "quality": 0.90, "size_bytes": 100},  # fastest and smallest
        "student.fp32": {key: 2.0, "quality": 0.90, "size_bytes": 300},  # beaten by student.int8 on all three
        "teacher.int8": {key: 3.0, "quality": 0.94, "size_bytes": 250},  # a trade-off: stays
    }
    assert pareto_front(table, key) == ["teacher.fp32", "student.int8", "teacher.int8"]


def test_the_headline_compares_the_champion_with_the_reference_at_every_latency_key():
    rows = [
        {
            "name": "teacher.fp32",
            "quality": 0.95,
            "size_bytes": 1000,
            "latency_ms_b256_t1": 30.0,
            "latency_ms_b256_t1_p10": 28.0,
            "latency_ms_b1_t2": 0.2,
        },
        {
            "name": "student.int8",
            "quality": 0.9425,
            "size_bytes": 50,
            "latency_ms_b256_t1": 5.0,
            "latency_ms_b256_t1_p10": 4.0,
            "latency_ms_b1_t2": 0.08,
        },
    ]
    assert versus(rows, "student.int8") == {
        "speedup": {"latency_ms_b1_t2": 2.5, "latency_ms_b256_t1": 6.0},
        "size_ratio": 0.05,
        "quality_drop_points": 0.75,
    }


def test_the_budget_is_measured_against_the_best_candidate_not_the_teacher():
    """The loans case: the teacher is the weakest model, so a budget against it let a
    pruned student at 0.277 win over a student at 0.312. Against the best (the boosted
    model here), only candidates within 1% of 0.32 qualify."""
    candidates = {
        "teacher.fp32": candidate(0.250, b1=1.0, b256=40.0),
        "boosted.fp32": candidate(0.320, b1=0.9, b256=30.0),
        "student.int8": candidate(0.318, b1=0.5, b256=8.0),
        "student_pruned.int8": candidate(0.312, b1=0.1, b256=2.0),  # 2.5% below: a point would have let it win
    }
    champion, table = select_champion(candidates, params(precisions=("fp32", "int8")))
    assert champion == "student.int8"
    assert table["student_pruned.int8"]["qualifies"] is False
    assert table["student.int8"]["quality_drop"] == pytest.approx(0.002)
    assert table["student.int8"]["vs_boosted"] == pytest.approx(-0.002)
    assert table["teacher.fp32"]["qualifies"] is False  # 0.07 below the best


def test_the_boosted_model_can_be_the_champion():
    candidates = {
        "teacher.fp32": candidate(0.80, b1=1.0, b256=40.0),
        "boosted.fp32": candidate(0.90, b1=0.9, b256=3.0),
        "student.int8": candidate(0.85, b1=0.5, b256=8.0),
    }
    champion, table = select_champion(candidates, params(precisions=("fp32", "int8")))
    assert champion == "boosted.fp32" and table["boosted.fp32"]["quality_drop"] == 0
