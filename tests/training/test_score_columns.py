"""An experiment's columns written beside a loso-scores CSV, in its row order, for `workzone train loso-table`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workzone.evaluation.loso_table import read_oof_rows
from workzone_train.oof_scores import append_score_columns


def test_columns_are_appended_in_row_order_and_read_back_as_stages(tmp_path: Path) -> None:
    src = tmp_path / "s.csv"
    src.write_text("key,label,source,condition,fold,verify\na.jpg,1,S,day,f1,2.0\nb.jpg,0,T,night,f2,-1.0\n")
    out = append_score_columns(src, {"verify_x": np.array([0.5, -0.25])}, tmp_path / "o.csv")
    rows = read_oof_rows(out)
    assert [r.key for r in rows] == ["a.jpg", "b.jpg"]
    assert [r.scores["verify_x"] for r in rows] == [0.5, -0.25] and rows[1].scores["verify"] == -1.0
    with pytest.raises(ValueError, match="1 values for 2 rows"):
        append_score_columns(src, {"short": np.array([1.0])}, tmp_path / "bad.csv")
