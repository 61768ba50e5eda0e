"""sign_ocr: lexicon matching with OCR-style errors, sign proposals, and reading rendered signs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.stages._support import run_stage

import workzone.stages.sign_ocr as ocr  # registers sign_ocr
from workzone.stages._lexicon import load_lexicon, normalise_text, substring_distance
from workzone.stages.registry import create_stage
from workzone.types import Image

FONT_CANDIDATES = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
]


def _font_path() -> str | None:
    return next((p for p in FONT_CANDIDATES if Path(p).is_file()), None)


@pytest.mark.parametrize("text, phrase, language, strong", [
    ("ROAD WORK AHEAD", "ROAD WORK AHEAD", "en", True),
    ("R0AD W0RK AHEAO", "ROAD WORK AHEAD", "en", True),  # 0 for O, O for D
    ("roadworks", "ROADWORKS", "en", True),
    ("ROAD CL0SED", "ROAD CLOSED", "en", True),
    ("RIGHT LANE CL0SED", "RIGHT LANE CLOSED", "en", True),
    ("BE PREPARED T0 STOP", "BE PREPARED TO STOP", "en", True),
    ("FLAGGER AHEAO", "FLAGGER AHEAD", "en", True),
    ("DETOUR", "DETOUR", "en", False),
    ("BAUSTELE", "BAUSTELLE", "de", True),  # a letter dropped
    ("Straßenarbeiten", "STRASSENARBEITEN", "de", True),  # sharp s
    ("UMLEITUNG", "UMLEITUNG", "de", False),
    ("TRAVAUX", "TRAVAUX", "fr", True),
    ("DÉVIATI0N", "DEVIATION", "fr", False),  # accent and a digit
    ("0BRAS", "OBRAS", "es", True),
    ("DESVÍO", "DESVIO", "es", False),
    ("LAV0RI IN C0RS0", "LAVORI IN CORSO", "it", True),
    ("DEVIAZI0NE", "DEVIAZIONE", "it", False),
    ("WERK IN UlTVOERING", "WERK IN UITVOERING", "nl", True),  # l read for I
    ("OMLE1DING", "OMLEIDING", "nl", False),
])
def test_lexicon_matches_with_ocr_errors(text, phrase, language, strong):
    m = load_lexicon().match(text)
    assert m is not None, text
    assert (m.phrase.text, m.phrase.language, m.phrase.strong) == (phrase, language, strong)
    assert 0.8 <= m.score <= 1.0


@pytest.mark.parametrize("text", ["MAIN STREET", "SPEED LIMIT 50", "ONE WAY", "COBRASTREET", "STOP", "PARKING",
                                  "TRAVEL", "LAVORO", "", "AB", "ROBOTICS"])
def test_lexicon_rejects_ordinary_text(text):
    assert load_lexicon().match(text) is None


def test_lexicon_language_filter():
    lex = load_lexicon()
    assert lex.match("BAUSTELLE", languages=["en"]) is None
    assert lex.match("BAUSTELLE", languages=["de"]).phrase.language == "de"
    assert {"en", "de", "fr", "es", "it", "nl"} <= set(lex.languages)


@pytest.mark.parametrize("text, expected", [
    ("Déviation — R0AD w0rk!", "DEVIATION ROAD WORK"),
    ("speed 50", "SPEED 50"),  # a number alone stays a number
    ("  lavori\tin corso ", "LAVORI IN CORSO"),
])
def test_normalise_text(text, expected):
    assert normalise_text(text) == expected


@pytest.mark.parametrize("pattern, text, expected", [
    ("ROADWORK", "ROADWORK", 0), ("ROADWORK", "XXROADWORKYY", 0), ("ROADWORK", "ROADW0RK", 1),
    ("ROADWORK", "RODWORK", 1), ("ABC", "", 3), ("", "ANY", 0),
])
def test_substring_distance(pattern, text, expected):
    assert substring_distance(pattern, text) == expected


def test_custom_lexicon_file(tmp_path: Path):
    p = tmp_path / "lex.yaml"
    p.write_text("xx:\n  strong: [FOO BAR]\n", encoding="utf-8")
    lex = load_lexicon(p)
    assert lex.match("F00 BAR").phrase.text == "FOO BAR"
    bad = tmp_path / "bad.yaml"
    bad.write_text("xx: [FOO]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="strong/weak"):
        load_lexicon(bad)


def _scene(lines: list[str], *, fill=(255, 140, 0), box=(600, 150, 840, 330), diamond=False, size=(960, 540)) -> np.ndarray:
    """A dashcam-like frame (sky-ish top, road bottom) with one sign panel carrying ``lines``."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    im = PILImage.new("RGB", size, (90, 110, 90))
    d = ImageDraw.Draw(im)
    d.rectangle([0, size[1] // 2, size[0], size[1]], fill=(70, 70, 75))
    if diamond:
        cx, cy, r = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2, (box[2] - box[0]) // 2
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        d.rectangle(box, fill=fill)
    if lines:
        font = ImageFont.truetype(_font_path(), 30)
        y = (box[1] + box[3]) // 2 - len(lines) * 18
        for t in lines:
            d.text(((box[0] + box[2]) / 2 - d.textlength(t, font=font) / 2, y), t, fill=(0, 0, 0), font=font)
            y += 38
    return np.asarray(im)


needs_font = pytest.mark.skipif(_font_path() is None, reason="no DejaVu TrueType font (apt install fonts-dejavu-core)")


@needs_font
def test_proposals_find_the_panel_and_skip_plain_or_border_regions():
    pytest.importorskip("cv2")
    regions = ocr.propose_sign_regions(_scene(["ROAD", "WORK"]))
    assert len(regions) == 1
    r = regions[0]
    assert r.colour == "orange" and abs(r.x1 - 600) < 8 and abs(r.y1 - 150) < 8 and abs(r.x2 - 841) < 8
    assert ocr.propose_sign_regions(_scene([])) == []  # a blank panel has no lettering
    assert ocr.propose_sign_regions(_scene(["ROAD"], box=(0, 0, 300, 200))) == []  # touches the border
    assert ocr.propose_sign_regions(np.full((200, 300, 3), 128, np.uint8)) == []


@needs_font
def test_stage_reads_rendered_signs_in_several_languages():
    pytest.importorskip("rapidocr_onnxruntime")
    frames = [
        _scene(["ROAD", "WORK", "AHEAD"]),
        _scene(["BAUSTELLE"], fill=(255, 220, 0)),
        _scene(["LAVORI", "IN CORSO"], fill=(255, 255, 255)),
        _scene(["ROAD", "WORK"], diamond=True, box=(600, 100, 800, 300)),
        _scene(["ONE WAY"], fill=(255, 255, 255)),
        np.full((300, 400, 3), 100, np.uint8),
    ]
    stage = create_stage("sign_ocr", "ocr", {})
    outs = run_stage(stage, [Image(f) for f in frames], warmup=False)
    notes = [o.evidence.notes[0] for o in outs[:4]]
    assert notes[0].startswith("matched 'ROAD WORK AHEAD'")  # the three lines joined
    assert notes[1].startswith("matched 'BAUSTELLE' (de")
    assert notes[2].startswith("matched 'LAVORI IN CORSO' (it")
    assert notes[3].startswith("matched 'ROAD WORK' (en")
    assert all(o.log_odds is not None and o.log_odds > 2.0 for o in outs[:4])
    assert outs[4].log_odds == pytest.approx(-0.3)  # text read, no road-work word: mildly negative
    assert outs[5].log_odds is None and "no sign-like region" in outs[5].evidence.notes  # abstain
    assert outs[0].evidence.boxes and outs[0].evidence.boxes[0].label == "sign-orange"


@needs_font
def test_stage_reads_a_small_distant_sign_from_full_resolution():
    pytest.importorskip("rapidocr_onnxruntime")
    # A 1920 x 1080 frame whose sign is 150 px wide: the proposal copy (640 px) shrinks it to 50 px,
    # so only the full-resolution crop, upscaled, is legible.
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    im = PILImage.new("RGB", (1920, 1080), (90, 110, 90))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 540, 1920, 1080], fill=(70, 70, 75))
    d.rectangle([1400, 300, 1550, 400], fill=(255, 140, 0))
    font = ImageFont.truetype(_font_path(), 22)
    for i, t in enumerate(["ROAD", "CLOSED"]):
        d.text((1475 - d.textlength(t, font=font) / 2, 318 + i * 32), t, fill=(0, 0, 0), font=font)
    frame = np.asarray(im)
    out = run_stage(create_stage("sign_ocr", "ocr", {}), [Image(frame)], warmup=False)[0]
    assert any(t.matched == "ROAD CLOSED" for t in out.evidence.texts), out.evidence
    assert out.log_odds > 2.0
