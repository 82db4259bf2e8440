"""One walk of a data folder, shared by everything that asks what files it holds.

    from petclf.listing import Listing
    files = Listing.of("~/photos")          # walks the folder once
    files.images_under(files.root / "images"), files.others_under(files.root)

Detecting a layout tries several readings of the same folder, and the data report lists the files that are not
images; each used to walk the folder itself (3 to 4 walks of every file per load).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from petclf.io import is_image_file, walk_files


@dataclass(frozen=True)
class Listing:
    """Every visible file below `root`, sorted (`io.walk_files`), and views of it by folder."""

    root: Path
    files: list[Path] = field(repr=False)

    @classmethod
    def of(cls, root: str | Path) -> Listing:
        """Walk `root` once."""
        return cls(Path(root), walk_files(root))

    @cached_property
    def images(self) -> list[Path]:
        """The image files (by extension), sorted."""
        return [p for p in self.files if is_image_file(p)]

    @cached_property
    def image_dirs(self) -> frozenset[Path]:
        """Every folder with an image in it or anywhere below it."""
        parents = {p.parent for p in self.images}
        return frozenset(a for d in parents for a in (d, *d.parents))

    def images_under(self, folder: Path) -> list[Path]:
        """The images below `folder` (a folder inside `root`, or `root` itself)."""
        return _under(self.images, self.root, folder)

    def others_under(self, folder: Path) -> list[Path]:
        """The files below `folder` that are not images (`.mat`, `.txt`, a labels CSV)."""
        return [p for p in _under(self.files, self.root, folder) if not is_image_file(p)]


def _under(paths: list[Path], root: Path, folder: Path) -> list[Path]:
    """The entries of `paths` (all below `root`) that lie below `folder`; a string prefix test, since the
    paths were all built from `root` by the same walk."""
    if folder == root:
        return list(paths)
    prefix = os.path.join(folder, "")
    return [p for p in paths if str(p).startswith(prefix)]
