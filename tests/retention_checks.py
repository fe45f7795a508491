"""What a test of retention checks on a data root: its bytes on disk, and that everything kept still reads."""

import json
import os
from pathlib import Path

from assets.common.data.storage import CURRENT, sha256_file
from assets.common.models.integrity import model_content_hash


def disk_bytes(root: Path) -> int:
    """Bytes of every file under ``root``, each hard-linked file once."""
    seen = {}
    for folder, _, names in os.walk(root):
        for name in names:
            stat = (Path(folder) / name).lstat()
            seen[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(seen.values())


def hashed_paths(value, found=None) -> list[tuple[str, str]]:
    """Every (path, content_hash) pair a lineage records."""
    found = [] if found is None else found
    if isinstance(value, dict):
        if isinstance(value.get("path"), str) and isinstance(value.get("content_hash"), str):
            found.append((value["path"], value["content_hash"]))
        for item in value.values():
            hashed_paths(item, found)
    elif isinstance(value, list):
        for item in value:
            hashed_paths(item, found)
    return found


def assert_everything_kept_reads(root: Path) -> int:
    """Every CURRENT pointer names a version whose bytes hash to its name; every path a remaining lineage.json
    records reads with its recorded hash, and every other path it names exists. Returns the paths checked."""
    checked = 0
    for pointer in root.rglob(CURRENT):
        version = pointer.parent / pointer.read_text().strip()
        assert sha256_file(version)[:16] == version.stem, version
        checked += 1
    for lineage_path in root.glob("models/**/lineage.json"):
        lineage = json.loads(lineage_path.read_text())
        for path, content_hash in hashed_paths(lineage):
            found = model_content_hash(path) if Path(path).is_dir() else sha256_file(path)
            assert found == content_hash, (lineage_path, path)
            checked += 1
        for value in json.dumps(lineage).split('"'):
            if value.startswith(str(root)):
                assert Path(value).exists(), (lineage_path, value)
    return checked
