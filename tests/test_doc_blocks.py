"""The Markdown block extractor of the doc tests, on hand-written documents."""

from __future__ import annotations

import pytest

from doc_blocks import blocks, parse_options

DOC = """# Title

```bash
echo one
```

Text.
<!-- doctest: slow; expect R@1 0\\.\\d+ -->
```python
print("two")
```

```text
not code
```

  <!-- doctest: background http://127.0.0.1:8501/v1/models/diva -->
  ```sh
  python -m diva_tf.serve &
  ```
"""


def test_blocks_options_and_indentation():
    found = blocks("doc.md", DOC)
    assert [(b.line, b.kind, b.code) for b in found] == [
        (3, "bash", "echo one\n"), (9, "python", 'print("two")\n'),
        (18, "bash", "python -m diva_tf.serve &\n")]
    assert found[0].options == {}
    assert found[1].options == {"slow": True, "expect": r"R@1 0\.\d+"}
    assert found[2].options == {"background": "http://127.0.0.1:8501/v1/models/diva"}
    assert found[1].where == "doc.md:9"


def test_bad_annotations_and_fences():
    with pytest.raises(ValueError, match="unknown doctest option 'slwo'"):
        parse_options("slwo")
    with pytest.raises(ValueError, match="doc.md:1: unclosed code fence"):
        blocks("doc.md", "```bash\necho\n")
    assert parse_options("skip (needs Docker)") == {"skip": "(needs Docker)"}
    assert parse_options("skip (a; b); slow") == {"skip": "(a; b)", "slow": True}
