"""Tests of the dashcam-hood decorrelation (training/hoods.py) and the drawn road-work props (training/props.py)."""

import numpy as np
import pytest

from workzone_train.hoods import clip_key, context_crop, crop_bottom, dashcam_strips, paste_strip
from workzone_train.props import PROPS, draw_prop
from workzone_train.synth import Cutout, paste_work_zone

from tests.training._data import add_cone_photos, write_manifest


def _frames(n: int, h: int = 60, w: int = 80, hood: int = 200) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        f = rng.integers(0, 120, size=(h, w, 3)).astype(np.uint8)
        f[-8:] = hood  # a bright hood in the bottom rows
        out.append(f)
    return out


def test_clip_key_groups_frames_of_one_clip_only() -> None:
    a = clip_key("WMaia9-workzone", "images/w/chicago_f0312.jpg")
    assert a == clip_key("WMaia9-workzone", "images/w/clipend_chicago_f0402.jpg")
    assert a != clip_key("WMaia9-workzone", "images/w/denver_f0312.jpg")
    assert clip_key("CamVid", "images/c/0001tp_006690.jpg") == clip_key("CamVid", "images/c/0001tp_009870.jpg")
    assert clip_key("TraCon", "images/t/imh_215_00000000.jpg") != clip_key("TraCon", "images/t/imh_216_00000000.jpg")


def test_dashcam_strips_only_from_clips_with_enough_same_sized_frames() -> None:
    clip = _frames(8)
    stock = [np.zeros((50 + i, 70, 3), np.uint8) for i in range(8)]  # one "clip" of mixed sizes
    short = _frames(3)
    keys = ["s/clip"] * 8 + ["s/stock"] * 8 + ["s/short"] * 3
    strips, dashcam = dashcam_strips(keys, clip + stock + short, per_clip=4, frac=0.14)
    assert dashcam == set(range(8))
    assert len(strips) == 4
    for s in strips:
        assert s.shape == (9, 80, 3)  # the bottom 14 % of a 60-row frame, rounded up
        assert (s[-8:] == 200).all()  # it carries the hood


def test_paste_strip_changes_only_the_bottom_and_keeps_shape() -> None:
    img = np.full((100, 120, 3), 50, np.uint8)
    strip = np.full((10, 80, 3), 250, np.uint8)
    out = paste_strip(img, strip, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8
    changed = np.flatnonzero((out != img).any(axis=(1, 2)))
    assert len(changed) > 0
    assert changed.min() >= 100 - 34  # at most a third of the frame, from the bottom edge
    assert out[-1].mean() > img[-1].mean() + 50  # the bottom row is the (brightness-matched) strip


def test_crop_bottom_and_context_crop_remove_the_lower_frame() -> None:
    img = np.arange(100)[:, None, None].repeat(40, 1).repeat(3, 2).astype(np.uint8)
    rng = np.random.default_rng(2)
    for _ in range(20):
        c = crop_bottom(img, rng)
        assert 80 <= c.shape[0] <= 92 and (c == img[: c.shape[0]]).all()
        t = context_crop(img, rng)
        assert 30 <= t.shape[0] <= 45 and (t == img[: t.shape[0]]).all()


@pytest.mark.parametrize("name", sorted(PROPS))
def test_each_prop_is_a_soft_rgba_object_of_the_asked_height(name: str) -> None:
    rgba = draw_prop(name, np.random.default_rng(3), px=96)
    assert rgba.dtype == np.uint8 and rgba.ndim == 3 and rgba.shape[2] == 4
    assert rgba.shape[0] == 96
    alpha = rgba[..., 3]
    # An object with a silhouette (rounded or cut corners), not nothing; a Leitbake is a plain board on its foot.
    assert 0.05 < (alpha > 128).mean() <= (1.0 if name == "leitbake" else 0.999)
    opaque = rgba[..., :3][alpha > 128].astype(float)
    # Road-work colours: some orange/red or amber, or (signs) a black border on orange. Site fencing is grey
    # mesh (its red-white plank is optional): what makes it a work zone is its shape, not its colour.
    warm = (opaque[:, 0] > 150) & (opaque[:, 2] < 90)
    if name == "fence":
        grey = np.abs(opaque - opaque.mean(1, keepdims=True)).max(1) < 25
        assert grey.mean() > 0.3
    else:
        assert warm.mean() > 0.02


def test_box_top_fraction_covers_only_the_sign_panels() -> None:
    from workzone_train.props import BOX_TOP_FRACTION

    assert set(BOX_TOP_FRACTION) <= set(PROPS)
    for name, frac in BOX_TOP_FRACTION.items():
        rgba = draw_prop(name, np.random.default_rng(0), px=120)
        rows = np.flatnonzero((rgba[..., 3] > 128).any(1))
        below = rgba[int(120 * frac) + 2:, :, 3] > 128
        # Under the panel only the thin post (or the arrow board's trailer frame) is left.
        assert 0 < frac < 1 and rows[0] < 120 * frac and below.mean() < 0.35


def test_paste_work_zone_draws_props_and_reports_their_centres() -> None:
    scene = np.full((240, 320, 3), 90, np.uint8)
    cone = np.zeros((40, 20, 4), np.uint8)
    cone[..., 0], cone[..., 3] = 240, 255
    cut = Cutout(cone, "x.jpg")
    with_props = 0
    for seed in range(30):
        out, centres = paste_work_zone(scene, [cut], np.random.default_rng(seed), p_cones=0.0)
        diff = (out != scene).any(axis=2)
        if centres:
            with_props += 1
            for x, y in centres:
                assert 0 <= x < 320 and 0 <= y < 240
            assert diff.any()
        assert out.shape == scene.shape
    assert with_props >= 25
    # p_cones=1 is plain cone pasting, drawing nothing else from the generator.
    from workzone_train.synth import paste_cones

    a, ca = paste_work_zone(scene, [cut], np.random.default_rng(7), p_cones=1.0)
    b, cb = paste_cones(scene, [cut], np.random.default_rng(7))
    assert (a == b).all() and ca == cb


def test_epoch_set_with_hoods_props_and_context_negatives(tmp_path) -> None:
    """A recipe with every new option draws all four sample kinds, with the right labels."""
    from PIL import Image

    from workzone_train.data import load_samples
    from workzone_train.loop import _epoch_plan, _EpochSet, prepare_data, recipe_from_name

    rows: list[str] = []
    boxes: list[str] = []
    (tmp_path / "images").mkdir()
    for i, f in enumerate(_frames(10, h=96, w=128)):  # a dashcam work-zone clip
        Image.fromarray(f).save(tmp_path / "images" / f"city_f{i:04d}.jpg")
        rows.append(f"images/city_f{i:04d}.jpg,1,train,Dash,")
    add_cone_photos(tmp_path, rows, boxes, 6, shape=(80, 100), prefix="s")  # boxed stock photos and negatives
    write_manifest(tmp_path, rows, boxes)
    data = prepare_data(load_samples(tmp_path / "manifest.csv"), tmp_path / "boxes.csv")
    assert len(data.dashcam) == 10 and data.strips
    recipe = recipe_from_name("partial-hpc", epoch_size=200, size=64)
    plan = _epoch_plan(data, recipe, 0, 0)
    kinds = set(plan[:, 0].tolist())
    assert kinds == {0, 1, 2, 3}
    ds = _EpochSet(data, recipe, plan, 0, 0)
    for i in range(len(plan)):
        kind, idx = plan[i]
        x, y = ds[i]
        assert x.shape == (3, 224, 224) and np.isfinite(x).all()
        if kind == 3:
            assert y == 0 and data.samples[idx].label == 1 and idx in data.dashcam
        elif kind == 2:
            assert y == 0
        elif kind == 0:
            assert y == data.samples[idx].label
