"""What an installed (not editable) fxpga holds: every package, the shipped weights and the
simulation models."""

import fnmatch
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_directory_is_a_package():
    found = set(find_packages(ROOT, include=["fxpga*"]))
    with_code = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "fxpga").rglob("*")
        if d.is_dir() and any(d.glob("*.py"))
    } | {"fxpga"}
    assert with_code <= found, f"not found by setuptools (no __init__.py?): {with_code - found}"


def test_package_data_covers_the_shipped_files():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = cfg["tool"]["setuptools"]["package-data"]
    shipped = [
        *(ROOT / "fxpga/quant/models").iterdir(),
        *(ROOT / "fxpga/boards/sim_models").iterdir(),
    ]
    for f in shipped:
        pkg = ".".join(f.parent.parent.relative_to(ROOT).parts)
        rel = f"{f.parent.name}/{f.name}"
        assert any(fnmatch.fnmatch(rel, g) for g in data.get(pkg, [])), f"{f} is not package data"
