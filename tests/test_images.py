"""The one image loader (images.load_rgb): EXIF orientation, transparency onto white, 16-bit scaling, and the
same pixels for a model whichever variant it is shown (the 'original' variant is the source file itself)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pii.core.images import load_rgb
from pii.inference import vlm
from pii.render import variants

CFG = {"font": "arimo", "font_size": 26, "strip_fraction": 0.05, "padding": 8, "line_spacing": 1.15}
ORIENTATION = 0x0112

# What each EXIF orientation asks a viewer to do to the stored pixels, written out from the EXIF specification
# (row 0 / column 0 of the stored image end up at ...), independent of Pillow's implementation.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise
}


def _noise(height, width, channels=3, seed=0):
    return np.random.default_rng(seed).integers(20, 235, (height, width, channels), dtype=np.uint8)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def _px(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float64) / 255
    return np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_applied(tmp_path, orientation):
    raw = _noise(30, 50)
    path = tmp_path / "photo.png"  # lossless, so the expected pixels are exact
    Image.fromarray(raw).save(path, exif=_exif(orientation))
    assert np.array_equal(_px(load_rgb(path)), UPRIGHT[orientation](raw))


def test_exif_orientation_applied_to_jpeg(tmp_path):
    path = tmp_path / "camera.jpg"  # how phones store a portrait photo: landscape pixels plus a tag
    Image.fromarray(_noise(40, 64)).save(path, quality=95, exif=_exif(6))
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    upright = _px(load_rgb(path))
    assert upright.shape == (64, 40, 3) and np.array_equal(upright, np.rot90(stored, -1))


def test_rgba_is_composited_onto_white_not_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # black everywhere; alpha decides what shows
    rgba[0, :, 3] = 0  # fully transparent row: white
    rgba[1, :, 3] = 128  # half transparent black: mid grey
    rgba[2:, :, 3] = 255  # opaque black stays black
    rgba[3, :, :3] = (200, 10, 30)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    out = _px(load_rgb(tmp_path / "logo.png"))
    assert (out[0] == 255).all()
    assert np.abs(out[1].astype(int) - 127).max() <= 1
    assert (out[2] == 0).all() and (out[3] == (200, 10, 30)).all()
    assert np.array_equal(out, _over_white(rgba))


@pytest.mark.parametrize("kind", ["palette", "grey_alpha", "rgb_trns"])
def test_other_transparency_onto_white(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "palette":
        img = Image.new("P", (3, 1), 0)
        img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        img.putpixel((1, 0), 1)
        img.save(path, transparency=0)  # palette entry 0 (black) is transparent
    elif kind == "grey_alpha":
        Image.fromarray(np.array([[[0, 0], [0, 255], [0, 0]]], np.uint8), "LA").save(path)
    else:
        Image.fromarray(np.array([[[0, 0, 0], [9, 9, 9], [0, 0, 0]]], np.uint8)).save(path, transparency=(0, 0, 0))
    out = _px(load_rgb(path))
    assert (out[0, 0] == 255).all() and (out[0, 2] == 255).all(), "transparent pixels must be white"
    assert tuple(out[0, 1]) == {"palette": (255, 0, 0), "grey_alpha": (0, 0, 0), "rgb_trns": (9, 9, 9)}[kind]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, fmt):
    values = np.array([[0, 257, 128 * 257, 40000, 65535, 200]], np.uint16)
    path = tmp_path / f"depth.{fmt.lower()}"
    # a 16-bit PNG opens as mode I;16, a TIFF of 32-bit integers as I (how older Pillow opened 16-bit PNGs)
    Image.fromarray(values if fmt == "PNG" else values.astype(np.int32)).save(path, format=fmt)
    with Image.open(path) as im:
        assert im.mode == ("I;16" if fmt == "PNG" else "I")
    out = _px(load_rgb(path))
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected) and (out[..., 0] == out[..., 2]).all()
    assert out[0, 5, 0] == 1, "200/65535 is nearly black, not white"


def test_plain_rgb_and_grey_jpeg_pixels_unchanged(tmp_path):
    """Ordinary COCO JPEGs (RGB or greyscale, no orientation tag) decode exactly as before: rendered bytes stay."""
    Image.fromarray(_noise(30, 40)).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(_noise(30, 40, 1)[..., 0]).save(tmp_path / "grey.jpg", quality=90)
    for name in ("rgb.jpg", "grey.jpg"):
        with Image.open(tmp_path / name) as im:
            plain = np.asarray(im.convert("RGB"))
        assert np.array_equal(_px(load_rgb(tmp_path / name)), plain)


def _source(tmp_path, kind) -> tuple[str, np.ndarray]:
    """A source image of an awkward kind and the upright RGB pixels a viewer shows for it."""
    if kind == "rgba_png_exif6":
        rgba = np.concatenate([_noise(80, 150), np.zeros((80, 150, 1), np.uint8)], axis=2)
        rgba[:, :50, 3] = 0
        rgba[:, 50:100, 3] = 100
        rgba[:, 100:, 3] = 255
        path = tmp_path / "rgba.png"
        Image.fromarray(rgba, "RGBA").save(path, exif=_exif(6))
        return str(path), UPRIGHT[6](_over_white(rgba))
    if kind == "jpeg_exif8":
        path = tmp_path / "camera.jpg"
        Image.fromarray(_noise(90, 160)).save(path, quality=92, exif=_exif(8))
        with Image.open(path) as im:
            return str(path), UPRIGHT[8](np.asarray(im.convert("RGB")))
    values = (np.arange(60 * 120).reshape(60, 120) * 9).astype(np.uint16)  # 16-bit grey
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    grey = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return str(path), np.repeat(grey[..., None], 3, axis=2)


@pytest.mark.parametrize("kind", ["rgba_png_exif6", "jpeg_exif8", "grey16_png"])
def test_every_variant_shows_the_same_upright_pixels(tmp_path, kind):
    """Inference opens the 'original' variant from the source path in its manifest and the other variants from
    rendered PNGs: through vlm.open_image all three must show the same picture (upright, alpha on white)."""
    path, upright = _source(tmp_path, kind)
    samples = pl.DataFrame([{"sample_id": "pope-0", "task": "pope", "image_id": 1, "image_path": path,
                             "question": "Is there a dog in the image?"}])
    manifests = {v: variants.render_variant(samples, v, tmp_path / "out" / f"{v}.parquet", CFG, task="pope")
                 for v in variants.VARIANTS}
    h, w = upright.shape[:2]
    assert manifests["original"]["image_path"][0] == path  # the source itself, no copy
    for variant, manifest in manifests.items():
        row = manifest.row(0, named=True)
        assert (row["orig_width"], row["orig_height"]) == (w, h), "the manifest records the upright size"
        seen = _px(vlm.open_image(row["image_path"]))
        assert seen.shape == (row["height"], row["width"], 3)
        assert np.array_equal(seen[:h], upright), f"{variant}: the image part differs"
    assert (_px(vlm.open_image(manifests["control"]["image_path"][0]))[h:] == 255).all()


def test_openai_backend_sends_what_the_transformers_backend_sees(tmp_path):
    """A plain JPEG goes to a server byte for byte; an EXIF-rotated RGBA PNG is re-encoded to the upright,
    white-backed pixels that load_rgb (and so the transformers backend) gives."""
    import base64
    import io

    from pii.inference import openai_backend

    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(plain, quality=90)
    url, _ = openai_backend.data_url(str(plain))
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == plain.read_bytes()

    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 20, 30))  # transparent left half, black underneath
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    odd = tmp_path / "odd.png"
    rgba.save(odd, exif=exif.tobytes())
    url, _ = openai_backend.data_url(str(odd))
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as sent:
        assert sent.mode == "RGB" and sent.size == (30, 40)
        assert np.array_equal(np.asarray(sent), np.asarray(load_rgb(odd)))
