"""Render nbs/index.ipynb to README.md (markdown cells as they are, code cells as fenced blocks; `#| hide` cells left out).

nbdev's own `nbdev-readme` needs Quarto, which cannot be installed offline; this keeps README.md generated from the notebook."""
import json
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root/"nbs"/"index.ipynb").read_text(encoding="utf-8"))
parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if not src or src.startswith("#| hide"): continue
    if cell["cell_type"] == "markdown": parts.append(src)
    elif cell["cell_type"] == "code":
        lines = [ln for ln in src.splitlines() if not ln.startswith("#|")]
        parts.append("```python\n" + "\n".join(lines) + "\n```")
out = "\n\n".join(parts) + "\n\n<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n"
(root/"README.md").write_text(out, encoding="utf-8")
