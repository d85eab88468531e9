"""`python -m diva_tf.data.prepare glyphs` without apt or network: the pure parts (coverage,
class choice and naming, centring arithmetic, font arguments), apt-get failures (subprocess
monkeypatched), and a whole build from two tiny TrueType fonts generated with fontTools."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageOps

from diva_tf.data import DataError, prepare
from diva_tf.data import glyphs_prepare as gp
from diva_tf.data.imagefiles import list_class_dirs
from fixtures_data import isolated_cache  # noqa: F401

pytest.importorskip("fontTools")


# ---- pure parts ----------------------------------------------------------------------------

def test_common_coverage_intersects_sorts_and_drops_aliases():
    a = {0x4E03: "a3", 0x4E00: "a0", 0x4E01: "a1", 0x4E02: "a2", 0x4E09: "a9"}
    b = {0x4E00: "b0", 0x4E01: "b1", 0x4E02: "b1", 0x4E03: "b3", 0x4E05: "b5"}
    # common: 4E00..4E03; 4E02 is drawn by b with 4E01's glyph -> alias, dropped
    assert gp.common_coverage([a, b]) == [0x4E00, 0x4E01, 0x4E03]
    assert gp.common_coverage([]) == []


def test_spread_starts_and_folder_names_sort_in_unicode_order():
    assert gp.spread_starts(10, 4) == [0, 2, 5, 7]
    assert gp.spread_starts(3, 3) == [0, 1, 2]
    names = [gp.folder_name(k, cp, 4) for k, cp in enumerate([0x4E00, 0x4E8C, 0x9F8D], 1)]
    assert names == ["0001_U+4E00", "0002_U+4E8C", "0003_U+9F8D"]
    assert sorted(reversed(names)) == names


def test_fit_box_hand_worked():
    # 100 x 50 ink, 64 px: scale 51.2 / 100 = 0.512 -> 51 x 26 (25.6 rounds up), at (6, 19)
    assert gp.fit_box(100, 50, 64) == (51, 26, 6, 19)
    # 10 x 40: scale 1.28 -> 13 x 51, left (64 - 13) // 2 = 25, top (64 - 51) // 2 = 6
    assert gp.fit_box(10, 40, 64) == (13, 51, 25, 6)
    # a 1 px line keeps at least 1 px of thickness
    assert gp.fit_box(200, 1, 64) == (51, 1, 6, 31)


def test_parse_font():
    assert gp.parse_font("noto_sans").package == "fonts-noto-cjk"
    spec = gp.parse_font("mine=/x/y.ttc#2")
    assert (spec.name, spec.file, spec.face, spec.package) == ("mine", "/x/y.ttc", 2, "")
    with pytest.raises(DataError, match="unknown font 'nope'"):
        gp.parse_font("nope")
    with pytest.raises(DataError, match="must be letters"):
        gp.parse_font("a b=/x.ttf")


def test_default_fonts_are_distinct_known_packages():
    assert 8 <= len(gp.DEFAULT_FONTS) <= 14
    assert len(set(gp.DEFAULT_FONTS)) == len(gp.DEFAULT_FONTS)
    files = [(gp.FONTS[n].package, gp.FONTS[n].file, gp.FONTS[n].face) for n in gp.DEFAULT_FONTS]
    assert len(set(files)) == len(files)


def test_missing_apt_get_is_one_clear_error(tmp_path, monkeypatch):
    def no_apt(*a, **k):
        raise FileNotFoundError("apt-get")

    monkeypatch.setattr(subprocess, "run", no_apt)
    with pytest.raises(DataError) as e:
        gp.apt_download("fonts-noto-cjk", str(tmp_path / "apt"))
    msg = str(e.value)
    assert "apt-get update" in msg and "--fonts_dir" in msg and "\n" not in msg


def test_failing_apt_get_download_is_one_clear_error(tmp_path, monkeypatch):
    def failing(cmd, **k):
        assert cmd == ["apt-get", "download", "fonts-seto"]
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package fonts-seto")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(DataError, match=r"exit 100: E: Unable to locate package fonts-seto.*"
                                        r"apt-get update"):
        gp.prepare_glyphs(str(tmp_path / "out"), 2, 16, ["seto", "kiloji"],
                          cache=str(tmp_path / "apt"))
    assert not os.path.exists(tmp_path / "out")
    # the CLI prints it as one line and exits 2
    assert prepare.main(["glyphs", "--out", str(tmp_path / "out"), "--fonts", "seto,kiloji",
                         "--cache", str(tmp_path / "apt")]) == 2


def test_fonts_dir_without_the_file_names_the_package(tmp_path):
    with pytest.raises(DataError, match="no setofont.ttf \\(Debian package fonts-seto\\)"):
        gp.prepare_glyphs(str(tmp_path / "out"), 2, 16, ["seto", "kiloji"],
                          fonts_dir=str(tmp_path))


# ---- a whole build from generated fonts ------------------------------------------------------

def _rect(x0, y0, x1, y1):
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    pen = TTGlyphPen(None)
    if x1 > x0:
        pen.moveTo((x0, y0))
        pen.lineTo((x0, y1))
        pen.lineTo((x1, y1))
        pen.lineTo((x1, y0))
        pen.closePath()
    return pen.glyph()


def make_font(path: str, glyphs: dict, cmap: dict) -> str:
    """A TrueType font of rectangle glyphs {name: (x0, y0, x1, y1)}; (0, 0, 0, 0) = empty."""
    from fontTools.fontBuilder import FontBuilder

    names = [".notdef"] + [n for n in glyphs if n != ".notdef"]
    boxes = {".notdef": (100, 0, 500, 700), **glyphs}
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap(cmap)
    fb.setupGlyf({n: _rect(*boxes[n]) for n in names})
    fb.setupHorizontalMetrics({n: (1000, boxes[n][0]) for n in names})
    fb.setupHorizontalHeader(ascent=900, descent=-100)
    fb.setupNameTable({"familyName": os.path.basename(path), "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=900, sTypoDescender=-100, usWinAscent=900, usWinDescent=100)
    fb.setupPost()
    fb.save(path)
    return path


@pytest.fixture(scope="module")
def fonts(tmp_path_factory):
    d = tmp_path_factory.mktemp("fonts")
    wide, tall = (100, 100, 900, 500), (300, 0, 500, 800)  # 2:1 and 1:4 ink boxes
    a = make_font(str(d / "a.ttf"),
                  {"w": wide, "t": tall, "tofu": (100, 0, 500, 700), "empty": (0, 0, 0, 0)},
                  {0x4E00: "w", 0x4E01: "tofu", 0x4E02: "t", 0x4E03: "t", 0x4E04: "empty",
                   0x4E05: "w"})
    b = make_font(str(d / "b.ttf"), {"w": wide, "t": tall, "t2": tall},
                  {0x4E00: "w", 0x4E01: "t", 0x4E02: "t2", 0x4E03: "t2", 0x4E04: "w",
                   0x4E06: "w"})
    return [f"fa={a}", f"fb={b}"]


def test_cmap_skips_empty_glyphs(fonts):
    cmap = gp.read_cmap(fonts[0].split("=", 1)[1], 0)
    assert sorted(cmap) == [0x4E00, 0x4E01, 0x4E02, 0x4E03, 0x4E05]  # 4E04 is empty


def test_build_selects_renders_centres_and_is_idempotent(tmp_path, fonts):
    out = str(tmp_path / "glyphs")
    manifest, did_work = gp.prepare_glyphs(out, n_classes=2, size=64, fonts=fonts)
    assert did_work
    # common: 4E00..4E04; 4E03 aliases 4E02 (both fonts), 4E04 empty in fa -> [4E00, 4E01, 4E02];
    # slots start at 0 and 1; 4E01 is tofu in fa (same outline as .notdef) -> replaced by 4E02
    assert manifest["common_coverage"] == 3
    assert [c["folder"] for c in manifest["classes"]] == ["0001_U+4E00", "0002_U+4E02"]
    assert manifest["rejected"] == [{"code_point": "U+4E01", "font": "fa"}]
    assert list_class_dirs(out) == ["0001_U+4E00", "0002_U+4E02"]
    assert sorted(os.listdir(os.path.join(out, "0001_U+4E00"))) == ["fa.png", "fb.png"]
    for folder, box in (("0001_U+4E00", (6, 19, 57, 45)), ("0002_U+4E02", (25, 6, 38, 57))):
        for f in ("fa", "fb"):
            im = Image.open(os.path.join(out, folder, f"{f}.png"))
            assert im.mode == "RGB" and im.size == (64, 64)
            # 2:1 box -> 51 x 26 at (6, 19); 1:4 box -> 13 x 51 at (25, 6) (fit_box above),
            # up to one px of resampling blur either side
            got = ImageOps.invert(im).getbbox()
            assert all(abs(g - e) <= 1 for g, e in zip(got, box)), (folder, f, got)
            a = np.asarray(im)
            assert a[0, 0].tolist() == [255, 255, 255] and a[32, 32].tolist() == [0, 0, 0]
    stamp = os.stat(os.path.join(out, "0001_U+4E00", "fa.png")).st_mtime_ns
    again, did_work = gp.prepare_glyphs(out, n_classes=2, size=64, fonts=fonts)
    assert not did_work and again == manifest
    assert os.stat(os.path.join(out, "0001_U+4E00", "fa.png")).st_mtime_ns == stamp
    with open(os.path.join(out, gp.MANIFEST)) as f:
        assert json.load(f)["arguments"]["size"] == 64
    # other arguments: rebuilt in place, no temporary folder left beside it
    _, did_work = gp.prepare_glyphs(out, n_classes=2, size=32, fonts=fonts)
    assert did_work and Image.open(os.path.join(out, "0002_U+4E02", "fb.png")).size == (32, 32)
    assert sorted(os.listdir(tmp_path)) == ["glyphs"]


def test_too_few_common_characters(tmp_path, fonts):
    with pytest.raises(DataError, match="only 3 characters .* in common; ask for --n_classes <= 3"):
        gp.prepare_glyphs(str(tmp_path / "g"), n_classes=4, size=32, fonts=fonts)


def test_refuses_to_replace_other_data(tmp_path, fonts):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not a glyphs dataset folder"):
        gp.prepare_glyphs(str(out), n_classes=2, size=32, fonts=fonts)
    assert os.listdir(out) == ["keep.txt"]


def test_cli(tmp_path, fonts, capsys):
    out = str(tmp_path / "g")
    argv = ["glyphs", "--out", out, "--n_classes", "2", "--size", "16", "--fonts", ",".join(fonts)]
    assert prepare.main(argv) == 0
    assert "glyphs prepared" in capsys.readouterr().out
    assert prepare.main(argv) == 0
    assert "2 classes x 2 fonts (fa,fb) = 4 images, 16 px" in capsys.readouterr().out
