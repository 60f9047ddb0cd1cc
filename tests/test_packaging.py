"""The package as setuptools builds it from setup.cfg, and CI's reading of the
floors from the same file (.ci/package_checks.py)."""

import ast
import configparser
import importlib
import importlib.util
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def package_checks():
    spec = importlib.util.spec_from_file_location(
        "package_checks", ROOT / ".ci" / "package_checks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_cfg():
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def test_every_package_directory_has_an_init_so_the_wheel_holds_it():
    # setup.cfg's `packages = find:` finds regular packages only: a directory of
    # modules without __init__.py would be missing from the wheel.
    missing = [
        os.path.relpath(directory, ROOT)
        for directory, subdirs, files in os.walk(ROOT / "keras_kd")
        if "__pycache__" not in directory
        and any(f.endswith(".py") for f in files)
        and "__init__.py" not in files
    ]
    assert missing == []


def test_version_is_a_literal_setuptools_reads_without_importing():
    # setup.cfg's `version = attr: keras_kd.__version__` is read from the source
    # (no TensorFlow in the build environment) only while it is a plain literal.
    assert setup_cfg()["metadata"]["version"].strip() == "attr: keras_kd.__version__"
    tree = ast.parse((ROOT / "keras_kd" / "__init__.py").read_text(encoding="utf-8"))
    versions = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        and isinstance(node.value, ast.Constant)
    ]
    assert len(versions) == 1 and isinstance(versions[0], str)


def test_metadata_lives_in_setup_cfg_not_in_pyproject():
    # A [project] table in pyproject.toml makes setuptools ignore setup.cfg's
    # metadata and dependencies, and CI's floors would no longer be pip's.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "\n[project" not in "\n" + pyproject
    assert setup_cfg()["metadata"]["name"] == "keras-kd"


def test_console_script_names_a_callable():
    (script,) = setup_cfg()["options.entry_points"]["console_scripts"].split("\n")[1:]
    name, target = (part.strip() for part in script.split("="))
    module, attribute = target.split(":")
    assert name == "keras-kd"
    assert callable(getattr(importlib.import_module(module), attribute))


def test_ci_reads_every_floor_of_the_dependencies_and_the_optimize_extra():
    checks = package_checks()
    config = setup_cfg()
    declared = checks.requirements(config)
    floors = [r for r in declared[""] + declared["optimize"] if ">=" in r]
    pins = checks.floor_pins(config)
    assert len(pins) == len(floors) > 0
    for requirement, pin in zip(floors, pins):
        assert pin == requirement.replace(" ", "").replace(">=", "==")


@pytest.mark.parametrize(
    "requirement", ["keras>=3.15,<4", "keras~=3.15", "keras==3.15"]
)
def test_ci_refuses_a_floor_it_cannot_install(tmp_path, requirement):
    (tmp_path / "setup.cfg").write_text(
        "[options]\ninstall_requires =\n    numpy\n    " + requirement + "\n"
        "[options.extras_require]\noptimize =\n    tf-keras>=2.20.1\n"
    )
    checks = package_checks()
    with pytest.raises(SystemExit, match="cannot read the floor"):
        checks.floor_pins(checks.read_setup_cfg(tmp_path / "setup.cfg"))
