"""Smoke test of the rendered book in headless Chromium: math typeset by the local MathJax, figures
loaded, chapters linked, and nothing fetched from outside the machine. `make test` builds the book first."""
import functools, http.server, threading
from pathlib import Path
import pytest, yaml
from conftest import IN_CI, ROOT, _missing, require_chromium

HTML = ROOT / "_build" / "html"
CHAPTER = "04_sgd"  # a chapter with display math and figures


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def book_url():
    if not (HTML / "index.html").exists():
        if IN_CI: pytest.fail("the book was not built: `make test` runs `make book` first")
        pytest.skip("the book is not built: run `make book` first")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(HTML)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def load(browser, url):
    "Open `url`, recording every request, and wait until MathJax has finished typesetting."
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="load")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
    page.evaluate("() => MathJax.startup.promise")
    return page, requests


def images_state(page):
    return page.evaluate("() => [...document.images].map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}))")


def assert_local(requests, base):
    outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside the book: {outside[:5]}"


def test_index_links_every_chapter(browser, book_url):
    page, requests = load(browser, f"{book_url}/index.html")
    hrefs = set(page.evaluate("() => [...document.querySelectorAll('a')].map(a => a.getAttribute('href'))"))
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for ch in (c["file"] for part in toc["parts"] for c in part["chapters"]):
        assert f"{ch}.html" in hrefs, f"index does not link {ch}"
    assert page.locator("mjx-container").count() > 0, "the index's math was not typeset"
    assert all(i["ok"] for i in images_state(page))
    assert_local(requests, book_url)


def test_chapter_typesets_math_and_shows_figures(browser, book_url):
    page, requests = load(browser, f"{book_url}/{CHAPTER}.html")
    assert page.locator("mjx-container").count() > 5, "the chapter's math was not typeset"
    assert page.locator("mjx-container[display='true']").count() > 0, "no display equation was typeset"
    images = images_state(page)
    assert len(images) >= 2, "the chapter shows fewer than two figures"
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"images did not load: {broken}"
    body = page.inner_text("article")
    assert "#|" not in body, "an nbdev directive is visible"
    assert_local(requests, book_url)


# What a reader sees, measured on every page (tests/bookpages.py): the budgets of the book's style guide.
import bookpages


@pytest.fixture(scope="module")
def pages(browser, book_url):
    "Every page of the book as Chromium lays it out at 1280 px."
    return bookpages.measure_book(browser, HTML, width=1280)


def test_code_fits_the_column(pages):
    total = bookpages.summary(pages)
    worst = sorted(((r["n_wide"], n) for n, r in pages.items()), reverse=True)[:3]
    assert total["wide_pct"] <= 2.0, (f"{total['wide']} of {total['lines']} code lines are wider than "
                                      f"{bookpages.COLUMN} characters; most on {worst}")


def test_no_show_doc_call_is_shown(pages):
    shown = {n: r["showdoc"] for n, r in pages.items() if r["showdoc"]}
    assert not shown, f"show_doc(...) calls shown as code: {shown}"


def test_math_typesets_without_errors_or_literal_backslashes(pages):
    errors = {n: r["merror"] for n, r in pages.items() if r["merror"]}
    literal = {n: r["backslash"] for n, r in pages.items() if r["backslash"]}
    assert not errors, f"MathJax errors: {errors}"
    assert not literal, f"equations showing a literal backslash (an escaped \\_ in \\text?): {literal}"


def test_figures_are_shown_near_full_size(pages):
    total = bookpages.summary(pages)
    small = [(n, f["src"], round(f["shown"] / f["natural"], 2))
             for n, r in pages.items() for f in r["figures"] if bookpages.small(f)]
    assert total["small_pct"] <= 10.0, f"{len(small)} of {total['figures']} figures shown below 60%: {small}"


def test_on_a_phone_display_math_scrolls_inside_the_column(browser, book_url):
    phone = bookpages.measure_book(browser, HTML, width=390, names=["04_sgd", "07_adam", "10_lr_scheduler"])
    spill = {n: r["overflow"] for n, r in phone.items() if r["overflow"]}
    assert not spill, f"display equations run past the column at 390 px: {spill}"


def test_chapters_are_numbered_and_chapter_references_are_links(browser, book_url):
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{book_url}/07_adam.html", wait_until="load")
    bookpages.wait_for_math(page)
    sidebar = page.eval_on_selector_all("nav.bd-links a.reference", "as => as.map(a => a.innerText)")
    assert any(t.split(".")[0].strip().isdigit() for t in sidebar), f"the sidebar is not numbered: {sidebar[:5]}"
    refs = page.eval_on_selector_all("a span.std-numref", "s => s.map(x => x.innerText)")
    assert refs and all(r.lower().startswith("chapter ") and r.split()[1][0].isdigit() for r in refs), refs
    text = page.inner_text("article")
    assert "%s" not in text and "{numref}" not in text, "an unresolved chapter reference is shown"
    assert not errors, f"the browser console shows errors: {errors}"
    page.close()


def test_screenshots_for_review(browser, book_url):
    """Viewport screenshots of three chapters at 1280 px and of chapter 07 at 390 px, around their first figure
    or display equation, written to _build/screenshots/ for a reviewer (the numbers are asserted above)."""
    out = ROOT / "_build" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    for name, width, what in [("04_sgd", 1280, "img"), ("07_adam", 1280, "img"),
                              ("10_lr_scheduler", 1280, "img"), ("07_adam", 390, "mjx-container[display='true']")]:
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.goto(f"{book_url}/{name}.html", wait_until="load")
        bookpages.wait_for_math(page)
        top = page.locator(f"article {what}").first.evaluate("e => e.getBoundingClientRect().top + window.scrollY")
        page.evaluate(f"window.scrollTo(0, {max(0, top - 250)})")
        path = out / f"{name}_{width}.jpg"
        page.screenshot(path=str(path), type="jpeg", quality=70)
        page.close()
        assert path.stat().st_size > 10_000, f"{path} is (nearly) empty"
