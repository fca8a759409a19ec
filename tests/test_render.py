"""Rendering stage: strip geometry, pixel faithfulness, text placement, determinism, bad input, DAG."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pii.core.stage import PipelineError
from pii.core.tables import read_metadata, read_table, sha256_file
from pii.render.contact_sheet import contact_sheet
from pii.render.strip import font_info, fraction_height, load_font, plan_strip, resolve_font, wrap_text
from pii.render.variants import VARIANTS, render_variant

CFG = {"font": "arimo", "font_size": 26, "strip_fraction": 0.05, "padding": 8, "line_spacing": 1.15}
SHORT = "Is there a dog in the image?"
LONG = ("Is there a dining table in the image? Answer with one word, yes or no, and then explain in a full "
        "sentence which objects you can see next to it and where they are placed.")
DARK = 128  # a pixel with any channel below this counts as ink


def _image(path, width, height, seed=0, fmt="JPEG"):
    """A noisy picture with no pure-white area, so strip pixels can be told apart from image pixels."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(20, 235, (height, width, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return str(path)


def _samples(tmp_path, specs):
    rows = []
    for i, (w, h, q) in enumerate(specs):
        path = _image(tmp_path / f"src{i}.png", w, h, seed=i, fmt="PNG")
        rows.append({"sample_id": f"pope-{i}", "task": "pope", "image_id": 100 + i, "image_file": f"src{i}.png",
                     "image_path": path, "question": q, "label": "yes", "question_id": i, "object": "dog"})
    return pl.DataFrame(rows)


def records(frame: pl.DataFrame) -> list[SimpleNamespace]:
    """The rows of a frame, each with attribute access."""
    return [SimpleNamespace(**r) for r in frame.iter_rows(named=True)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    samples = _samples(tmp, [(640, 480, SHORT), (320, 240, LONG), (640, 1000, SHORT), (200, 150, LONG)])
    manifests = {v: render_variant(samples, v, tmp / "out" / f"{v}.parquet", CFG, task="pope")
                 for v in VARIANTS}
    return tmp, samples, manifests


def _px(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_sizes_and_strip_box(rendered):
    _, samples, m = rendered
    for v in ("control", "question"):
        for src, row in zip(records(samples), records(m[v]), strict=True):
            with Image.open(src.image_path) as im:
                w, h = im.size
            with Image.open(row.image_path) as out:
                assert out.size == (row.width, row.height)
            assert (row.width, row.orig_width, row.orig_height) == (w, w, h)
            assert row.height > h
            assert (row.strip_x0, row.strip_y0, row.strip_x1, row.strip_y1) == (0, h, w, row.height)
    q, c = m["question"], m["control"]
    assert (q["width"].to_list(), q["height"].to_list()) == (c["width"].to_list(), c["height"].to_list())


def test_original_pixels_kept_and_ink_only_in_question_strip(rendered):
    _, samples, m = rendered
    for src, q, c in zip(records(samples), records(m["question"]), records(m["control"]), strict=True):
        orig = _px(src.image_path)
        h = orig.shape[0]
        qa, ca = _px(q.image_path), _px(c.image_path)
        assert np.array_equal(qa[:h], orig) and np.array_equal(ca[:h], orig)
        assert (ca[h:] == 255).all(), "the control strip must be pure white"
        dark = (qa[h:] < DARK).any(axis=2)
        assert dark.sum() > 50, "the question strip holds no text"
        rows = np.nonzero(dark.any(axis=1))[0]
        cols = np.nonzero(dark.any(axis=0))[0]
        strip_h, pad = qa.shape[0] - h, CFG["padding"]
        # no glyph touches or crosses the strip border: the whole text block keeps some white margin
        assert rows.min() >= pad // 2 and rows.max() < strip_h - pad // 2, (q.sample_id, rows.min(), rows.max())
        assert cols.min() >= pad // 2 and cols.max() < q.width - pad // 2
        assert cols.min() <= pad + 3, "text is documented as left-aligned at x = padding"


def test_strip_height_fraction_and_text(rendered):
    _, _, m = rendered
    q = {r.sample_id: r for r in records(m["question"])}
    tall = q["pope-2"]  # 640x1000 with a short question: the 5% rule decides
    assert tall.height - tall.orig_height == fraction_height(1000, 0.05) == 53
    assert abs((tall.height - tall.orig_height) / tall.height - 0.05) < 0.002
    assert tall.n_lines == 1
    short = q["pope-0"]  # 640x480: one 26 px line plus padding needs more than 5% (25 px)
    font = load_font(resolve_font("arimo"), 26)
    ascent, descent = font.getmetrics()
    assert short.height - short.orig_height == max(25, ascent + descent + 2 * CFG["padding"])
    long_ = q["pope-1"]
    assert long_.n_lines >= 4 and long_.height - long_.orig_height > 3 * 26
    assert m["question"]["text"].to_list()[1] == LONG and (m["control"]["text"] == "").all()


def test_manifest_fields(rendered):
    tmp, samples, m = rendered
    font_path = resolve_font("arimo")
    for v in ("control", "question"):
        df = read_table(tmp / "out" / f"{v}.parquet", "manifest")
        assert (df["font_file"] == font_path.name).all() and "/" not in df["font_file"][0]
        assert (df["font_sha256"] == sha256_file(font_path)).all() and (df["font_size"] == 26).all()
        assert [sha256_file(p) for p in df["image_path"]] == df["image_sha256"].to_list()
        assert df["image_path"].to_list() == [str(tmp / "out" / v / f"{s}.png") for s in samples["sample_id"]]
        assert read_metadata(tmp / "out" / f"{v}.parquet")["variant"] == v
    orig = read_table(tmp / "out" / "original.parquet", "manifest")
    assert orig["image_path"].to_list() == samples["image_path"].to_list()  # no copies
    assert orig["strip_y0"].is_null().all() and orig["text"].is_null().all()
    assert orig["image_sha256"].to_list() == [sha256_file(p) for p in samples["image_path"]]
    assert not (tmp / "out" / "original").exists()


def test_deterministic_bytes(rendered, tmp_path):
    _, samples, m = rendered
    again = render_variant(samples, "question", tmp_path / "question.parquet", CFG)
    assert again["image_sha256"].to_list() == m["question"]["image_sha256"].to_list()


def test_long_word_is_broken_not_clipped():
    font = load_font(resolve_font("arimo"), 26)
    lines = wrap_text("Pneumonoultramicroscopicsilicovolcanoconiosis here", font, 150)
    assert "".join(lines).replace(" ", "") == "Pneumonoultramicroscopicsilicovolcanoconiosishere"
    assert all(font.getlength(line) <= 150 for line in lines) and len(lines) >= 4


def test_too_narrow_image_is_an_error():
    font = load_font(resolve_font("arimo"), 26)
    with pytest.raises(PipelineError, match="lower render.font_size"):
        plan_strip(20, 20, SHORT, font, CFG)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated"])
def test_bad_source_image(tmp_path, damage):
    samples = _samples(tmp_path, [(200, 150, SHORT), (200, 150, SHORT), (200, 150, SHORT)])
    bad = samples["image_path"][2]
    if damage == "missing":
        (tmp_path / "src2.png").unlink()
    elif damage == "corrupt":
        (tmp_path / "src2.png").write_bytes(b"not an image at all")
    else:
        data = (tmp_path / "src2.png").read_bytes()
        (tmp_path / "src2.png").write_bytes(data[: len(data) // 2])
    for variant in VARIANTS:
        manifest = tmp_path / "out" / f"{variant}.parquet"
        with pytest.raises(PipelineError) as err:
            render_variant(samples, variant, manifest, CFG)
        msg = str(err.value)
        assert "\n" not in msg and "pope-2" in msg and bad in msg and "rerun" in msg
        assert not manifest.exists()
        leftovers = list((tmp_path / "out" / variant).glob("*")) if (tmp_path / "out" / variant).exists() else []
        assert leftovers == [], "images from a failed job must be removed"


def _bad_text_samples(tmp_path, question):
    samples = _samples(tmp_path, [(200, 150, SHORT), (200, 150, SHORT), (200, 150, SHORT)])
    questions = samples["question"].to_list()
    questions[2] = question
    # a float NaN fits no string column: an object column holds it, as a frame built in code could
    dtype = pl.Object if isinstance(question, float) else pl.String
    return samples.with_columns(pl.Series("question", questions, dtype=dtype))


def test_characters_the_font_lacks_fail_before_any_output(tmp_path):
    """Arimo has no CJK or emoji glyphs: they would be drawn as .notdef boxes while the manifest says '猫'."""
    samples = _bad_text_samples(tmp_path, "Is there a 猫 in the image? 🐱")
    for variant in ("control", "question"):  # the control strip is sized from the same layout
        manifest = tmp_path / "out" / f"{variant}.parquet"
        with pytest.raises(PipelineError) as err:
            render_variant(samples, variant, manifest, CFG)
        msg = str(err.value)
        assert "\n" not in msg and "pope-2" in msg
        assert "'猫' (U+732B)" in msg and "'🐱' (U+1F431)" in msg and "render.font" in msg and "question" in msg
        assert not manifest.exists() and not (tmp_path / "out" / variant).exists(), "no output may be written"


def test_characters_the_font_has_pass():
    """No false alarms: accented Latin letters and all printable ASCII are in Arimo."""
    font = font_info("arimo", 26)
    text = "".join(chr(c) for c in range(0x20, 0x7F)) + "café naïve Zoë façade Øresund"
    assert not [ch for ch in text if ord(ch) not in font.codepoints]
    assert ord("猫") not in font.codepoints


def test_decomposed_question_renders_as_its_nfc_form(tmp_path):
    """A question stored in NFD ('cafe' + U+0301) is drawn, checked and recorded as its NFC form ('café')."""
    nfd, nfc = "Is there a cafe\u0301 in the image?", "Is there a caf\u00e9 in the image?"
    assert nfd != nfc and len(nfd) == len(nfc) + 1
    out = {}
    for name, question in (("nfd", nfd), ("nfc", nfc)):
        (tmp_path / name).mkdir()
        samples = _samples(tmp_path / name, [(320, 240, question)])
        out[name] = {v: render_variant(samples, v, tmp_path / name / "out" / f"{v}.parquet", CFG, task="pope")
                     for v in ("control", "question")}
    for variant in ("control", "question"):
        a, b = out["nfd"][variant].row(0, named=True), out["nfc"][variant].row(0, named=True)
        assert a["image_sha256"] == b["image_sha256"] and a["height"] == b["height"]
        assert np.array_equal(_px(a["image_path"]), _px(b["image_path"]))
    assert out["nfd"]["question"]["text"].to_list() == [nfc]


@pytest.mark.parametrize("question", ["", "   ", None, float("nan")], ids=["empty", "blank", "none", "nan"])
def test_empty_question_fails_with_sample_id(tmp_path, question):
    samples = _bad_text_samples(tmp_path, question)
    for variant in VARIANTS:
        manifest = tmp_path / "out" / f"{variant}.parquet"
        with pytest.raises(PipelineError, match=r"sample pope-2: empty question") as err:
            render_variant(samples, variant, manifest, CFG)
        assert "\n" not in str(err.value)
        assert not manifest.exists() and not (tmp_path / "out" / variant).exists()


def test_tiny_image_question_fails_with_usable_advice_control_renders(tmp_path):
    """A 1x1 image cannot carry text at any font size: advise dropping or replacing it. The control variant has
    no text, so it still renders (a one-line strip, the least any question gets)."""
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(path)
    samples = pl.DataFrame([{"sample_id": "pope-9", "image_id": 9, "image_path": str(path), "question": SHORT}])
    with pytest.raises(PipelineError) as err:
        render_variant(samples, "question", tmp_path / "question.parquet", CFG)
    msg = str(err.value)
    assert "pope-9" in msg and "1x1" in msg and "drop" in msg and "replace" in msg
    assert "lower render.font_size" not in msg, "advice that cannot work for a 1 px wide image"
    control = records(render_variant(samples, "control", tmp_path / "control.parquet", CFG))[0]
    font = load_font(resolve_font("arimo"), 26)
    ascent, descent = font.getmetrics()
    assert (control.width, control.orig_height) == (1, 1)
    assert control.height - 1 == ascent + descent + 2 * CFG["padding"]
    px = _px(control.image_path)
    assert tuple(px[0, 0]) == (10, 200, 30) and (px[1:] == 255).all()


def test_narrow_image_that_smaller_text_fits_keeps_the_font_advice():
    font = load_font(resolve_font("arimo"), 26)
    with pytest.raises(PipelineError, match="lower render.font_size or render.padding"):
        plan_strip(30, 200, SHORT, font, CFG)


def test_font_path_and_bad_font(tmp_path):
    path = resolve_font("arimo")
    assert resolve_font(str(path)) == path
    with pytest.raises(PipelineError, match="render.font"):
        resolve_font(str(tmp_path / "nope.ttf"))
    with pytest.raises(PipelineError, match="render.font"):
        resolve_font("no-such-fontpkg")


def test_contact_sheet(rendered, tmp_path):
    _, _, m = rendered
    out = tmp_path / "sheet.png"
    contact_sheet(m, 2, "arimo", out)
    with Image.open(out) as sheet:
        w, h = sheet.size
    # three columns of at most 400 px; two rows: 480 + 46 px (scaled to 400 px) and 240 + strip
    assert 3 * 400 < w < 3 * 400 + 80
    assert 400 * 526 / 640 + 240 < h < 1200


def _data_rules_exist(root) -> bool:
    text = (root / "workflow" / "rules" / "data.smk").read_text(encoding="utf-8")
    return re.search(r"^rule sample_pope\b", text, flags=re.M) is not None


def test_dag_renders_demo(root, tmp_path):
    if not _data_rules_exist(root):
        pytest.skip("the data stage (rule sample_pope) is not written yet")
    from conftest import run_snakemake

    run_snakemake(tmp_path, "--", "results/images/pope/question.parquet", "results/images/pope/contact_sheet.png")
    samples = read_table(tmp_path / "results/data/pope_sample.parquet", "sample")
    for variant in VARIANTS:
        df = read_table(tmp_path / f"results/images/pope/{variant}.parquet", "manifest")
        assert df["sample_id"].to_list() == samples["sample_id"].to_list()
        paths = [tmp_path / p for p in df["image_path"]]
        assert [sha256_file(p) for p in paths] == df["image_sha256"].to_list()
    q = read_table(tmp_path / "results/images/pope/question.parquet", "manifest")
    c = read_table(tmp_path / "results/images/pope/control.parquet", "manifest")
    assert q["height"].to_list() == c["height"].to_list() and (q["strip_y0"] == q["orig_height"]).all()
    assert (tmp_path / "results/images/pope/contact_sheet.png").stat().st_size > 0
    # a finished render must not rerun (code triggers left out: other stages' scripts may be edited meanwhile)
    dry = run_snakemake(tmp_path, "-n", "--rerun-triggers", "mtime", "params", "input",
                        "--", "results/images/pope/contact_sheet.png")
    assert "render_variants" not in dry.stdout and "render_contact_sheet" not in dry.stdout, dry.stdout
