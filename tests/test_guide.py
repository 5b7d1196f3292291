"The guide pages: the optimizer table is complete and measured; the bibliography's links are well-formed."
import re
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import numpy as np
import pytest

import minima.optim
from minima.nn import Parameter
from minima.optim.adam import Adam
from minima.optim.optimizer import Optimizer
from minima.book.guide import (
    glance_table,
    measure,
    optimizer_classes,
    state_bytes,
)

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def markdown(stem):
    nb = nbformat.read(NBS / f"{stem}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.fixture(scope="module")
def rows():
    return measure()


def table_rows(table):
    "Cells of the body rows of a Markdown table."
    lines = table.splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def exported_optimizers():
    "Written here independently of minima.book.guide: every Optimizer class in `minima.optim.__all__`."
    found = set()
    for name in minima.optim.__all__:
        obj = getattr(minima.optim, name)
        if isinstance(obj, type) and issubclass(obj, Optimizer) and obj is not Optimizer:
            found.add(obj.__name__)
    return found


def test_the_table_names_every_exported_optimizer_once(rows):
    names = [r[0].strip("`") for r in table_rows(glance_table(rows))]
    assert len(names) == len(set(names))
    assert set(names) == exported_optimizers()
    assert {"Adam", "SGD", "LBFGS", "Lookahead", "Adafactor"} <= set(names)
    assert {c.__name__ for c in optimizer_classes()} == set(names)


def test_the_page_shows_the_tables():
    nb = nbformat.read(NBS / "97_choosing.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for call in ("glance_table(rows)", "defaults_table(rows)", "use_table(rows)"):
        assert f"Markdown({call})" in code


def direct_state_bytes(cls):
    "One step on a float32 64 x 64 parameter, then the bytes of every array its state holds, per element."
    rng = np.random.default_rng(1)
    p = Parameter(rng.standard_normal((64, 64)).astype(np.float32))
    if cls.__name__ == "Lookahead":
        opt = cls(Adam([p]))
    elif cls.__name__ == "GD":
        opt = cls([p], lr=1e-3)
    else:
        opt = cls([p])
    if hasattr(opt, "train"):
        opt.train()

    def closure():
        p.grad = (p.data - 1).astype(np.float32)
        return float(np.sum((p.data - 1) ** 2))

    closure()
    opt.step(closure)
    total, todo = 0, list(opt.state[p].values())
    while todo:
        x = todo.pop()
        if isinstance(x, np.ndarray):
            total += x.nbytes
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
    return total / p.data.size


def test_the_state_column_is_a_direct_measurement(rows):
    shown = {r[0].strip("`"): r[3] for r in table_rows(glance_table(rows))}
    for row in rows:
        direct = direct_state_bytes(row.cls)
        if row.name != "LBFGS":  # its history depends on the problem
            assert row.state_bytes == pytest.approx(direct, rel=1e-12), row.name
        assert shown[row.name].split(" ")[0] == f"{row.state_bytes:.3g}"
    # and against the closed forms of a few
    by = {r.name: r.state_bytes for r in rows}
    assert by["Adam"] == 8 + 8 / 4096 and by["SGD"] == 0 and by["Lion"] == 4
    assert by["Adafactor"] == ((64 + 64) * 4 + 8) / 4096


def test_lbfgs_state_grows_with_its_history():
    # L-BFGS stores two float32 vectors per iteration of its history (and a few more)
    assert 8 * 2 <= state_bytes(minima.optim.LBFGS) <= 8 * 20 + 16


def test_the_scale_column_tells_sgd_from_adam(rows):
    by = {r.name: r.scale_change for r in rows}
    assert by["SGD"] > 5 and by["GD"] > 5  # ten times the loss, ten times the step
    assert by["Adam"] < 1e-6 and by["Lion"] == 0 and by["Rprop"] == 0


BIB_ENTRY = re.compile(r"^\(bib-([a-z]+\d{4}[a-z]?)\)=\n(.+)$", re.M)
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def bibliography():
    text = markdown("97b_notation")
    return {key: entry for key, entry in BIB_ENTRY.findall(text)}


def test_bibliography_links_are_https_and_well_formed():
    entries = bibliography()
    assert len(entries) >= 30
    for key, entry in entries.items():
        links = LINK.findall(entry)
        assert len(links) == 1, (key, links)
        shown, url = links[0]
        parts = urlparse(url)
        assert parts.scheme == "https" and parts.netloc and " " not in url, url
        assert shown == url.split("//", 1)[1]
        if parts.netloc == "arxiv.org":
            assert re.fullmatch(r"/abs/\d{4}\.\d{4,5}", parts.path), url
        if parts.netloc == "doi.org":
            assert re.fullmatch(r"/10\.\d{4,9}/[^\s()]+", parts.path), url
        year = re.search(r"\d{4}", key).group()
        assert f"({year})" in entry, (key, entry)


def test_every_arxiv_paper_a_chapter_links_is_in_the_bibliography():
    listed = {u for e in bibliography().values() for _, u in LINK.findall(e)}
    for nb in sorted(NBS.glob("*.ipynb")):
        if nb.stem == "97b_notation":
            continue
        text = "\n".join(c.source for c in nbformat.read(nb, as_version=4).cells)
        for arxiv in re.findall(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}", text):
            assert arxiv in listed, f"{nb.stem} links {arxiv}, not in the bibliography"


def test_glossary_entries_link_to_existing_chapters():
    text = markdown("97b_notation")
    glossary = re.search(r"```\{glossary\}\n(.*?)\n```", text, re.S).group(1)
    terms = re.findall(r"^(\S.*)\n  (.+)$", glossary, re.M)
    assert len(terms) >= 25
    for term, definition in terms:
        stems = re.findall(r"<chapter-([\w]+)>", definition) + re.findall(r"\{doc\}`([\w]+)`", definition)
        assert stems, f"{term}: no link to a chapter"
        for stem in stems:
            assert (NBS / f"{stem}.ipynb").exists(), (term, stem)
