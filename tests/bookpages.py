"""What a reader sees on a page of the built book, measured in headless Chromium.

Used by tests/test_book.py (which asserts the book's budgets) and on its own to print the counts:
`python tests/bookpages.py _build/html [--width 1280]`.
"""
import functools, http.server, sys, threading
from pathlib import Path

COLUMN = 80  # characters a code line may take in the book's column

# One pass over the page: code lines as shown, API calls shown as code, MathJax errors,
# backslashes typeset literally (an escaped `\_` inside \texttt), and figures' display ratio.
MEASURE_JS = """(column) => {
  const article = document.querySelector('article') || document.body;
  const code = [...article.querySelectorAll('div.highlight pre')]
    .filter(pre => !pre.closest('.cell_output'));
  const lines = code.flatMap(pre => pre.textContent.replace(/\\n$/, '').split('\\n'));
  const wide = lines.filter(l => l.length > column);
  const showdoc = code.filter(pre => pre.closest('.cell_input') &&
                                    pre.textContent.includes('show_doc('));
  const merror = article.querySelectorAll('mjx-merror').length;
  const backslash = [...article.querySelectorAll('mjx-container')]
    .filter(m => m.querySelector('mjx-c.mjx-c5C')).length;
  const figures = [...article.querySelectorAll('img')]
    .filter(i => i.naturalWidth > 0 && !i.closest('details:not([open])'))
    .map(i => ({src: i.getAttribute('src'), natural: i.naturalWidth,
                shown: i.getBoundingClientRect().width}));
  // display math wider than the column must scroll inside it, not be cut or spill out
  const wideMath = [...article.querySelectorAll('mjx-container[display="true"]')]
    .filter(m => m.scrollWidth > m.clientWidth + 1 ||
                 m.getBoundingClientRect().right > article.getBoundingClientRect().right + 1);
  const overflow = wideMath.filter(m =>
    !['auto', 'scroll'].includes(getComputedStyle(m).overflowX)).length;
  return {lines: lines.length, wide: wide.slice(0, 50), n_wide: wide.length,
          showdoc: showdoc.length, merror, backslash, figures, overflow,
          scrolling: wideMath.length - overflow};
}"""


def measure(page, column=COLUMN):
    "The counts of one loaded page (MathJax finished)."
    return page.evaluate(MEASURE_JS, column)


def wait_for_math(page):
    "Wait until MathJax has typeset the page (pages without math do not load it)."
    if not page.evaluate("() => !!document.querySelector('script[src*=\"mathjax\"]')"): return
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
    page.evaluate("() => MathJax.startup.promise")


@functools.lru_cache(maxsize=None)
def serve(directory):
    "Serve `directory` on a free localhost port (for the life of the process); its base URL."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def small(figure):
    "A figure shown below 60% of its width."
    return figure["shown"] < 0.6 * figure["natural"]


def summary(results):
    "Totals over pages: {page: counts} -> the book's numbers."
    lines = sum(r["lines"] for r in results.values())
    wide = sum(r["n_wide"] for r in results.values())
    figures = [f for r in results.values() for f in r["figures"]]
    return dict(lines=lines, wide=wide, wide_pct=100 * wide / max(lines, 1),
                showdoc=sum(r["showdoc"] for r in results.values()),
                merror=sum(r["merror"] for r in results.values()),
                backslash=sum(r["backslash"] for r in results.values()),
                overflow=sum(r["overflow"] for r in results.values()),
                figures=len(figures), small=sum(map(small, figures)),
                small_pct=100 * sum(map(small, figures)) / max(len(figures), 1))


def measure_book(browser, html_dir, width=1280, names=None):
    base = serve(Path(html_dir).resolve())
    names = names or sorted(p.stem for p in Path(html_dir).glob("[0-9i]*.html") if p.stem != "genindex")
    results = {}
    for name in names:
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(f"{base}/{name}.html", wait_until="load")
        wait_for_math(page)
        results[name] = measure(page)
        page.close()
    return results


if __name__ == "__main__":
    from playwright.sync_api import sync_playwright
    html = sys.argv[1] if len(sys.argv) > 1 else "_build/html"
    width = int(sys.argv[sys.argv.index("--width") + 1]) if "--width" in sys.argv else 1280
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        res = measure_book(b, html, width)
        b.close()
    for name, r in res.items():
        sm = sum(map(small, r["figures"]))
        print(f"{name:22} wide {r['n_wide']:4}/{r['lines']:5}  showdoc {r['showdoc']:3}  merror {r['merror']}"
              f"  backslash {r['backslash']}  overflow {r['overflow']}  small figs {sm}/{len(r['figures'])}")
    print(summary(res))
