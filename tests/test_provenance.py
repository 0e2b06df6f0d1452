"""What a result records as its commit: this checkout's, never another repository's, else the driver's
``KNNMIX_GIT_COMMIT``, else the commit a Docker image's build wrote into its package."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from knnmix.provenance import command, git_commit, package_dir

PRINT = "from knnmix.provenance import git_commit; print(git_commit())"


def commit_seen(site: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KNNMIX_")}
    done = subprocess.run([sys.executable, "-c", PRINT], env={**clean, "PYTHONPATH": str(site), **env},
                          capture_output=True, text=True, check=True, cwd=site)
    return done.stdout.strip()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_a_package_copied_into_another_repository_does_not_take_its_commit(tmp_path):
    repo = tmp_path / "project"  # a user's project with knnmix copied into a git-ignored folder (e.g. a venv)
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("site/\n")
    git(repo, "add", ".gitignore")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "theirs")
    shutil.copytree(package_dir(), repo / "site" / "knnmix", ignore=shutil.ignore_patterns("__pycache__"))
    assert commit_seen(repo / "site") == "unknown"  # not the project's HEAD
    assert commit_seen(repo / "site", KNNMIX_GIT_COMMIT="abc123") == "abc123"  # a Ray worker's or a submitter's


def test_an_images_commit_stays_with_its_code(tmp_path):
    """The Docker image set KNNMIX_GIT_COMMIT for every process: code that `ray job submit --working-dir .` uploaded
    into it (another checkout, without .git) recorded the image's build commit. The build now writes the commit
    into the package it installs (distributed/Dockerfile), so only that code records it."""
    image, upload = tmp_path / "image", tmp_path / "upload"
    for where in (image, upload):
        shutil.copytree(package_dir(), where / "knnmix", ignore=shutil.ignore_patterns("__pycache__", "COMMIT"))
    (image / "knnmix" / "COMMIT").write_text("f00d-image\n")
    assert commit_seen(image) == "f00d-image"
    assert commit_seen(upload) == "unknown"
    assert commit_seen(upload, KNNMIX_GIT_COMMIT="c0ffee") == "c0ffee"  # what the submitter says
    dockerfile = (package_dir().parents[1] / "distributed" / "Dockerfile").read_text()
    assert 'RUN echo "${KNNMIX_GIT_COMMIT}" > src/knnmix/COMMIT' in dockerfile
    assert "ENV KNNMIX_GIT_COMMIT" not in dockerfile


def test_the_checkout_wins_over_a_stale_variable():
    assert git_commit() != "unknown"  # the tests run from a git checkout
    assert commit_seen(package_dir().parent, KNNMIX_GIT_COMMIT="stale") == git_commit()


def test_the_recorded_command_runs_again_as_a_shell_line(monkeypatch):
    """run.json's command joined the arguments with spaces: a --set value or path with a space read back wrong."""
    argv = ["knnmix", "train", "--set", "noise.spec=symmetric:0.5", "--out", "my runs/a b", "--set", "name=it's"]
    monkeypatch.delenv("KNNMIX_COMMAND", raising=False)
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command()) == argv
