"""Draw predicted entities on the page image: one box per entity in its type's colour, and a legend."""

from __future__ import annotations

import io
from pathlib import Path

from layoutpeft.atomic import write_bytes
from layoutpeft.labels import FUNSD_ORDER

COLOURS = {"HEADER": (214, 39, 40), "QUESTION": (31, 119, 180), "ANSWER": (44, 160, 44)}
# Other entity types (a dataset's own): these colours in turn, then grey.
MORE_COLOURS = [(255, 127, 14), (148, 103, 189), (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)]


def draw_entities(image_path: str | Path, entities: list[dict], types: list[str] | None = None):
    """The page as RGB with every entity's pixel box outlined, and a legend in a margin on the right
    (the page keeps its pixel coordinates: it sits at the top left of the returned image).
    `types`: the run's entity types, all in the legend (default: FUNSD's)."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(image_path) as page:
        image = page.convert("RGB")
    draw = ImageDraw.Draw(image)
    line = max(1, round(min(image.size) / 400))
    kinds = list(types or FUNSD_ORDER)
    kinds += sorted({e["type"] for e in entities} - set(kinds))
    others = iter(MORE_COLOURS)
    colours = {kind: COLOURS.get(kind) or next(others, (128, 128, 128)) for kind in kinds}
    for item in entities:
        colour = colours[item["type"]]
        x0, y0, x1, y1 = item["box"]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)

    font = ImageFont.load_default(size=max(10, round(image.size[1] / 60)))
    sizes = [draw.textbbox((0, 0), kind, font=font) for kind in kinds]
    text_h = max(b[3] - b[1] for b in sizes)
    text_w = max(b[2] - b[0] for b in sizes)
    pad, swatch = max(2, text_h // 3), text_h
    width, height = pad * 3 + swatch + text_w, pad + len(kinds) * (text_h + pad)
    # The legend goes in a white margin right of the page, so it hides no entity.
    canvas = Image.new("RGB", (image.size[0] + width + 2 * pad, max(image.size[1], height + 2 * pad)), "white")
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left, top = image.size[0] + pad, pad
    draw.rectangle([left, top, left + width, top + height], fill=(255, 255, 255), outline=(0, 0, 0))
    for row, kind in enumerate(kinds):
        y = top + pad + row * (text_h + pad)
        draw.rectangle([left + pad, y, left + pad + swatch, y + text_h], fill=colours[kind])
        draw.text((left + pad * 2 + swatch, y - sizes[row][1]), kind, fill=(0, 0, 0), font=font)
    return canvas


def shrink(image, width: int | None):
    """The image scaled down (aspect kept) to at most `width` pixels wide; unchanged if None or narrower."""
    if width is None or image.size[0] <= width:
        return image
    from PIL import Image

    return image.resize((width, max(1, round(image.size[1] * width / image.size[0]))), Image.Resampling.LANCZOS)


def save_png(image, path: str | Path) -> Path:
    """Write `image` as PNG atomically (temporary file beside `path`, then rename)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())
