"""Configs ship with the package: names resolve without a checkout, ``remembrall init`` writes
editable copies, and a wheel built from this repository really contains them (issue 8, item 6)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from remembrall.config import load_config
from remembrall.packaged_configs import packaged, resolve, write_copies

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"default", "demo", "text", "text-bench", "continual-bench", "jetson-orin-nano"}


def _env() -> dict[str, str]:
    """The environment for a child python: nothing that would put the checkout on its path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def _run(python: str | Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


# ---- packaged() / resolve() ---------------------------------------------------------------------

def test_packaged_lists_the_shipped_configs_inside_the_package():
    configs = packaged()
    assert EXPECTED <= set(configs)
    pkg_dir = Path(importlib.util.find_spec("remembrall").origin).parent
    for name, path in configs.items():
        assert path.is_file() and path.name == f"{name}.yaml"
        assert path.parent == pkg_dir / "configs"


def test_repo_configs_folder_is_a_link_to_the_packaged_ones():
    """Scripts, docs and tests keep saying configs/demo.yaml in a checkout."""
    link = ROOT / "configs"
    assert link.is_symlink() and os.readlink(link) == os.path.join("remembrall", "configs")
    assert (link / "demo.yaml").read_bytes() == packaged()["demo"].read_bytes()


def test_resolve_a_packaged_name_with_or_without_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing here: only the packaged configs can answer
    assert resolve("demo") == packaged()["demo"]
    assert resolve("demo.yaml") == packaged()["demo"]
    assert resolve("jetson-orin-nano") == packaged()["jetson-orin-nano"]


def test_resolve_an_existing_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.yaml").write_text("out: mine\n")
    (tmp_path / "default").write_text("out: mine too\n")
    assert resolve("demo.yaml") == Path("demo.yaml")
    assert resolve("default") == Path("default")
    assert resolve(str(tmp_path / "demo.yaml")) == tmp_path / "demo.yaml"
    assert resolve("text") == packaged()["text"]  # no such file here: the packaged one


def test_resolve_unknown_name_says_what_exists_and_how_to_get_copies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        resolve("nosuchconfig")
    msg = str(err.value)
    assert msg.startswith("nosuchconfig: ")
    for name in EXPECTED:
        assert name in msg
    assert "remembrall init DIR" in msg
    # a path that is not there is never taken for a packaged name, but the name is suggested
    with pytest.raises(FileNotFoundError, match="give its name, demo"):
        resolve("configs/demo.yaml")


# ---- write_copies() -----------------------------------------------------------------------------

def test_write_copies_all(tmp_path):
    out = tmp_path / "new" / "cfgs"
    written = write_copies(out)
    assert sorted(p.name for p in written) == sorted(f"{n}.yaml" for n in packaged())
    for path in written:
        assert path.parent == out
        assert path.read_bytes() == packaged()[path.stem].read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_write_copies_named_subset(tmp_path):
    written = write_copies(tmp_path, ["demo", "text.yaml"])
    assert written == [tmp_path / "demo.yaml", tmp_path / "text.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.yaml", "text.yaml"]


def test_write_copies_refuses_to_overwrite_and_writes_nothing(tmp_path):
    (tmp_path / "text.yaml").write_text("mine\n")
    with pytest.raises(FileExistsError, match="text.yaml"):
        write_copies(tmp_path, ["demo", "text", "default"])
    assert [p.name for p in tmp_path.iterdir()] == ["text.yaml"]  # demo.yaml was not written first
    assert (tmp_path / "text.yaml").read_text() == "mine\n"
    with pytest.raises(FileNotFoundError, match="nosuch"):
        write_copies(tmp_path / "x", ["demo", "nosuch"])
    assert not (tmp_path / "x").exists()


def test_write_copies_overwrite(tmp_path):
    (tmp_path / "text.yaml").write_text("mine\n")
    write_copies(tmp_path, ["text"], overwrite=True)
    assert (tmp_path / "text.yaml").read_bytes() == packaged()["text"].read_bytes()


# ---- the command line ---------------------------------------------------------------------------

def test_cli_init_writes_configs_that_load(tmp_path):
    r = _run(sys.executable, "-m", "remembrall", "init", "cfgs", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    written = sorted((tmp_path / "cfgs").glob("*.yaml"))
    assert {p.stem for p in written} == set(packaged())
    assert "remembrall run cfgs/demo.yaml" in r.stdout
    for path in written:
        load_config(path)  # every copy is a valid config as written
    again = _run(sys.executable, "-m", "remembrall", "init", "cfgs", "demo", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr, again.stderr
    forced = _run(sys.executable, "-m", "remembrall", "init", "--force", "cfgs", "demo", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr


# ---- the wheel ----------------------------------------------------------------------------------

def _copy_sources(dst: Path) -> Path:
    """The repository's build inputs, copied: building in the checkout would leave build/ behind,
    and a stale build/lib there could put deleted modules into the wheel."""
    dst.mkdir()
    for item in ROOT.iterdir():
        if item.is_file() and not item.is_symlink():
            shutil.copy2(item, dst / item.name)
    shutil.copytree(ROOT / "remembrall", dst / "remembrall",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    return dst


def test_wheel_ships_the_configs_and_init_works_without_a_checkout(tmp_path):
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("pip") is None:
        pytest.skip("pip and setuptools are needed to build the wheel offline (--no-build-isolation)")
    src = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    r = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", "-q", "-w", str(wheels), str(src), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = wheels.glob("remembrall_stream-*.whl")

    venv = tmp_path / "venv"
    r = _run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    py = venv / "bin" / "python"
    r = _run(py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
             str(wheel), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # the dependencies (PyYAML, torch, …) from this interpreter's site-packages, without downloading;
    # a path line in a .pth adds the folder only: its own .pth files (the editable install) are not run
    purelib = _run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
    (Path(purelib.stdout.strip()) / "dev-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"  # no configs/ folder reachable from here
    work.mkdir()
    r = _run(py, "-c", "import remembrall, yaml; print(remembrall.__file__)", cwd=work)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve().is_relative_to(venv.resolve()), r.stdout  # the wheel's copy

    r = _run(py, "-m", "remembrall", "init", "cfgs", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.stem for p in (work / "cfgs").glob("*.yaml")} == EXPECTED
    assert "remembrall run cfgs/demo.yaml" in r.stdout

    r = _run(py, "-c", "from remembrall.config import load_config; from remembrall.packaged_configs import "
             "resolve; p = resolve('demo'); c = load_config(p); print(p); print(c.sources[0].uri)", cwd=work)
    assert r.returncode == 0, r.stderr
    path, uri = r.stdout.split()
    assert Path(path).resolve().is_relative_to(venv.resolve()) and path.endswith("configs/demo.yaml")
    assert uri == "builtin:bigbuckbunny"

    r = _run(py, "-m", "remembrall", "run", "nosuchconfig", cwd=work)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "nosuchconfig" in r.stderr and "configuration error" in r.stderr
    for name in EXPECTED:
        assert name in r.stderr
