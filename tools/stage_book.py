"""Stage the notebooks for jupyter-book.

jupyter-book shows nbdev's `#|` directive lines literally and shows `#| hide` cells, so the book is
built from staged copies: directive lines are stripped and turned into the cell tags jupyter-book
understands. MathJax is copied next to them so the book typesets math with no network.

Usage: python tools/stage_book.py SRC_NBS DEST MATHJAX_ES5_DIR
"""
import re, shutil, sys
from pathlib import Path
import nbformat

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*?)\s*$")

# nbdev directive -> jupyter-book cell tag
TAGS = {
    "hide": "remove-cell",
    "default_exp": "remove-cell",
    "echo: false": "remove-input",
    "output: false": "remove-output",
    "eval: false": "skip-execution",
    "code-fold: true": "hide-input",
}


def directives(source):
    "The directives of a cell (`#| export`, `#| hide`, ...) and its source without them."
    found, kept = [], []
    for line in source.splitlines():
        m = DIRECTIVE.match(line)
        if m: found.append(m.group(1))
        else: kept.append(line)
    return found, "\n".join(kept).strip("\n")


def tags_for(found):
    tags = []
    for d in found:
        key = d if d in TAGS else d.split()[0] if d else ""
        if (tag := TAGS.get(key)) and tag not in tags: tags.append(tag)
    return tags


def stage_notebook(src, dest):
    nb = nbformat.read(src, as_version=4)
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            cells.append(cell); continue
        found, code = directives(cell.source)
        if not code.strip(): continue  # a cell of directives only (e.g. `#| default_exp`)
        cell.source = code
        tags = tags_for(found)
        if tags: cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | set(tags))
        cells.append(cell)
    nb.cells = cells
    nbformat.write(nb, dest)


def stage(src_dir, dest, mathjax):
    dest = Path(dest)
    if dest.exists(): shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for nb in sorted(Path(src_dir).glob("*.ipynb")): stage_notebook(nb, dest / nb.name)
    for cfg in ("_config.yml", "_toc.yml"): shutil.copy(ROOT / cfg, dest / cfg)
    shutil.copy(ROOT / "tools" / "minima_book.py", dest / "minima_book.py")  # the book's Sphinx extension
    shutil.copytree(ROOT / "tools" / "book_static", dest / "book_static")
    # Not under _static/: jupyter-book would add every .js file there as a script.
    shutil.copytree(mathjax, dest / "_mathjax" / "mathjax")
    print(f"staged {len(list(dest.glob('*.ipynb')))} notebooks in {dest}")


if __name__ == "__main__":
    if len(sys.argv) != 4: sys.exit(__doc__)
    stage(*sys.argv[1:])
