"""Rebuild ``samples/roadwork_cambridge_drawn.jpg``: a CamVid street with a drawn lane closure.

Why a drawn sample: the repository may only ship images whose licence allows redistribution. CamVid
(CC BY-NC 4.0) does, with attribution and a note of the changes; the work-zone props are drawn by
this project's own renderer (``workzone_train.props``), not cut from unlicensed photos. The
frame is from the development set's ``dev`` split (never trained on); seed 2 gives a row of
channelizer posts closing the right lane.

    python samples/make_drawn_sample.py [--data ../shared/data/roadwork-v1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from workzone_train.synth import paste_work_zone

FRAME = "images/camvid/0016e5_07959.jpg"
SEED = 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/roadwork-v1")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "roadwork_cambridge_drawn.jpg")
    args = ap.parse_args()
    scene = np.asarray(Image.open(args.data / FRAME).convert("RGB"))
    # No cutouts and p_cones 0: only drawn props, so nothing of an unlicensed photo is pasted.
    img, centres = paste_work_zone(scene, [], np.random.default_rng(SEED), p_cones=0.0)
    if not centres:
        raise SystemExit("no prop landed inside the frame; the renderer changed, pick another seed")
    Image.fromarray(img).save(args.out, "JPEG", quality=90)
    print(f"{args.out}: {len(centres)} drawn props on {FRAME}")


if __name__ == "__main__":
    main()
