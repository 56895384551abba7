"""Every picture the Markdown docs show is committed: a gif or png that exists here but is git-ignored
shows as a broken image on GitHub and in a fresh clone (the README gallery's gifs once were)."""

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "BENCHMARKS.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/docs/*.md"))]
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def linked_images(doc: str) -> list[str]:
    """Repository paths of the local images `doc` shows (web addresses left out)."""
    with open(os.path.join(ROOT, doc)) as f:
        targets = IMAGE_LINK.findall(f.read())
    return [os.path.normpath(os.path.join(os.path.dirname(doc), target)) for target in targets
            if "://" not in target]


def test_the_readme_shows_pictures():
    assert len(linked_images("README.md")) >= 3


@pytest.mark.parametrize("doc", DOCS)
def test_every_linked_image_exists(doc):
    assert [image for image in linked_images(doc) if not os.path.isfile(os.path.join(ROOT, image))] == []


# A worktree's or submodule's .git is a file, hence exists() rather than isdir().
@pytest.mark.skipif(shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
                    reason="needs the git checkout")
@pytest.mark.parametrize("doc", DOCS)
def test_every_linked_image_is_tracked_by_git(doc):
    images = linked_images(doc)
    tracked = set(subprocess.run(["git", "ls-files", "--", *images], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()) if images else set()
    assert [image for image in images if image not in tracked] == []
