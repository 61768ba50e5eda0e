"""Tests of the work-zone erasure (training/erase.py) and its erased negatives / decoy smudges in training."""

import numpy as np
import pytest

from workzone_train.erase import decoy_erase, erase_work_zone, fill_masked, work_zone_mask

from tests.training._data import add_cone_photos, write_manifest


def _street(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """Grey road below a blue-grey sky, with mild noise: no work-zone colour anywhere."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 2] = (150, 165, 185)
    img[h // 2 :] = (95, 95, 100)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _orange_share(img: np.ndarray) -> float:
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return float(((r > 170) & (g > 60) & (g < 150) & (b < 90)).mean())


def _with_drums(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[70:100, 30:42] = (235, 100, 25)  # a bright drum
    out[75:95, 110:118] = (120, 40, 15)  # a cone in shade: dark but saturated
    out[60:64, 80:84] = (200, 255, 60)  # a fluorescent vest
    return out


def test_mask_finds_work_zone_colours_and_not_the_street() -> None:
    street = _street()
    assert not work_zone_mask(street).any()
    scene = _with_drums(street)
    mask = work_zone_mask(scene)
    assert mask[70:100, 30:42].all() and mask[75:95, 110:118].all() and mask[60:64, 80:84].all()
    assert mask.mean() < 0.15  # grown a little, not over the whole frame


def test_erase_removes_the_objects_and_keeps_the_rest() -> None:
    street = _street()
    scene = _with_drums(street)
    out = erase_work_zone(scene, np.random.default_rng(0))
    assert out is not None and out.shape == scene.shape and out.dtype == np.uint8
    assert _orange_share(scene) > 0.015 and _orange_share(out) == 0.0
    far = np.ones(scene.shape[:2], bool)
    far[55:110, 15:130] = False  # away from every object and its grown mask
    assert np.abs(out[far].astype(int) - scene[far].astype(int)).max() <= 1
    # The fill takes the road's colour, not the drum's.
    assert abs(float(out[80:90, 33:39].mean()) - float(street[80:90, 33:39].mean())) < 12


def test_erase_declines_frames_with_nothing_or_everything_to_erase() -> None:
    assert erase_work_zone(_street(), np.random.default_rng(0)) is None
    all_orange = np.full((60, 80, 3), (235, 100, 25), np.uint8)
    assert erase_work_zone(all_orange, np.random.default_rng(0)) is None


def test_fill_without_mask_is_a_copy() -> None:
    img = _street()
    out = fill_masked(img, np.zeros(img.shape[:2], bool), np.random.default_rng(0))
    assert np.array_equal(out, img) and out is not img


def test_decoy_smudges_change_the_scene_but_not_the_work_zone() -> None:
    scene = _with_drums(_street())
    out = decoy_erase(scene, np.random.default_rng(3))
    assert (out != scene).any()
    assert np.array_equal(out[70:100, 30:42], scene[70:100, 30:42])
    assert _orange_share(out) >= 0.95 * _orange_share(scene)


def test_epoch_set_draws_erased_negatives_and_decoys(tmp_path) -> None:
    """A recipe with erase_neg adds kind-4 rows: positives with the work zone erased, labelled 0."""
    from workzone_train.data import load_samples
    from workzone_train.loop import _epoch_plan, _EpochSet, prepare_data, recipe_from_name

    rows: list[str] = []
    boxes: list[str] = []
    add_cone_photos(tmp_path, rows, boxes, 8, shape=(80, 100))
    write_manifest(tmp_path, rows, boxes)
    samples = load_samples(tmp_path / "manifest.csv")
    assert not prepare_data(samples, tmp_path / "boxes.csv").erased  # only when asked
    data = prepare_data(samples, tmp_path / "boxes.csv", erase=True)
    assert data.erased and all(data.samples[i].label == 1 for i in data.erased)
    for i, img in data.erased.items():
        assert _orange_share(img) < 0.2 * _orange_share(data.pixels[i])
    recipe = recipe_from_name("partial-hpe", epoch_size=200)
    plan = _epoch_plan(data, recipe, 0, 0)
    assert int((plan[:, 0] == 4).sum()) == 20  # erase_neg 0.1 of 200
    ds = _EpochSet(data, recipe, plan, 0, 0)
    for i in np.flatnonzero(plan[:, 0] == 4)[:5]:
        x, y = ds[int(i)]
        assert y == 0 and x.shape == (3, 224, 224) and np.isfinite(x).all()
    no_erase = _epoch_plan(data, recipe_from_name("partial-hp", epoch_size=200), 0, 0)
    assert not (no_erase[:, 0] == 4).any()


def test_loso_run_makes_erased_negatives_for_an_erasing_recipe(tmp_path, monkeypatch) -> None:
    """run_loso passes the recipe's erase_neg through to prepare_data and trains on kind-4 rows (tiny CPU run)."""
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    import workzone_train.loso as loso_mod
    import workzone_train.model as model_mod
    from workzone_train.loop import recipe_from_name

    rows: list[str] = []
    boxes: list[str] = []
    add_cone_photos(tmp_path, rows, boxes, 8, shape=(80, 100), source=lambda label: "TraCon" if label else "CamVid")
    add_cone_photos(tmp_path, rows, boxes, 6, shape=(80, 100), prefix="o", source=lambda label: "Other", seed=1)
    manifest = write_manifest(tmp_path, rows, boxes)

    seen: list[int] = []
    real_prepare = loso_mod.prepare_data

    def recording_prepare(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        data = real_prepare(*args, **kwargs)
        seen.append(len(data.erased))
        return data

    orig_build = model_mod.build_model
    monkeypatch.setattr(loso_mod, "prepare_data", recording_prepare)
    # Random-init weights keep the test offline; the loop and the evaluation are the real ones.
    monkeypatch.setattr(model_mod, "build_model", lambda arch, **kw: orig_build(arch, pretrained=False, dropout=0.3))
    for name, expect_erased in (("partial-hpe", True), ("partial-hp", False)):
        seen.clear()
        recipe = recipe_from_name(name, epochs=1, epoch_size=16, batch_size=8, size=64)
        result = loso_mod.run_loso(manifest, recipe, device="cpu", workers=0, holdouts=("CamVid",), with_full=False,
                                   log=lambda _m: None)
        assert (seen[0] > 0) == expect_erased
        held = result["loso"]["CamVid"]["held_out"]
        assert held["n"] == 4 and 0.0 <= held["specificity"] <= 1.0
