"""The committed out-of-fold files (lab/oof/2026-12-07) are what the shipped verified decision was fitted on.

Why: the decision block in the verifier's sidecars is only as trustworthy as the record of what it was fitted on.
These files travel with the repository so that the table and the decision rebuild without a GPU; this holds the
sidecars to them, so a refit that is not committed with its out-of-fold answers (or a feature change that is not
refitted) fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
OOF = REPO / "lab" / "oof" / "2026-12-07"
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def shipped_fit() -> tuple[dict, dict]:
    if not (SHARED / "roadwork-v1" / "manifest.csv").is_file():
        pytest.skip("../shared/data is not beside the repository")
    from workzone.verified_evidence import VERIFIED_FEATURE_VERSION, verified_feature_names
    from workzone_train.corpus import load_corpus
    from workzone_train.oof_scores import fit_decision, read_fold_detections
    from workzone_train.scene_synth import OBJECT_CLASSES
    from workzone_train.verifier import VERIFY_FEATURE_SETS, build_crop_table, image_verified_features, items_digest
    from workzone_train.verifier_tune import read_verifier_run

    corpus = load_corpus(SHARED)
    items = build_crop_table(SHARED, read_fold_detections(OOF / "oof_detections.json.gz"), OBJECT_CLASSES)
    # Raises if the committed answers belong to other candidates than these detections propose.
    probs = read_verifier_run(OOF / "verifier-folds-seed0", items_digest(items))
    names, cols = verified_feature_names(), VERIFY_FEATURE_SETS["classes"]
    x = image_verified_features(items, probs, [s.key for s in corpus])[:, [names.index(c) for c in cols]]
    fitted = fit_decision(x, np.array([s.label for s in corpus]), features=cols, version=VERIFIED_FEATURE_VERSION)
    models = REPO / "src" / "workzone" / "models"
    return fitted, {name: json.loads((models / name).read_text(encoding="utf-8"))["decision"]
                    for name in ("roadwork_verifier.json", "roadwork_verifier_int8.json")}


def test_both_verifier_sidecars_hold_the_decision_the_committed_answers_fit(shipped_fit) -> None:
    fitted, shipped = shipped_fit
    for name, block in shipped.items():
        assert block["version"] == fitted["version"] and block["features"] == fitted["features"], name
        assert block["bias"] == pytest.approx(fitted["bias"], abs=1e-6), name
        np.testing.assert_allclose(block["weights"], fitted["weights"], atol=1e-6, err_msg=name)
        assert "lab/oof/2026-12-07" in block["fitted_on"], name


def test_the_committed_folds_cover_every_fold_and_the_second_seed_the_same_candidates() -> None:
    seeds = [json.loads((OOF / f"verifier-folds-seed{k}" / "pack.json").read_text(encoding="utf-8")) for k in (0, 1)]
    assert seeds[0]["digest"] == seeds[1]["digest"]
    for k in (0, 1):
        folds = sorted(p.name.removesuffix("-probs.npz") for p in (OOF / f"verifier-folds-seed{k}").glob("*-probs.npz"))
        assert folds == sorted(seeds[k]["folds"]), k
