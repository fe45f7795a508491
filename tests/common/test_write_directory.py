"""`write_directory`: a directory is published whole by one rename and never written into, deleted or replaced: an
identical one is kept, a different one gets a name of its own, and a write that fails or is killed (SIGKILL, in
the middle of publishing) leaves every existing directory byte for byte as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from assets.common.data.storage import sha256_dir, sha256_file, write_directory


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its SHA-256: what "byte-identical" compares."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def filler(weights: bytes, note: str = ""):
    def fill(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(weights)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "note.txt").write_text(note)
    return fill


def weights_hash(root: Path) -> str:  # the identity: the "model" files only (the note is like a lineage.json)
    return sha256_file(root / "weights.bin")


def test_a_new_directory_is_published_whole(tmp_path):
    out = write_directory(tmp_path / "model", filler(b"w1"), weights_hash)
    assert out == tmp_path / "model" and (out / "sub" / "note.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left


def test_an_identical_directory_is_kept_as_it_is(tmp_path):
    first = write_directory(tmp_path / "model", filler(b"w1", "first run"), weights_hash)
    before = files(first)
    again = write_directory(tmp_path / "model", filler(b"w1", "second run"), weights_hash)
    assert again == first and files(first) == before  # the first run's note too
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_different_directory_never_replaces_the_existing_one(tmp_path):
    first = write_directory(tmp_path / "model", filler(b"w1"), weights_hash)
    before = files(first)
    other = write_directory(tmp_path / "model", filler(b"w2"), weights_hash)
    assert files(first) == before
    assert other == tmp_path / f"model-{weights_hash(other)[:16]}" and (other / "weights.bin").read_bytes() == b"w2"
    assert write_directory(tmp_path / "model", filler(b"w2"), weights_hash) == other  # and again: kept


def test_a_directory_whose_content_no_longer_matches_its_name_is_not_reused(tmp_path):
    write_directory(tmp_path / "model", filler(b"w1"), weights_hash)
    other = write_directory(tmp_path / "model", filler(b"w2"), weights_hash)
    (other / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(FileExistsError, match=rf"{other.name}: exists, but its content does not match its name"):
        write_directory(tmp_path / "model", filler(b"w2"), weights_hash)
    assert (other / "weights.bin").read_bytes() == b"tampered"  # left for a person to look at


def test_a_write_that_fails_while_publishing_leaves_the_existing_directory(tmp_path, monkeypatch):
    first = write_directory(tmp_path / "model", filler(b"w1"), weights_hash)
    before = files(first)

    def killed(src, dst):
        raise RuntimeError("killed while publishing")

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(RuntimeError, match="killed while publishing"):
        write_directory(tmp_path / "model", filler(b"w2"), weights_hash)
    assert files(first) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing partial, no temporary directory


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from assets.common.data.storage import sha256_file, write_directory

    def publishing(src, dst):  # the moment a write is most fragile: everything assembled, about to publish
        print("publishing", flush=True)
        time.sleep(60)

    def fill(tmp):
        (tmp / "weights.bin").write_bytes(sys.argv[2].encode())

    os.rename = publishing
    write_directory(Path(sys.argv[1]), fill, lambda root: sha256_file(root / "weights.bin"))
""")


@pytest.mark.parametrize("weights", ["w1", "w2"], ids=["same content", "other content"])
def test_a_write_killed_while_publishing_leaves_the_existing_directory(tmp_path, weights):
    first = write_directory(tmp_path / "model", filler(b"w1"), weights_hash)
    before, tree = files(first), sha256_dir(first)
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "model"), weights],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
                              start_new_session=True)
    try:
        if weights == "w2":  # a different model: killed in the middle of publishing it
            assert worker.stdout.readline().strip() == "publishing"
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=120)  # (the same model: the worker keeps the existing directory and ends)
    finally:
        worker.kill()
        worker.wait()
    assert files(first) == before and sha256_dir(first) == tree
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "model")
    assert all(name.startswith(".model.") for name in leftovers)  # at most a hidden temporary directory


def test_the_with_block_form_publishes_once_and_never_replaces(tmp_path):
    from assets.common.data.storage import directory_written_whole

    out = tmp_path / "export-0123"
    with directory_written_whole(out) as tmp:
        (tmp / "data.txt").write_text("v1")
    before = files(out)
    with directory_written_whole(out) as tmp:  # the same files: kept
        (tmp / "data.txt").write_text("v1")
    with pytest.raises(FileExistsError, match="exists with other files"), directory_written_whole(out) as tmp:
        (tmp / "data.txt").write_text("v2")
    assert files(out) == before and [p.name for p in tmp_path.iterdir()] == [out.name]
