"""Stanford Online Products from its official lists `Ebay_train.txt` / `Ebay_test.txt` (header
`image_id class_id super_class_id path`); a class is a class_id, classes in class_id order,
labels class_id - 1 remapped to 0..C-1 within each split (algorithm.md 3.1)."""

from __future__ import annotations

import os

from diva_tf.data.errors import DataError
from diva_tf.data.imagefiles import require_dir

LIST_FILES = ("Ebay_train.txt", "Ebay_test.txt")
_LIST_DIRS = ("", "Info_Files", "Stanford_Online_Products", "Stanford_Online_Products/Info_Files")


def find_lists(data_dir: str) -> str:
    """The folder holding both list files."""
    require_dir(data_dir, "Stanford_Online_Products folder (holding Ebay_train.txt)")
    for sub in _LIST_DIRS:
        folder = os.path.join(data_dir, sub)
        if all(os.path.isfile(os.path.join(folder, f)) for f in LIST_FILES):
            return folder
    raise DataError(f"--data_dir={data_dir}: {' and '.join(LIST_FILES)} not found in it or in "
                    f"{', '.join(s for s in _LIST_DIRS if s)}")


def read_list(path: str) -> list[tuple[int, str]]:
    """(class_id, relative image path) rows of an Ebay_*.txt file."""
    rows = []
    with open(path) as f:
        header = f.readline().split()
        if header[:2] != ["image_id", "class_id"] or "path" not in header:
            raise DataError(f"{path}: expected the header 'image_id class_id super_class_id path', "
                            f"got {' '.join(header)!r}")
        col = header.index("path")
        for line_no, line in enumerate(f, start=2):
            fields = line.split()
            if not fields:
                continue
            try:
                rows.append((int(fields[1]), fields[col]))
            except (IndexError, ValueError):
                raise DataError(f"{path}:{line_no}: malformed line {line.strip()!r}") from None
    return rows


def image_root(list_dir: str, rel_path: str) -> str:
    """Where the listed paths are relative to: the lists' folder or its parent (Info_Files/)."""
    for root in (list_dir, os.path.dirname(os.path.abspath(list_dir))):
        if os.path.exists(os.path.join(root, rel_path)):
            return root
    raise DataError(f"{os.path.join(list_dir, rel_path)} (first image of the list) not found, "
                    "nor next to the list folder: is the dataset fully extracted?")


def group_by_class(rows: list[tuple[int, str]], root: str) -> list:
    """ClassList in ascending class_id order, images in list order."""
    by_class: dict[int, list[str]] = {}
    for class_id, rel in rows:
        by_class.setdefault(class_id, []).append(os.path.join(root, rel))
    return [(str(cid), by_class[cid]) for cid in sorted(by_class)]


def load(options):
    list_dir = find_lists(options.data_dir)
    splits = []
    for name in LIST_FILES:
        rows = read_list(os.path.join(list_dir, name))
        if not rows:
            raise DataError(f"{os.path.join(list_dir, name)} lists no image")
        splits.append(group_by_class(rows, image_root(list_dir, rows[0][1])))
    return tuple(splits)
