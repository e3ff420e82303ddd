"""`golfctl compare`: Welch's one-sided test of the 0.005-nat margin, against scipy and by hand."""

from __future__ import annotations

import json
import math

import pytest
from cli_helpers import assert_clean_error, golfctl
from scipy import stats

from golfctl.compare import MARGIN_NATS, welch


def test_welch_matches_scipy_on_the_raw_numbers():
    ours = [2.7810, 2.7842, 2.7795]
    reference = [2.7924, 2.7976, 2.7941]
    mean_ref, std_ref = sum(reference) / 3, stats.tstd(reference)
    test = welch(ours, mean_ref, std_ref, 3, MARGIN_NATS)
    # H0: ref − ours ≤ margin ⇔ (ref − margin) − ours ≤ 0: scipy's "greater" on shifted samples
    expected = stats.ttest_ind([r - MARGIN_NATS for r in reference], ours, equal_var=False, alternative="greater")
    assert test.t == pytest.approx(expected.statistic, rel=1e-9)
    assert test.p == pytest.approx(expected.pvalue, rel=1e-9)


def test_welch_by_hand():
    """n = 2 a side, variances 0.5 and 2: se² = 0.5/2 + 2/2 = 1.25, df = 1.25² / (0.25²/1 + 1²/1) = 1.470588…"""
    test = welch([1.0, 2.0], 4.5, math.sqrt(2.0), 2, 0.5)  # ours mean 1.5: improvement 3.0, t = 2.5 / √1.25
    assert test.improvement == pytest.approx(3.0)
    assert test.t == pytest.approx(2.5 / math.sqrt(1.25))
    assert test.df == pytest.approx(1.5625 / 1.0625)
    assert test.p == pytest.approx(stats.t.sf(2.5 / math.sqrt(1.25), 1.5625 / 1.0625))


def eval_json(path, loss: float, bpb: float):
    path.write_text(json.dumps({"results": {"ttt": {"val_loss": loss, "val_bpb": bpb, "tokens": 1000, "bytes": 2400}}}))
    return path


def test_cli_verdicts(tmp_path):
    ours = [eval_json(tmp_path / f"o{i}.json", loss, loss / 2.4 / math.log(2)) for i, loss in
            enumerate((2.7810, 2.7815, 2.7808))]
    reference = [eval_json(tmp_path / f"r{i}.json", loss, loss / 2.4 / math.log(2)) for i, loss in
                 enumerate((2.7925, 2.7930, 2.7921))]
    beats = golfctl("compare", *ours, *sum((["--reference", r] for r in reference), []))
    assert beats.returncode == 0 and "verdict: beats the reference" in beats.stdout, beats.stdout + beats.stderr
    close = golfctl("compare", *ours, "--reference-bpb", 2.7850 / 2.4 / math.log(2), "--reference-std", 0.0004,
                    "--reference-n", 3)
    assert "verdict: does not beat" in close.stdout, close.stdout + close.stderr
    assert_clean_error(golfctl("compare", ours[0], "--reference", reference[0]), "at least 2")
    assert_clean_error(golfctl("compare", *ours), "give the reference")
    assert_clean_error(golfctl("compare", *ours, "--reference-bpb", 1.1, "--reference-std", "nan", "--reference-n", 3),
                       "must be finite")
