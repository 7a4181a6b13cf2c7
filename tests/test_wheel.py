"""The project as a wheel (not an editable install): built from a copy of the sources, installed
into a fresh venv, run from a directory that is not the checkout. The fresh venv borrows the
development venv's third-party packages (torch, ray, ...) through a .pth line, so nothing is
downloaded; the editable install's finder there is not run (a .pth line adds a path, it does not
make that path a site directory), so `aar_ray` can only come from the wheel."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[1]


def installed_sources(venv: Path) -> Path:
    """The copy of the sources the wheel was built from."""
    return venv.parent / "src"


def run(*command, cwd, timeout=600):
    proc = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, command))}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's folder, a working directory outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # a copy: building in the checkout would leave build/ in it
    source.mkdir()
    shutil.copy(CHECKOUT / "pyproject.toml", source)
    shutil.copytree(CHECKOUT / "conf", source / "conf")
    shutil.copytree(CHECKOUT / "aar_ray", source / "aar_ray", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", source,
        cwd=root)
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    python = venv / "bin" / "python"
    (wheel,) = (root / "dist").glob("aar_ray-*.whl")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel, cwd=root)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return venv, elsewhere


def test_the_installed_package_is_the_wheel_and_carries_its_defaults(installed):
    venv, elsewhere = installed
    probe = ("import aar_ray, aar_ray.resources as r; print(aar_ray.__file__); d = r.conf_dir(); "
             "print(*sorted(str(p.relative_to(d)) for p in d.rglob('*') if p.is_file()))")
    where, shipped = run(venv / "bin" / "python", "-c", probe, cwd=elsewhere).splitlines()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(CHECKOUT)
    copied = installed_sources(venv) / "conf"
    assert shipped.split() == sorted(str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_file())
    assert {"directions.yaml", "prices.yaml", "campaign/laptop.yaml"} <= set(shipped.split())


def test_aar_methods_runs_from_another_directory(installed):
    venv, elsewhere = installed
    out = run(venv / "bin" / "aar", "methods", cwd=elsewhere)
    assert "vanilla_w2s" in out and "parameters:" in out


@pytest.mark.parametrize("default", ["aar_ray.agents.backends:DEFAULT_PRICES_PATH",
                                     "aar_ray.campaign:CONF", "aar_ray.models.presets:PRESET_DIR"])
def test_the_defaults_are_read_from_the_wheel(installed, default):
    venv, elsewhere = installed
    module, name = default.split(":")
    probe = f"from {module} import {name} as p; print(p, p.exists())"
    path, exists = run(venv / "bin" / "python", "-c", probe, cwd=elsewhere).split()
    assert Path(path).is_relative_to(venv) and exists == "True"


def test_a_one_seed_baseline_runs_from_the_wheel(installed, small_home, tmp_path):
    """The main verb end to end: the wheel's `aar` starts a local Ray whose workers import the
    wheel's aar_ray, runs one experiment and records it in the home's MLflow store."""
    venv, elsewhere = installed
    home = tmp_path / "home"
    shutil.copytree(small_home, home)
    out = run(venv / "bin" / "aar", "baseline", "--testbed", "tax-small", "--method", "zero_shot_prior",
              "--seeds", "1", "--home", home, "scorer.baseline_seeds=2", cwd=elsewhere, timeout=900)
    assert "zero_shot_prior" in out and "tax-small" in out, out[-2000:]
    assert (home / "mlflow.db").exists() and not (elsewhere / "mlflow.db").exists()
