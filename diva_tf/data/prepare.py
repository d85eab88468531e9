"""Prepare a dataset folder once, before training.

    python -m diva_tf.data.prepare emoji --out DIR [--vendors google,twitter,apple,facebook]
                                         [--size 64] [--npm_cache DIR]

    python -m diva_tf.data.prepare glyphs --out DIR [--n_classes 1000] [--size 64]
                                          [--fonts noto_sans,...] [--fonts_dir DIR] [--cache DIR]

Then train with --dataset=emoji --data_dir=DIR (emoji) or --dataset=folder --data_dir=DIR
(glyphs). Rerunning with the same arguments does nothing.
"""

from __future__ import annotations

import argparse
import sys

from absl import flags, logging

from diva_tf.core.cli import reports_errors
from diva_tf.data.emoji_prepare import NPM_CACHE_ENV, SOURCE_SIZE, VENDORS, prepare_emoji
from diva_tf.data.glyphs_prepare import (DEFAULT_CLASSES, DEFAULT_FONTS, DEFAULT_SIZE, FONTS,
                                         prepare_glyphs)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m diva_tf.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    emoji = sub.add_parser("emoji", help="emoji drawings of several vendors (npm emoji-datasource)")
    emoji.add_argument("--out", required=True, help="Folder to write (the later --data_dir).")
    emoji.add_argument("--vendors", default=",".join(VENDORS),
                       help=f"Comma-separated vendors out of {','.join(VENDORS)}.")
    emoji.add_argument("--size", type=int, default=SOURCE_SIZE, help="Output image size in px.")
    emoji.add_argument("--npm_cache", default=None,
                       help=f"Folder of downloaded package tarballs (default ${NPM_CACHE_ENV}, "
                            "else OUT/npm_cache); npm pack runs only for missing ones.")
    glyphs = sub.add_parser("glyphs", help="CJK characters drawn by many typefaces (Debian font "
                                           "packages); a --dataset=folder tree")
    glyphs.add_argument("--out", required=True, help="Folder to write (the later --data_dir).")
    glyphs.add_argument("--n_classes", type=int, default=DEFAULT_CLASSES,
                        help="Characters (classes); the first half in Unicode order train.")
    glyphs.add_argument("--size", type=int, default=DEFAULT_SIZE, help="Output image size in px.")
    glyphs.add_argument("--fonts", default=",".join(DEFAULT_FONTS),
                        help=f"Comma-separated fonts out of {','.join(FONTS)}, or "
                             "name=/path/font.ttf[#face] for any other font file.")
    glyphs.add_argument("--fonts_dir", default=None,
                        help="Find the font files under this folder (e.g. /usr/share/fonts with "
                             "the packages installed) instead of downloading them with apt-get.")
    glyphs.add_argument("--cache", default=None,
                        help="Folder for the downloaded .deb packages (default "
                             "$DIVA_TF_CACHE_DIR/apt, else ~/.cache/diva_tf/apt).")
    return parser.parse_args(argv)


def _glyphs(args) -> tuple[dict, bool]:
    fonts = [f.strip() for f in args.fonts.split(",") if f.strip()]
    return prepare_glyphs(args.out, args.n_classes, args.size, fonts, args.cache, args.fonts_dir)


@reports_errors()
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    flags.FLAGS.mark_as_parsed()  # absl logging without absl flags (argparse parses here)
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()
    if args.dataset == "glyphs":
        manifest, did_work = _glyphs(args)
        state = "prepared" if did_work else "already prepared (same arguments); nothing to do:"
        images = manifest["num_classes"] * len(manifest["fonts"])
        print(f"glyphs {state} {args.out}: {manifest['num_classes']} classes x "
              f"{len(manifest['fonts'])} fonts ({','.join(f['name'] for f in manifest['fonts'])}) "
              f"= {images} images, {manifest['arguments']['size']} px")
        return 0
    vendors = [v.strip() for v in args.vendors.split(",") if v.strip()]
    manifest, did_work = prepare_emoji(args.out, vendors, args.size, args.npm_cache)
    state = "prepared" if did_work else "already prepared (same vendors and size); nothing to do:"
    print(f"emoji {state} {args.out}: {manifest['num_classes']} classes x "
          f"{len(manifest['vendors'])} vendors ({','.join(manifest['vendors'])}), "
          f"{manifest['size']} px")
    return 0


if __name__ == "__main__":
    from diva_tf.core.quiet import quiet_third_party

    quiet_third_party()
    sys.exit(main())
