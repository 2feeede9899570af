"""`among`: the membership of strings the report, the reference pool and the leakage index
ask for, the same answer as numpy's isin."""

import numpy as np
import polars as pl
import pytest

from dedup_assets.core.data.membership import among


@pytest.mark.parametrize("n, m", [(0, 0), (0, 3), (1, 0), (1, 1), (2, 2), (50, 7), (2_700, 2_600)])
def test_among_answers_as_isin(n, m):
    rng = np.random.default_rng(n + m)
    pool = np.array([f"id{i:05d}" for i in rng.integers(0, max(2 * (n + m), 1), n + m)])
    values, members = pool[:n], pool[n:]
    expected = np.isin(values, members)
    for given in (members, list(members), pl.Series(members, dtype=pl.String)):
        got = among(values, given)
        assert got.dtype == bool and got.shape == (n,)
        assert np.array_equal(got, expected)
    assert np.array_equal(among(pl.Series(values, dtype=pl.String), members), expected)


def test_among_odd_strings_and_repeats():
    values = np.array(["", "a b", "ä/ö", "x'\"#;", "a b", "A B"])
    members = ["a b", "", "ä/ö", "ä/ö"]
    assert among(values, members).tolist() == [True, True, True, False, True, False]
    assert among(values, values).all()  # all identical to themselves


@pytest.mark.parametrize("bad", ["ab", np.array("ab"), np.array([["a"], ["b"]])])
def test_among_refuses_what_is_not_a_sequence_of_values(bad):
    """A lone string would be taken letter by letter, a table row by row: refused."""
    with pytest.raises(ValueError, match="1-D"):
        among(bad, ["a"])
