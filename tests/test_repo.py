"""Checks of the repository itself: the package is what the notebooks export, the notebooks are
clean, every public name has its API entry, every notebook is in the book, and importing the
optimizers stays light."""
import ast, filecmp, re, shutil, subprocess, sys
from pathlib import Path
import nbformat, pytest, yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(\S+)(.*)$", re.M)


def copy_project(tmp_path):
    "A copy of what nbdev reads: the notebooks, the config, and the package's version file."
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    (tmp_path / "minima").mkdir()
    shutil.copy(ROOT / "minima/__init__.py", tmp_path / "minima/__init__.py")
    return tmp_path


def tree(path):
    return {p.relative_to(path) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_package_is_exactly_what_the_notebooks_export(tmp_path):
    proj = copy_project(tmp_path)
    subprocess.run([sys.executable, "tools/export.py"], cwd=proj, check=True)
    fresh, committed = proj / "minima", ROOT / "minima"
    assert tree(fresh) == tree(committed), f"files differ: {tree(fresh) ^ tree(committed)}; run `make export`"
    stale = [str(f) for f in sorted(tree(fresh)) if not filecmp.cmp(fresh / f, committed / f, shallow=False)]
    assert not stale, f"minima/ is out of date with nbs/ in {stale}; run `make export`"


def test_notebooks_are_clean(tmp_path):
    proj = copy_project(tmp_path)
    subprocess.run([BIN / "nbdev-clean", "--fname", str(proj / "nbs")], cwd=proj, check=True)
    dirty = [nb.name for nb in NOTEBOOKS if (proj / "nbs" / nb.name).read_bytes() != nb.read_bytes()]
    assert not dirty, f"notebooks not clean: {dirty}; run `make export` (it runs nbdev-clean)"


def exported_public_defs(nb):
    for cell in nb.cells:
        if cell.cell_type != "code": continue
        if not any(d in ("export", "exports") for d, _ in DIRECTIVE.findall(cell.source)): continue
        code = "\n".join(l for l in cell.source.splitlines() if not DIRECTIVE.match(l))
        for node in ast.parse(code).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                yield node.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exported_public_name_has_its_api_entry(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    missing = [n for n in exported_public_defs(nb) if not re.search(rf"show_doc\(\s*{re.escape(n)}\b", code)]
    assert not missing, f"{path.name}: no show_doc cell for {missing}"


def test_every_notebook_is_in_the_book():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {toc["root"]} | {ch["file"] for part in toc["parts"] for ch in part["chapters"]}
    assert listed == {nb.stem for nb in NOTEBOOKS}


def test_importing_the_optimizers_is_light():
    probe = ("import sys, time; t = time.perf_counter(); import minima.optim; dt = time.perf_counter() - t; "
             "print(dt, *(m in sys.modules for m in ('matplotlib', 'torch', 'numba')))")
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(3)]
    assert all(r[1:] == ["False"] * 3 for r in runs), "import minima.optim pulled in matplotlib, torch or numba"
    assert min(float(r[0]) for r in runs) < 0.3, f"import minima.optim took {min(float(r[0]) for r in runs):.3f}s"


def test_no_submodule_is_shadowed():
    "A name re-exported by a package must not hide one of its modules (`minima.optim.sgd` stays the module)."
    import importlib, inspect, pkgutil, minima
    for info in pkgutil.walk_packages(minima.__path__, "minima."):
        parent, _, leaf = info.name.rpartition(".")
        attr = getattr(importlib.import_module(parent), leaf, None)
        assert attr is None or inspect.ismodule(attr), f"{info.name} is shadowed by {attr!r}"
