"""A Sphinx extension for the book (staged next to the notebooks by tools/stage_book.py).

- jupyter-book 1 registers sphinx-thebe's configuration script twice on every page, and the browser logs
  "THEBE_JS_URL has already been declared"; the book has no live kernels, so thebe's scripts are dropped.
- Display math scrolls sideways instead of running out of the column (on a phone in particular), and code
  cells keep the column's width (see book_static/minima.css).
"""
from pathlib import Path

STATIC = Path(__file__).parent / "book_static"


def _is_thebe(script):
    body = getattr(script, "attributes", {}).get("body", "")
    return "thebe" in str(script).lower() or "THEBE" in body


def drop_thebe(app, pagename, templatename, context, doctree):
    if "script_files" in context:
        context["script_files"] = [s for s in context["script_files"] if not _is_thebe(s)]


def add_static(app):
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("builder-inited", add_static)
    app.connect("html-page-context", drop_thebe, priority=900)
    app.add_css_file("minima.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
