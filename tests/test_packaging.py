"""The wheel is the whole package: built from the sources, installed with no repository on the path, it runs.

The editable install of requirements.txt puts an import finder on every interpreter's path that
quietly supplies the repository's subpackages to any `sleb` lacking them, so the installed wheel
is run with `python -S` (no site, no finder) and the installed dependencies added by hand.
"""

import ast
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", "results", "tests",
                                       ".pytest_cache", ".ruff_cache", "pruned", "out")


def _modules_in(tree: Path) -> set[str]:
    """Dotted names of every module under `tree`/sleb (packages as their own name)."""
    names = set()
    for path in (tree / "sleb").rglob("*.py"):
        parts = path.relative_to(tree).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _data_files_in(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in (tree / "sleb").rglob("*") if p.suffix in (".yaml", ".json")}


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """Build a wheel from a copy of the sources and install it (no dependencies) into a fresh folder."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, work / "src", ignore=SOURCE_IGNORE)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(work / "src")], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (work / "dist").glob("sleb-*.whl")
    target = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    return wheel, target


def _run_isolated(target: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `python -S ARGS` with the installed wheel first on the path, then the dependencies, never the repo."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), *site.getsitepackages()])
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_wheel_holds_every_module_and_data_file(installed_wheel):
    wheel, target = installed_wheel
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        assert "sleb = sleb.cli:main" in archive.read(entry_points).decode()
    assert _modules_in(target) == _modules_in(ROOT)
    assert _data_files_in(target) == _data_files_in(ROOT)


def test_installed_wheel_runs_cli_and_imports_app(installed_wheel, tiny_model_dir, tmp_path):
    _, target = installed_wheel
    where = _run_isolated(target, ["-c", "import sleb; print(sleb.__file__, sleb.__version__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(target)), f"sleb imported from {where.stdout} instead of the wheel"

    script = target / "bin" / "sleb"
    helped = _run_isolated(target, [str(script), "--help"], tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "prune" in helped.stdout and "heal" in helped.stdout

    info = _run_isolated(target, [str(script), "info", str(tiny_model_dir), "--json"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert '"num_blocks": 6' in info.stdout

    app_imports = sorted({node.module for node in ast.walk(ast.parse((ROOT / "app.py").read_text()))
                          if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sleb")})
    modules = sorted(_modules_in(ROOT) - {"sleb.__main__", "sleb.orders.__main__"})
    code = f"import importlib\nfor name in {app_imports + modules!r}:\n    importlib.import_module(name)\n"
    imported = _run_isolated(target, ["-c", code], tmp_path)
    assert imported.returncode == 0, imported.stderr
