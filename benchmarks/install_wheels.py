"""Install, from a folder of wheels and without a registry, what this interpreter lacks for petclf.

    python3 benchmarks/install_wheels.py WHEEL_DIR TARGET_DIR    # then: export PYTHONPATH=TARGET_DIR:$PYTHONPATH

`benchmarks/gpu_check.sh --wheels DIR` runs this; `benchmarks/gpu_wheels.sh DIR` fills the folder. A wheel is
installed when its package is missing here, or when a wheel being installed needs a newer version than the one here
(onnx needs protobuf >= 6.31, for example); what the machine already has is otherwise left alone, so its own torch,
numpy and onnxruntime keep the packages they were built with. `pip install --no-index --no-deps` does the copying:
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


def choose(wheels: dict[str, tuple[Path, Version, list[Requirement]]], have: dict[str, Version]
           ) -> tuple[list[str], list[str]]:
    """(packages to install, notes): the missing ones, then whatever their requirements need newer, to a fixpoint."""
    chosen = {n for n in wheels if n not in have and n not in NEVER}
    notes: list[str] = []
    changed = True
    while changed:
        changed = False
        for n in sorted(chosen):
            for req in wheels[n][2]:
                m = canonical(req.name)
                if m in chosen or (m in have and req.specifier.contains(have[m], prereleases=True)):
                    continue
                if m in wheels and m not in NEVER and wheels[m][1] in req.specifier:
                    chosen.add(m)
                    changed = True
                    notes.append(f"{m}: {n} needs {req.specifier}, here {have.get(m, 'missing')}; installing "
                                 f"{wheels[m][1]}")
                elif m in have:
                    notes.append(f"warning: {n} needs {m}{req.specifier}, this machine has {have[m]}")
    return sorted(chosen), notes


def main(argv: list[str]) -> int:
    """Pick the wheels this interpreter needs from WHEEL_DIR and install them into TARGET_DIR."""
    if len(argv) != 2:
        print("usage: python3 benchmarks/install_wheels.py WHEEL_DIR TARGET_DIR", file=sys.stderr)
        return 2
    wheel_dir, target = Path(argv[0]), Path(argv[1])
    files = sorted(wheel_dir.glob("*.whl"))
    if not files:
        print(f"error: no wheels in {wheel_dir} (make them with benchmarks/gpu_wheels.sh)", file=sys.stderr)
        return 2
    wheels = {info[0]: (f, *info[1:]) for f in files for info in [wheel_info(f)]}
    have = installed_here()
    chosen, notes = choose(wheels, have)
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
