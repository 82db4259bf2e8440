"""Install, from a folder of wheels and without a registry, what this interpreter lacks for petclf.

    python3 tools/install_wheels.py WHEEL_DIR TARGET_DIR [setup.cfg]   # then: export PYTHONPATH=TARGET_DIR:...

`tools/gpu_check.sh --wheels DIR` runs this; `tools/gpu_wheels.sh DIR` fills the folder. A wheel is
installed when its package is missing here, or when petclf (setup.cfg's install_requires) or a wheel being installed
needs another version than the one here (onnx needs protobuf >= 6.31, petclf timm >= 1.0.31, for example); what the
machine already has is otherwise left alone, so its own torch, numpy and onnxruntime keep the packages they were
built with. `pip install --no-index --no-deps` does the copying:
pip never resolves anything, so it can never reach for a second torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.metadata import distributions
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # a bare interpreter: pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

NEVER = {"torch", "torchvision", "triton", "numpy"}  # the machine's own; replacing them breaks its CUDA build


def canonical(name: str) -> str:
    """PEP 503 name: `Python_Dateutil` and `python-dateutil` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_info(path: Path) -> tuple[str, Version, list[Requirement]]:
    """(name, version, requirements that apply here) read from the wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace").split("\n\n", 1)[0]
    fields = [line.split(": ", 1) for line in text.splitlines() if ": " in line]
    name = next(v for k, v in fields if k == "Name")
    version = Version(next(v for k, v in fields if k == "Version"))
    reqs = [Requirement(v) for k, v in fields if k == "Requires-Dist"]
    return canonical(name), version, [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def installed_here() -> dict[str, Version]:
    """Packages this interpreter can import now, with their versions (the first one found wins, as for import)."""
    found: dict[str, Version] = {}
    for d in distributions():
        name = d.metadata["Name"]
        if name and canonical(name) not in found:
            try:
                found[canonical(name)] = Version(d.version)
            except Exception:  # noqa: BLE001 - an unparsable local version is still "installed"
                found[canonical(name)] = Version("0")
    return found


def project_requirements(setup_cfg: Path) -> list[Requirement]:
    """petclf's own `install_requires` from setup.cfg, less the machine's torch and torchvision."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = [line.strip() for line in cfg.get("options", "install_requires", fallback="").splitlines()]
    return [r for r in (Requirement(line) for line in lines if line) if canonical(r.name) not in NEVER]


def choose(wheels: dict[str, tuple[Path, Version, list[Requirement]]], have: dict[str, Version],
           project: list[Requirement] = ()) -> tuple[list[str], list[str]]:
    """(packages to install, notes): the missing ones, then whatever petclf's requirements (`project`) or theirs need
    newer than what is here, to a fixpoint. Requirements nothing here or in the folder meets are noted, not fatal:
    many (fasthtml's web server, petclf's Gradio) are never imported by what the check runs."""
    chosen = {n for n in wheels if n not in have and n not in NEVER}
    notes: dict[str, None] = {}  # ordered, without repeats
    changed = True
    while changed:
        changed = False
        needs = [("petclf", r) for r in project] + [(n, r) for n in sorted(chosen) for r in wheels[n][2]]
        for who, req in needs:
            m = canonical(req.name)
            if m in chosen or (m in have and req.specifier.contains(have[m], prereleases=True)):
                continue
            if m in wheels and m not in NEVER and req.specifier.contains(wheels[m][1], prereleases=True):
                chosen.add(m)
                changed = True
                notes[f"{m}: {who} needs {req.specifier}, here {have.get(m, 'missing')}; installing "
                      f"{wheels[m][1]}"] = None
            elif m in have:
                notes[f"warning: {who} needs {m}{req.specifier}, this machine has {have[m]} (no wheel fits)"] = None
            elif who == "petclf":
                notes[f"not here and no wheel: {m} (petclf's {req}; the check does not import it)"] = None
    return sorted(chosen), list(notes)


def main(argv: list[str]) -> int:
    """Pick the wheels this interpreter needs from WHEEL_DIR and install them into TARGET_DIR."""
    if len(argv) not in (2, 3):
        print("usage: python3 tools/install_wheels.py WHEEL_DIR TARGET_DIR [SETUP_CFG]", file=sys.stderr)
        return 2
    wheel_dir, target = Path(argv[0]), Path(argv[1])
    project = project_requirements(Path(argv[2])) if len(argv) == 3 else []
    files = sorted(wheel_dir.glob("*.whl"))
    if not files:
        print(f"error: no wheels in {wheel_dir} (make them with tools/gpu_wheels.sh)", file=sys.stderr)
        return 2
    wheels = {info[0]: (f, *info[1:]) for f in files for info in [wheel_info(f)]}
    have = installed_here()
    chosen, notes = choose(wheels, have, project)
    for line in notes:
        print(line)
    kept = sorted(n for n in wheels if n not in chosen)
    print(f"already here, kept: {', '.join(f'{n} {have[n]}' for n in kept if n in have) or 'none'}")
    print(f"installing {len(chosen)} of {len(wheels)} wheels into {target}: "
          f"{', '.join(f'{n} {wheels[n][1]}' for n in chosen) or 'none'}")
    if chosen:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--disable-pip-version-check", "--target", str(target),
                        *(str(wheels[n][0]) for n in chosen)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
