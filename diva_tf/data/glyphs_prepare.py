"""Build the CJK glyphs dataset folder: one class per character, one image per typeface.

A class is one CJK Unified Ideograph (U+4E00..U+9FFF); its images are that character drawn by each
selected font, black on white, cropped to the ink, scaled so its longer side is 0.8 * size and
centred on a size x size RGB PNG: OUT/<rank>_U+<code>/<font>.png, with OUT/manifest.json. It is a
generic class-per-folder tree: train with --dataset=folder --data_dir=OUT (first half of the sorted
class folders train, the rest test).

Fonts are Debian packages fetched WITHOUT installing them: `apt-get download <pkg>` into the cache
folder (--cache; default $DIVA_TF_CACHE_DIR/apt, else ~/.cache/diva_tf/apt), extracted with
`dpkg-deb -x`; or found by file name under --fonts_dir (e.g. /usr/share/fonts with the packages
installed). In a .ttc collection the face index is fixed per font (FONTS): the JP face of Noto
(Japanese glyph forms, like the other Japanese fonts), the first (CN) face of AR PL and WenQuanYi.
`name=/path/font.ttf[#face]` adds any other font file.

Classes: the characters every font maps in its cmap (fontTools), minus code points a font maps to
the same glyph as a lower one (aliases), in Unicode order; n_classes of them are taken evenly
spaced over that list (so they span all radicals, not only the first few) and numbered in Unicode
order (the train half is the lower code points). A character whose rendering is empty or equals
the font's .notdef (tofu) in any font is replaced by the next covered one. Rerunning with the same
arguments does nothing; the folder is built beside OUT and renamed into place.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging as pylogging
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from diva_tf.core.atomic import atomic_folder
from diva_tf.data.errors import DataError
from diva_tf.data.imagefiles import cache_dir as diva_cache_dir

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BLOCK = (0x4E00, 0x9FFF)  # CJK Unified Ideographs
FILL = 0.8
RENDER_SCALE = 4  # glyphs are drawn at RENDER_SCALE * size px, then downsampled
NOTDEF_PROBE = 0x10FFFD  # a private-use code point no font maps: renders the .notdef glyph


@dataclass(frozen=True)
class FontSpec:
    name: str     # output file stem
    package: str  # Debian package ('' for a user-given file)
    file: str     # file name inside the package (or the full path of a user-given file)
    face: int     # face index in a .ttc collection (0 for a .ttf/.otf)
    style: str


# One font per design. Left out as near-duplicates: IPAex/Takao (= IPA), WenQuanYi Micro Hei
# (from Droid Sans Fallback), Klee One (LXGW WenKai is derived from it), VL Gothic and Ume Gothic
# (Sazanami kanji). Default set: 12 designs whose common drawn coverage is 5,534 characters
# (kiloji's cmap lists 12,204 but some of those glyphs are empty; read_cmap drops them).
# The font table (Debian package, file, face, style) is data: glyph_fonts.json next to this file;
# its first 12 entries are DEFAULT_FONTS, the rest are usable with --fonts.
FONTS = {f["name"]: FontSpec(**f) for f in json.loads(
    (Path(__file__).with_name("glyph_fonts.json")).read_text(encoding="utf-8"))}
DEFAULT_FONTS = ("noto_sans", "noto_serif", "wqy_zenhei", "ar_uming", "ar_ukai", "lxgw_wenkai",
                 "cwtex_kai", "cwtex_fangsong", "cwtex_yuan", "ipa_mincho", "kiloji", "seto")
DEFAULT_CLASSES = 1000
DEFAULT_SIZE = 64


def default_cache() -> str:
    return os.path.join(diva_cache_dir(), "apt")


def parse_font(entry: str) -> FontSpec:
    """A FONTS key, or `name=/path/to/font.ttf[#face]` for any other font file."""
    if "=" not in entry:
        if entry not in FONTS:
            raise DataError(f"--fonts: unknown font {entry!r}; choose from {sorted(FONTS)} or "
                            "give name=/path/font.ttf[#face]")
        return FONTS[entry]
    name, path = entry.split("=", 1)
    face = 0
    m = re.match(r"^(.*)#(\d+)$", path)
    if m:
        path, face = m.group(1), int(m.group(2))
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise DataError(f"--fonts: font name {name!r} must be letters, digits, _ or -")
    return FontSpec(name, "", os.path.abspath(path), face, "user font file")


# ---- font files ----------------------------------------------------------------------------

def find_deb(cache: str, package: str) -> str | None:
    found = sorted(glob.glob(os.path.join(glob.escape(cache), f"{package}_*.deb")))
    return found[-1] if found else None


def apt_download(package: str, cache: str) -> str:
    """`apt-get download package` into cache; the .deb path. No system-wide install."""
    os.makedirs(cache, exist_ok=True)
    hint = ("run `apt-get update` (needs the Debian archive), or pass --fonts_dir DIR with the "
            "fonts already installed (e.g. /usr/share/fonts)")
    try:
        proc = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True,
                              text=True)
    except FileNotFoundError:
        raise DataError(f"apt-get is not available to download {package}: {hint}") from None
    deb = find_deb(cache, package)
    if proc.returncode != 0 or deb is None:
        last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        raise DataError(f"apt-get download {package} failed (exit {proc.returncode}: {last}): "
                        f"{hint}")
    return deb


def extract_deb(deb: str, cache: str) -> str:
    """dpkg-deb -x the package once into cache/extracted/<deb name>; the folder."""
    dest = os.path.join(cache, "extracted", os.path.basename(deb)[:-len(".deb")])
    if not os.path.isdir(dest):
        with atomic_folder(dest, durable=False) as tmp:
            proc = subprocess.run(["dpkg-deb", "-x", deb, tmp], capture_output=True, text=True)
            if proc.returncode != 0:
                raise DataError(f"dpkg-deb -x {deb} failed: {proc.stderr.strip()[-200:]}; delete "
                                "the file to download it again")
    return dest


def find_file(root: str, name: str) -> str | None:
    """The first (sorted) file called name under root."""
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        if name in filenames:
            return os.path.join(dirpath, name)
    return None


def deb_version(deb: str) -> str:
    """The version from a `<package>_<version>_<arch>.deb` name (apt escapes ':' as %3a)."""
    parts = os.path.basename(deb)[:-len(".deb")].split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else "unknown"


def resolve_fonts(specs: list[FontSpec], fonts_dir: str | None, cache: str) -> dict[str, dict]:
    """{font name: {path, face, package, version}} for each spec."""
    resolved, extracted = {}, {}
    for spec in specs:
        if not spec.package:
            if not os.path.isfile(spec.file):
                raise DataError(f"--fonts {spec.name}={spec.file}: no such font file")
            resolved[spec.name] = {"path": spec.file, "face": spec.face, "package": None,
                                   "version": None}
            continue
        if fonts_dir:
            path = find_file(fonts_dir, spec.file)
            if path is None:
                raise DataError(f"--fonts_dir={fonts_dir}: no {spec.file} (Debian package "
                                f"{spec.package}) under it; install the package, or leave out "
                                "--fonts_dir to download it with apt-get")
            resolved[spec.name] = {"path": path, "face": spec.face, "package": spec.package,
                                   "version": None}
            continue
        if spec.package not in extracted:
            deb = find_deb(cache, spec.package) or apt_download(spec.package, cache)
            extracted[spec.package] = (extract_deb(deb, cache), deb_version(deb))
        root, version = extracted[spec.package]
        path = find_file(root, spec.file)
        if path is None:
            raise DataError(f"package {spec.package} has no {spec.file}")
        resolved[spec.name] = {"path": path, "face": spec.face, "package": spec.package,
                               "version": version}
    return resolved


# ---- coverage and class choice ---------------------------------------------------------------

def read_cmap(path: str, face: int) -> dict[int, str]:
    """{code point: glyph name} of the block, from the font's best Unicode cmap, without code
    points mapped to an outline with no contours (some fonts map characters they do not draw)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        raise DataError("the glyphs dataset needs fontTools: pip install fonttools") from None
    pylogging.getLogger("fontTools").setLevel(pylogging.ERROR)  # e.g. odd 'created' dates
    try:
        font = TTFont(path, fontNumber=face, lazy=True)
        cmap = {cp: g for cp, g in (font.getBestCmap() or {}).items()
                if BLOCK[0] <= cp <= BLOCK[1]}
        if "loca" in font:  # TrueType outlines: an empty glyph has no data (equal offsets)
            loca = font["loca"]
            ids = {g: font.getGlyphID(g) for g in set(cmap.values())}
            cmap = {cp: g for cp, g in cmap.items() if loca[ids[g] + 1] > loca[ids[g]]}
    except Exception as e:  # fontTools raises many types for a bad or wrong-index file
        raise DataError(f"{path} (face {face}): not a readable font ({e})") from None
    return cmap


def common_coverage(cmaps: list[dict[int, str]]) -> list[int]:
    """Code points every cmap maps, in Unicode order, without aliases: a code point that some font
    maps to the same glyph as a lower kept code point is dropped."""
    if not cmaps:
        return []
    common = sorted(set.intersection(*(set(c) for c in cmaps)))
    seen = [set() for _ in cmaps]
    kept = []
    for cp in common:
        glyphs = [c[cp] for c in cmaps]
        if any(g in s for g, s in zip(glyphs, seen)):
            continue
        for g, s in zip(glyphs, seen):
            s.add(g)
        kept.append(cp)
    return kept


def spread_starts(total: int, n: int) -> list[int]:
    """n evenly spaced start indices into a list of total: floor(i * total / n)."""
    return [i * total // n for i in range(n)]


def folder_name(rank: int, cp: int, width: int) -> str:
    return f"{rank:0{width}d}_U+{cp:04X}"


# ---- rendering -------------------------------------------------------------------------------

def fit_box(w: int, h: int, size: int, fill: float = FILL) -> tuple[int, int, int, int]:
    """(new width, new height, left, top): a w x h ink box scaled so its longer side is
    fill * size (aspect kept, rounded, at least 1 px) and centred in a size x size square."""
    scale = fill * size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def ink(font: ImageFont.FreeTypeFont, cp: int) -> np.ndarray | None:
    """The glyph's ink (uint8, 255 = ink) cropped to its bounding box; None if it has none."""
    ch = chr(cp)
    left, top, right, bottom = font.getbbox(ch)
    pad = 4
    canvas = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), ch, fill=255, font=font)
    box = canvas.getbbox()
    return None if box is None else np.asarray(canvas.crop(box))


def place(glyph: np.ndarray, size: int) -> Image.Image:
    """Black-on-white RGB size x size image of the ink array, fitted and centred by fit_box."""
    h, w = glyph.shape
    nw, nh, x, y = fit_box(w, h, size)
    small = Image.fromarray(glyph).resize((nw, nh), Image.LANCZOS)
    square = Image.new("L", (size, size), 0)
    square.paste(small, (x, y))
    return Image.fromarray(255 - np.asarray(square)).convert("RGB")


class Renderer:
    """One font at RENDER_SCALE * size px with its .notdef ink, to reject empty and tofu glyphs."""

    def __init__(self, path: str, face: int, size: int):
        self.font = ImageFont.truetype(path, RENDER_SCALE * size, index=face)
        self.size = size
        self.notdef = ink(self.font, NOTDEF_PROBE)

    def render(self, cp: int) -> Image.Image | None:
        glyph = ink(self.font, cp)
        if glyph is None or int(glyph.max()) < 128:
            return None
        if self.notdef is not None and np.array_equal(glyph, self.notdef):
            return None
        return place(glyph, self.size)


def choose_and_render(coverage: list[int], renderers: dict[str, Renderer], n_classes: int,
                      root: str) -> tuple[list[int], list[dict]]:
    """Render n_classes characters spread over coverage into root/<folder>/<font>.png; a
    character some font draws empty or as tofu is replaced by the next untried one. Returns
    (chosen code points, rejected [{code point, font}])."""
    starts = spread_starts(len(coverage), n_classes)
    chosen, rejected, images = [], [], []
    nxt = 0  # first index not yet tried: a slot whose start was used up moves on from here
    for i in range(n_classes):
        for j in range(max(starts[i], nxt), len(coverage)):
            nxt = j + 1
            cp = coverage[j]
            drawn = {}
            for name, r in renderers.items():
                im = r.render(cp)
                if im is None:
                    rejected.append({"code_point": f"U+{cp:04X}", "font": name})
                    break
                drawn[name] = im
            else:
                chosen.append(cp)
                images.append(drawn)
                break
        else:
            raise DataError(f"only {len(chosen)} of the {len(coverage)} common characters "
                            f"render in every font (not empty, not tofu); ask for --n_classes <= "
                            f"{len(chosen)}")
    width = max(4, len(str(n_classes)))
    for rank, (cp, drawn) in enumerate(zip(chosen, images), 1):
        folder = os.path.join(root, folder_name(rank, cp, width))
        os.makedirs(folder)
        for name, im in drawn.items():
            im.save(os.path.join(folder, f"{name}.png"))
    return chosen, rejected


# ---- manifest and the whole build ------------------------------------------------------------

def arguments(specs: list[FontSpec], n_classes: int, size: int, fonts_dir: str | None) -> dict:
    return {"format": MANIFEST_FORMAT, "dataset": "glyphs", "n_classes": n_classes, "size": size,
            "fonts": [asdict(s) for s in specs],
            "fonts_dir": os.path.abspath(fonts_dir) if fonts_dir else None}


def read_manifest(out: str) -> dict | None:
    try:
        with open(os.path.join(out, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_prepared(out: str, args: dict) -> dict | None:
    """The manifest if out holds this very dataset (same arguments, every image there)."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("arguments") != args:
        return None
    names = [f["name"] for f in args["fonts"]]
    complete = all(os.path.isfile(os.path.join(out, c["folder"], f"{n}.png"))
                   for c in manifest["classes"] for n in names)
    return manifest if complete else None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_replaceable(out: str) -> None:
    """A DataError unless out is absent, empty, or an earlier glyphs folder (never replace other
    data)."""
    if os.path.isdir(out) and os.listdir(out):
        old = read_manifest(out) or {}
        args = old.get("arguments")
        if not isinstance(args, dict) or args.get("dataset") != "glyphs":
            raise DataError(f"--out={out} exists and is not a glyphs dataset folder (no glyphs "
                            "manifest.json): refusing to replace it; choose another --out")
    elif os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out={out} exists and is not a folder")


def prepare_glyphs(out: str, n_classes: int = DEFAULT_CLASSES, size: int = DEFAULT_SIZE,
                   fonts=DEFAULT_FONTS, cache: str | None = None,
                   fonts_dir: str | None = None) -> tuple[dict, bool]:
    """Prepare (or find already prepared) the glyphs folder; returns (manifest, did_work)."""
    specs = [f if isinstance(f, FontSpec) else parse_font(f) for f in fonts]
    names = [s.name for s in specs]
    if len(specs) < 2 or len(set(names)) != len(names):
        raise DataError(f"--fonts: need at least 2 distinct fonts, got {names}")
    if size < 8:
        raise DataError(f"--size={size} must be at least 8")
    if n_classes < 2:
        raise DataError(f"--n_classes={n_classes} must be at least 2")
    if fonts_dir and not os.path.isdir(fonts_dir):
        raise DataError(f"--fonts_dir={fonts_dir} is not a folder")
    out = os.path.abspath(out)
    args = arguments(specs, n_classes, size, fonts_dir)
    manifest = is_prepared(out, args)
    if manifest is not None:
        return manifest, False

    check_replaceable(out)
    start = time.time()
    resolved = resolve_fonts(specs, fonts_dir, cache or default_cache())
    cmaps = [read_cmap(resolved[s.name]["path"], s.face) for s in specs]
    coverage = common_coverage(cmaps)
    if len(coverage) < n_classes:
        raise DataError(f"the fonts {names} have only {len(coverage)} characters of "
                        f"U+{BLOCK[0]:04X}..U+{BLOCK[1]:04X} in common; ask for --n_classes <= "
                        f"{len(coverage)} or drop a font with small coverage")
    renderers = {s.name: Renderer(resolved[s.name]["path"], s.face, size) for s in specs}

    with atomic_folder(out, durable=False) as tmp:  # data that can be made again: no fsync per file
        chosen, rejected = choose_and_render(coverage, renderers, n_classes, tmp)
        width = max(4, len(str(n_classes)))
        fonts_info = []
        for s in specs:
            r = resolved[s.name]
            fonts_info.append({"name": s.name, "style": s.style, "package": r["package"],
                               "version": r["version"], "file": os.path.basename(r["path"]),
                               "face": s.face, "family": renderers[s.name].font.getname()[0],
                               "sha256": _sha256(r["path"])})
        manifest = {"arguments": args, "fonts": fonts_info, "common_coverage": len(coverage),
                    "num_classes": len(chosen), "rejected": rejected,
                    "classes": [{"folder": folder_name(k, cp, width), "code_point": f"U+{cp:04X}",
                                 "char": chr(cp)} for k, cp in enumerate(chosen, 1)]}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, ensure_ascii=False)
        check_replaceable(out)  # again: out may have changed while the glyphs were rendered
    logging.info("glyphs: %d classes x %d fonts (of %d common characters) written to %s in %.1f s",
                 len(chosen), len(specs), len(coverage), out, time.time() - start)
    return manifest, True
