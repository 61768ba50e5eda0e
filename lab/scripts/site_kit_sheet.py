"""Contact sheet of synthetic site kits (workers, machines, pedestrians) pasted into corpus scenes, boxes drawn.

Usage: python lab/scripts/site_kit_sheet.py CORPUS OUT.png [--n 24] [--seed 0]
Workers are boxed yellow, machines magenta, other classes cyan; pasted pedestrians get no box (background).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from workzone_train.data import load_pixels
from workzone_train.object_data import load_object_items, make_cutouts
from workzone_train.scene_synth import OBJECT_CLASSES, SiteCutouts, paste_work_zone_objects
from workzone_train.site_cutouts import load_site_cutouts

_COLOURS = {"worker": (255, 230, 0), "machine": (255, 0, 255)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    items, sign_crops = load_object_items(a.corpus)
    cones, signs = make_cutouts([it for it in items if not it.scene], sign_crops)
    site = SiteCutouts.from_cutouts(load_site_cutouts(a.corpus))
    rng = np.random.default_rng(a.seed)
    scenes = [it for it in items if it.scene]
    cell_w, cell_h, cols = 320, 200, 4
    sheet = Image.new("RGB", (cols * cell_w, -(-a.n // cols) * cell_h))
    for i in range(a.n):
        px = load_pixels(scenes[int(rng.integers(len(scenes)))].path)
        out, boxes, classes = paste_work_zone_objects(px, cones, signs, rng, site=site, p_site=1.0, p_second_kit=0.0)
        im = Image.fromarray(out)
        draw = ImageDraw.Draw(im)
        for (x1, y1, x2, y2), c in zip(boxes, classes):
            draw.rectangle([x1, y1, x2, y2], outline=_COLOURS.get(OBJECT_CLASSES[c], (0, 255, 255)))
        im.thumbnail((cell_w, cell_h))
        sheet.paste(im, ((i % cols) * cell_w, (i // cols) * cell_h))
    sheet.save(a.out)
    print(f"{a.out}: {a.n} scenes; cut-outs: {len(site.workers)} workers, {len(site.machines)} machines, "
          f"{len(site.pedestrians)} pedestrians")


if __name__ == "__main__":
    main()
