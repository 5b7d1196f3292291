"""Static checks of the rendered book: every chapter rendered, no nbdev directive shown, math and
images served from the book itself, no CDN. Usage: python tools/check_book.py _build/html"""
import re, sys
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    yield toc["root"]
    for part in toc.get("parts", []):
        for ch in part["chapters"]: yield ch["file"]


def problems(html_dir):
    html_dir = Path(html_dir)
    if not (html_dir / "_static/mathjax/tex-chtml.js").exists():
        yield "MathJax is not served from _static/mathjax"
    for name in toc_files():
        page = html_dir / f"{name}.html"
        if not page.exists(): yield f"{page} was not rendered"; continue
        text = page.read_text(encoding="utf-8")
        if re.search(r"#\s*\|\s*(export|hide|default_exp|eval|echo)", text): yield f"{page.name} shows an nbdev directive"
        if re.search(r"<script[^>]+src=\"https?://[^\"]*mathjax", text, re.I): yield f"{page.name} loads MathJax from the network"
        if "Traceback (most recent call last)" in text: yield f"{page.name} shows a traceback"
        for src in re.findall(r"<img[^>]+src=\"([^\"]+)\"", text):
            if src.startswith(("http:", "https:")): yield f"{page.name} loads an image from the network: {src}"
            elif not src.startswith("data:") and not (page.parent / src).exists(): yield f"{page.name}: missing image {src}"


if __name__ == "__main__":
    found = list(problems(sys.argv[1] if len(sys.argv) > 1 else "_build/html"))
    for p in found: print("book check:", p)
    if found: sys.exit(1)
    print(f"book check: {len(list(toc_files()))} pages rendered, no directives shown, math and images local")
