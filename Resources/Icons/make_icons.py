#!/usr/bin/env python3
"""Generate the P2SAM extension and module icons (128x128 RGBA PNG).

The picture is a stylised axial CT slice (grey body outline with a darker
interior and two lighter "organs") carrying a coloured segmentation contour
around a lesion, with the text "P²" in the corner.

Run from anywhere (needs Pillow >= 10.1 for the bundled scalable default font):

    python Resources/Icons/make_icons.py

It writes:
    Resources/Icons/P2SAM.png                        (extension icon)
    P2SAMSlicer/Resources/Icons/P2SAMSlicer.png      (module icon)

Both files are the same image. The drawing is deterministic; only the text
rendering may differ slightly between Pillow/FreeType versions.
"""

import math
import os

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 128
SCALE = 4  # draw at 4x and downsample for anti-aliasing
S = SIZE * SCALE

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUTPUTS = [
    os.path.join(REPO_ROOT, "Resources", "Icons", "P2SAM.png"),
    os.path.join(REPO_ROOT, "P2SAMSlicer", "Resources", "Icons", "P2SAMSlicer.png"),
]

BACKGROUND = (24, 32, 48, 255)  # dark blue-grey rounded tile
BODY_EDGE = (200, 200, 200, 255)  # skin / fat rim
BODY_FILL = (92, 92, 92, 255)  # soft tissue
ORGAN_FILL = (150, 150, 150, 255)  # liver-ish and spleen-ish blobs
SPINE_FILL = (235, 235, 235, 255)  # vertebra
LESION_FILL = (120, 120, 120, 255)
CONTOUR = (255, 140, 0, 255)  # orange segmentation contour
CONTOUR_GLOW = (255, 170, 60, 110)
TEXT = (255, 255, 255, 255)


def s(v):
    """Scale a 128-pixel coordinate to the supersampled canvas."""
    return int(round(v * SCALE))


def box(cx, cy, rx, ry):
    return [s(cx - rx), s(cy - ry), s(cx + rx), s(cy + ry)]


def blob(cx, cy, r, n=96):
    """Closed, slightly irregular outline (looks like a hand-drawn contour)."""
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        rr = r * (1 + 0.13 * math.sin(3 * t + 0.4) + 0.07 * math.cos(2 * t))
        pts.append((s(cx + rr * math.cos(t)), s(cy + rr * math.sin(t))))
    return pts


def font(size):
    # load_default(size=...) returns Pillow's bundled scalable font, so the
    # result does not depend on fonts installed on the machine.
    return ImageFont.load_default(size=s(size))


def draw_icon():
    img = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)

    # Rounded tile
    d.rounded_rectangle([s(2), s(2), s(126), s(126)], radius=s(22), fill=BACKGROUND)

    # Body: elliptical slice with a bright rim
    d.ellipse(box(64, 66, 54, 42), fill=BODY_EDGE)
    d.ellipse(box(64, 66, 50, 38), fill=BODY_FILL)

    # Organs: a large blob on the image left (patient's right) and a small one
    d.ellipse(box(44, 60, 22, 18), fill=ORGAN_FILL)
    d.ellipse(box(88, 56, 11, 9), fill=ORGAN_FILL)

    # Vertebra
    d.ellipse(box(64, 92, 9, 8), fill=SPINE_FILL)
    d.ellipse(box(64, 92, 4, 3.5), fill=BODY_FILL)

    # Lesion inside the large organ
    d.polygon(blob(50, 58, 8), fill=LESION_FILL)

    # Segmentation contour around the lesion, with a soft glow underneath
    contour = blob(50, 58, 11.5)
    contour.append(contour[0])
    glow = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    ImageDraw.Draw(glow).line(contour, fill=CONTOUR_GLOW, width=s(5), joint="curve")
    glow = glow.filter(ImageFilter.GaussianBlur(radius=s(1.5)))
    img = Image.alpha_composite(img, glow)
    d = ImageDraw.Draw(img)
    d.line(contour, fill=CONTOUR, width=s(3), joint="curve")

    # "P²" label in the top-right corner, outlined so it reads over the slice
    f_big = font(36)
    f_sup = font(20)
    x, y = 78, 2
    stroke = dict(stroke_width=s(1.6), stroke_fill=BACKGROUND)
    d.text((s(x), s(y)), "P", font=f_big, fill=TEXT, **stroke)
    p_width = d.textlength("P", font=f_big) / SCALE
    d.text((s(x + p_width + 1.5), s(y)), "2", font=f_sup, fill=TEXT, **stroke)

    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def main():
    icon = draw_icon()
    for path in OUTPUTS:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        icon.save(path, format="PNG", optimize=True)
        print("wrote", os.path.relpath(path, REPO_ROOT))


if __name__ == "__main__":
    main()
