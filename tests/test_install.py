"""kvmigrate installs as a tool: a wheel built from the checkout, installed into a fresh venv
(its build backend as pip fetches it; its dependencies come from the test environment's site-packages through a .pth
file), runs `kvmigrate --version` and `kvmigrate setup --dry-run` from outside the checkout,
with the schema files read from inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_built_wheel_runs_from_a_fresh_venv(tmp_path: Path, pg_url: str) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("kvmigrate-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    # the dependencies, without the checkout's own (editable) kvmigrate: a path in a .pth file
    # is added to sys.path, but that folder's own .pth files (the editable finder) are not run
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVMIGRATE_", "DATABASE_URL", "PYTHON"))}
    where = subprocess.run([py, "-c", "import kvmigrate; print(kvmigrate.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    tool = venv / "bin" / "kvmigrate"
    version = subprocess.run([tool, "--version"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("kvmigrate "), version.stderr
    dry = subprocess.run([tool, "--pg-url", pg_url, "setup", "--dry-run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "-- would apply 001_kvmigrate_state.sql" in dry.stdout and "CREATE TABLE" in dry.stdout
