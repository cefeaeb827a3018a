#!/usr/bin/env python3
"""Writes docs/coming-from/*.md from templates/*.md.in, replacing each
`{{FILE#NAME}}` with the Swift between `// guide: NAME` and `// end guide` in
FILE (a path from the package root), dedented. The snippets live in tests that
run with `swift test`; GuideSnippetTests checks that every Swift block of every
guide still appears in the sources, so a guide cannot drift from code that runs.
Run it after changing a guide or its snippets: python3 docs/coming-from/make_guides.py
"""
import re
import textwrap
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def snippet(path, name):
    lines = (ROOT / path).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"// guide: {name}")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "// end guide")
    return textwrap.dedent("\n".join(lines[start + 1 : end])).strip("\n")


for template in sorted((HERE / "templates").glob("*.md.in")):
    text = template.read_text()
    text = re.sub(r"\{\{([^#}]+)#([^}]+)\}\}", lambda m: snippet(m.group(1), m.group(2)), text)
    (HERE / template.name[: -len(".in")]).write_text(text)
    print("wrote", template.name[: -len(".in")])
