"""CI's packaging checks, run by `.ci/run` from the repository root.

    python3 .ci/package_checks.py floors
        `name==X` for every `name>=X` floor in setup.cfg's install_requires and
        its `optimize` extra, on one line (standard library only: it runs before
        any environment exists).
    python .ci/package_checks.py check DIST_DIR
        the sdist and the wheel in DIST_DIR hold what they must: the wheel every
        file of keras_kd/ and nothing else, with setup.cfg's requirements, extras,
        Python floor and console script in its metadata; the sdist every file git
        tracks, and setup.cfg. Needs `packaging` (the `build` tool
        brings it).

setup.cfg is the one source of the floors: pip reads it through setuptools, and
this file reads it with configparser, as setuptools does.
"""

import configparser
import email
import fnmatch
import os
import re
import subprocess
import sys
import tarfile
import zipfile

SETUP_CFG = "setup.cfg"
FLOOR_EXTRAS = ("optimize",)
PACKAGE = "keras_kd"
_FLOOR = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*")


def read_setup_cfg(path=SETUP_CFG):
    """setup.cfg as setuptools reads it (`#` and `;` start a comment line)."""
    config = configparser.ConfigParser(interpolation=None)
    if not config.read(path, encoding="utf-8"):
        sys.exit(f"CI: {path} not found (run from the repository root).")
    return config


def _lines(value):
    return [line.strip() for line in value.splitlines() if line.strip()]


def requirements(config):
    """`({"": install_requires, extra: [...], ...})` as written in setup.cfg."""
    found = {"": _lines(config.get("options", "install_requires", fallback=""))}
    if config.has_section("options.extras_require"):
        for extra, value in config.items("options.extras_require"):
            found[extra] = _lines(value)
    return found


def floor_pins(config):
    """`name==X` for each `name>=X` of install_requires and FLOOR_EXTRAS.

    A requirement with any other version specifier (or a marker, an extra) stops
    CI: its floor could not be installed, so it would go untested.
    """
    declared = requirements(config)
    pins = []
    for extra in ("", *FLOOR_EXTRAS):
        if extra not in declared:
            sys.exit(f"CI: setup.cfg declares no `{extra}` extra.")
        for requirement in declared[extra]:
            match = _FLOOR.fullmatch(requirement)
            if match:
                pins.append(f"{match[1]}=={match[2]}")
            elif re.search(r"[<>=!~;\[@]", requirement):
                sys.exit(
                    f"CI: cannot read the floor of {requirement!r} in setup.cfg; "
                    "write it as `name>=X`."
                )
    if not pins:
        sys.exit("CI: no `name>=X` floor found in setup.cfg.")
    return pins


def _package_files(root=PACKAGE):
    """Every file under the package directory but Python's caches."""
    files = set()
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in names:
            if not fnmatch.fnmatch(name, "*.py[cod]"):
                files.add(os.path.join(directory, name).replace(os.sep, "/"))
    return files


def _one(dist_dir, pattern):
    matches = [n for n in os.listdir(dist_dir) if fnmatch.fnmatch(n, pattern)]
    if len(matches) != 1:
        sys.exit(f"CI: expected one {pattern} in {dist_dir}, found {matches}.")
    return os.path.join(dist_dir, matches[0])


def _normalized(requirement, extra=""):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parsed = Requirement(requirement)
    marker = str(parsed.marker) if parsed.marker else ""
    if extra:
        marker = f'extra == "{extra}"' + (f" and ({marker})" if marker else "")
    return canonicalize_name(parsed.name), str(parsed.specifier), marker


def _metadata_problems(metadata, config):
    problems = []
    expected = {
        _normalized(r, extra) for extra, rs in requirements(config).items() for r in rs
    }
    written = {_normalized(r) for r in metadata.get_all("Requires-Dist", [])}
    for item in sorted(expected - written):
        problems.append(f"wheel metadata lacks the requirement {item}")
    for item in sorted(written - expected):
        problems.append(f"wheel metadata has a requirement setup.cfg lacks: {item}")
    extras = set(requirements(config)) - {""}
    if set(metadata.get_all("Provides-Extra", [])) != extras:
        problems.append(
            f"wheel extras {metadata.get_all('Provides-Extra')} != setup.cfg's {extras}"
        )
    python = config.get("options", "python_requires")
    if metadata["Requires-Python"] != python:
        problems.append(f"Requires-Python {metadata['Requires-Python']} != {python}")
    return problems


def check_wheel(path, config):
    with zipfile.ZipFile(path) as wheel:
        names = set(wheel.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    problems = [f"wheel lacks {name}" for name in sorted(_package_files() - names)] + [
        f"wheel has {name}, outside {PACKAGE}/"
        for name in sorted(names)
        if not name.startswith((PACKAGE + "/", info + "/"))
    ]
    problems += _metadata_problems(metadata, config)
    scripts = config.get("options.entry_points", "console_scripts")
    for script in _lines(scripts):
        if script.replace(" ", "") not in entry_points.replace(" ", ""):
            problems.append(f"wheel lacks the console script {script!r}")
    return problems, len(names)


def check_sdist(path):
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    with tarfile.open(path) as sdist:
        top = os.path.commonpath(sdist.getnames())
        names = {n[len(top) + 1 :] for n in sdist.getnames()}
    wanted = {n for n in tracked if not n.startswith(".git") and os.path.exists(n)}
    wanted |= {"setup.cfg", "pyproject.toml", "README.md", "PKG-INFO"}
    return [f"sdist lacks {name}" for name in sorted(wanted - names)], len(names)


def main(argv):
    if argv[:1] == ["floors"] and len(argv) == 1:
        print(" ".join(floor_pins(read_setup_cfg())))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        config = read_setup_cfg()
        wheel, sdist = _one(argv[1], "*.whl"), _one(argv[1], "*.tar.gz")
        wheel_problems, wheel_files = check_wheel(wheel, config)
        sdist_problems, sdist_files = check_sdist(sdist)
        for problem in wheel_problems + sdist_problems:
            print("CI:", problem, file=sys.stderr)
        if wheel_problems or sdist_problems:
            return 1
        print(f"{os.path.basename(wheel)}: {wheel_files} files, metadata as setup.cfg")
        print(f"{os.path.basename(sdist)}: {sdist_files} entries, every tracked file")
        return 0
    sys.exit("usage: package_checks.py floors | package_checks.py check DIST_DIR")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
