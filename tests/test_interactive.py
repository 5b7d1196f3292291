"""The book's interactive figures (minima.book.interactive): the paths are the optimizer's, the page embeds
plotly.js (no network), and moving a slider shows the path of the new values. The browser tests run on a
standalone page, and on chapter 04 of the built book when it is built (as tests/test_book.py)."""
import functools, http.server, json, re, threading
import numpy as np
import pytest
from conftest import IN_CI, ROOT, _missing, require_chromium
from minima.book.objectives import stretched_paraboloid
from minima.book.pictures import trajectory
from minima.optim.sgd import SGD
from minima.book.interactive import sweep_paths, path_explorer, _path_data

GRID = dict(lr=np.array([0.05, 0.2, 0.45]), momentum=np.array([0.0, 0.5, 0.9]))
START = [-7.0, 2.0]


def make(ps, lr, momentum):
    return SGD(ps, lr=lr, momentum=momentum)


@pytest.fixture(scope="module")
def paths():
    return sweep_paths(make, stretched_paraboloid, START, 30, GRID)


@pytest.fixture(scope="module")
def plotly():
    try: import plotly
    except ImportError: _missing("plotly", "install it with `pip install plotly` (the dev extras)")
    return plotly


def test_sweep_paths_are_the_optimizers_paths(paths):
    assert paths.shape == (3, 3, 31, 2)
    for i, lr in enumerate(GRID["lr"]):
        for j, mu in enumerate(GRID["momentum"]):
            expected, _ = trajectory(lambda ps: make(ps, lr, mu), stretched_paraboloid, START, 30)
            np.testing.assert_array_equal(paths[i, j], expected)
    assert not np.array_equal(paths[0, 0], paths[2, 2])


def test_path_data_cuts_points_far_outside_the_window():
    path = np.array([[1.0, 2.0], [100.0, 0.0], [np.nan, 0.0], [-1.23456, 0.5]])
    xs, ys = _path_data(path, stretched_paraboloid.domain)
    assert xs == [1.0, None, None, -1.235] and ys == [2.0, None, None, 0.5]


def test_path_explorer_refuses_paths_that_do_not_match_the_grid(paths, plotly):
    with pytest.raises(ValueError, match="do not match"):
        path_explorer(stretched_paraboloid, paths[:2], GRID, "Momentum")


def _explorer_html(paths, **kwargs):
    return path_explorer(stretched_paraboloid, paths, GRID, "Momentum", start=(1, 2),
                         div_id="explorer", **kwargs).data


def test_the_html_embeds_plotly_and_every_path(paths, plotly):
    html = _explorer_html(paths)
    assert not re.search(r"<script[^>]*\bsrc=", html), "the figure loads a script from elsewhere"
    assert len(html) > 3_000_000  # plotly.js is inside (the browser tests: no request leaves)
    assert 'id="explorer"' in html and "plotly_sliderchange" in html
    data = json.loads(re.search(r"const paths = (\[.*?\]), captions", html, re.S).group(1))
    assert len(data) == 3 and len(data[0]) == 3
    np.testing.assert_allclose(np.array(data[2][1]).T, paths[2, 1], atol=6e-4)  # rounded to 3 digits
    small = _explorer_html(paths, include_plotlyjs=False)
    assert len(small) < len(html) - 3_000_000  # a second figure on a page can leave plotly.js out




class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


def serve(directory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def open_figure(browser, url, div_id):
    "Load `url`, recording requests and errors; wait until plotly has drawn the figure `div_id`."
    page = browser.new_page(viewport=dict(width=1280, height=900))
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.wait_for_selector(f"#{div_id} .main-svg", timeout=30_000)
    page.locator(f"#{div_id}").scroll_into_view_if_needed()
    return page, requests, errors


def shown_path(page, div_id):
    return page.evaluate(f"() => {{ const d = document.getElementById('{div_id}').data[1];"
                         " return [Array.from(d.x), Array.from(d.y)]; }")


def actives(page, div_id):
    return page.evaluate(f"() => document.getElementById('{div_id}').layout.sliders.map(s => s.active)")


def move_slider(page, div_id, k, fraction):
    "Click the `k`th slider's rail at `fraction` of its length, as a reader would."
    rail = page.locator(f"#{div_id} .slider-container .slider-rail-touch-rect").nth(k)
    box = rail.bounding_box()
    page.mouse.click(box["x"] + fraction * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_timeout(300)


def assert_local(requests, base):
    outside = [u for u in requests if not u.startswith((base, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside: {outside[:5]}"


def test_the_sliders_choose_the_path_offline(browser, paths, plotly, tmp_path):
    (tmp_path / "figure.html").write_text(f"<html><body><div style='width:688px'>{_explorer_html(paths)}"
                                          "</div></body></html>")
    server, base = serve(tmp_path)
    try:
        page, requests, errors = open_figure(browser, f"{base}/figure.html", "explorer")
        assert actives(page, "explorer") == [1, 2]
        np.testing.assert_allclose(np.array(shown_path(page, "explorer")).T, paths[1, 2], atol=6e-4)
        move_slider(page, "explorer", 0, 0.99)  # lr: the last value
        move_slider(page, "explorer", 1, 0.01)  # momentum: the first
        assert actives(page, "explorer") == [2, 0]
        np.testing.assert_allclose(np.array(shown_path(page, "explorer")).T, paths[2, 0], atol=6e-4)
        title = page.evaluate("() => document.querySelector('#explorer .gtitle').textContent")
        assert "lr=0.45" in title and "momentum=0" in title
        assert not errors, errors
        assert_local(requests, base)
        page.close()
    finally:
        server.shutdown()


HTML = ROOT / "_build" / "html"


def test_chapter_04_of_the_built_book_has_the_explorer(browser):
    if not (HTML / "04_sgd.html").exists():
        if IN_CI: pytest.fail("the book was not built: `make test` runs `make book` first")
        pytest.skip("the book is not built: run `make book` first")
    server, base = serve(HTML)
    try:
        page, requests, errors = open_figure(browser, f"{base}/04_sgd.html", "momentum-explorer")
        remote = page.evaluate("() => [...document.scripts].map(s => s.src).filter(s => s && !s.startsWith(location.origin))")
        assert not remote, f"scripts from elsewhere: {remote}"
        before, active = shown_path(page, "momentum-explorer"), actives(page, "momentum-explorer")
        move_slider(page, "momentum-explorer", 0, 0.99)
        after = actives(page, "momentum-explorer")
        assert after[0] != active[0] and after[1] == active[1]
        assert shown_path(page, "momentum-explorer") != before, "the path did not change with the slider"
        assert not errors, errors
        assert_local(requests, base)
        page.close()
    finally:
        server.shutdown()
