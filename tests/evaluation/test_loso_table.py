"""Pooled leave-one-source-out numbers: intervals, cross-fitting, per-source rates."""

from __future__ import annotations

import numpy as np
import pytest

from workzone.evaluation.loso_table import OofRow, cross_fit, format_markdown, loso_summary, wilson_interval
from workzone.fusion.calibration import fit_logistic


def _rows() -> list[OofRow]:
    rows = []
    for i in range(40):
        src, label = ("pos-only", 1) if i < 10 else ("neg-only", 0) if i < 25 else ("mixed", i % 2)
        rows.append(OofRow(f"k{i}", src, "night" if i % 5 == 0 else "day", label, src, {"a": (1.0 if label else -1.0) + 0.1 * (i % 3)}))
    return rows


def test_wilson_interval_contains_the_rate_and_shrinks_with_n() -> None:
    lo, hi = wilson_interval(8, 10)
    lo2, hi2 = wilson_interval(80, 100)
    assert lo < 0.8 < hi and (hi2 - lo2) < (hi - lo)
    assert np.isnan(wilson_interval(0, 0)[0])


def test_summary_reports_recall_or_specificity_for_one_class_sources() -> None:
    rows = _rows()
    z = np.array([r.scores["a"] for r in rows])
    s = loso_summary(rows, z)
    assert s["pooled_mcc"] == pytest.approx(1.0)
    ps = s["per_source"]
    assert "mcc" not in ps["pos-only"] and ps["pos-only"]["recall"]["value"] == 1.0
    assert "recall" not in ps["neg-only"] and ps["neg-only"]["specificity"]["n"] == 15
    assert "mcc" in ps["mixed"]
    assert set(s["per_condition"]) == {"day", "night"}
    md = format_markdown({"cand": s}, ["pos-only", "neg-only"], ["night"])
    assert "pooled MCC" in md and "rec 1.00" in md and "spec 1.00" in md


def test_cross_fit_never_fits_on_the_scored_fold() -> None:
    rows = _rows()
    seen: list[set[str]] = []

    def fit(train):
        seen.append({r.fold for r in train})
        return fit_logistic(np.array([[r.scores["a"]] for r in train]), np.array([r.label for r in train]))

    def predict(m, test):
        assert not {r.fold for r in test} & seen[-1]
        return m.bias + np.array([r.scores["a"] for r in test]) * m.weights[0]

    z = cross_fit(rows, fit, predict)
    assert len(seen) == 3 and z.shape == (40,)


def _csv_without_fold_and_condition(path):
    lines = ["key,label,source,objects"]
    for i in range(40):
        src = "abcd"[i % 4]
        lines.append(f"k{i},{i % 2},{src},{(1 if i % 2 else -1) * (1 + i % 3) + (0.5 if i % 5 == 0 else 0)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_loso_table_names_the_file_the_missing_column_and_the_flag(tmp_path) -> None:
    from typer.testing import CliRunner

    from workzone.cli.main import app
    from workzone.errors import DataError

    csv = _csv_without_fold_and_condition(tmp_path / "scores.csv")
    res = CliRunner().invoke(app, ["train", "loso-table", str(csv), "--candidate", "o=objects", "--out", str(tmp_path / "t.md")])
    assert isinstance(res.exception, DataError)  # one line from main(), not a KeyError traceback
    msg = str(res.exception)
    assert msg.startswith(f"{csv}: no column 'fold' (columns: key, label, source, objects)") and "--fold-column" in msg
    res = CliRunner().invoke(app, ["train", "loso-table", str(csv), "--candidate", "o=objects", "--out", str(tmp_path / "t.md"),
                                   "--fold-column", "source"])
    assert isinstance(res.exception, DataError) and "no column 'condition'" in str(res.exception)
    assert "--condition-column" in str(res.exception)
    res = CliRunner().invoke(app, ["train", "loso-table", str(csv), "--candidate", "o=objects", "--out", str(tmp_path / "t.md"),
                                   "--fold-column", "source", "--condition-column", "source"])
    assert res.exit_code == 0, res.output
    assert "| o |" in (tmp_path / "t.md").read_text() or "o" in (tmp_path / "t.md").read_text()
