"""The docs hold together: every relative link, anchor and figure that README.md and docs/*.md reference exists,
the README stays a short front door, and CI runs the README's own test command."""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FIGURE_MENTION = re.compile(r"docs/figures/[\w.-]+\.png")
README_COMMANDS = ('python3 -m pip install -e ".[serving,test]"',
                   "python3 -m dcgan_tf.train --flagfile=configs/quickstart.cfg", "python3 -m pytest -q")


def prose(path: str) -> str:
    """The file's text without fenced code blocks (their brackets are code, not links)."""
    with open(path, encoding="utf-8") as f:
        return re.sub(r"^```.*?^```", "", f.read(), flags=re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())  # GitHub keeps underscores: "TF_CONFIG" -> "tf_config"
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    """The anchors of a Markdown file's headings."""
    return {slug(line.lstrip("#")) for line in prose(path).splitlines() if re.match(r"^#{1,6} ", line)}


def links(path: str) -> list[str]:
    """Every link and image target in the file's prose."""
    return LINK.findall(prose(path))


def test_docs_exist():
    names = {os.path.relpath(path, REPO) for path in DOCS}
    for required in ("README.md", "docs/training.md", "docs/experiments.md", "docs/serving.md",
                     "docs/evaluation.md", "docs/performance.md", "docs/scale.md"):
        assert required in names


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: os.path.relpath(path, REPO))
def test_every_relative_link_and_anchor_resolves(doc):
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: - not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
        if not os.path.exists(resolved):
            broken.append(f"{target}: no such file {os.path.relpath(resolved, REPO)}")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor} in {os.path.relpath(resolved, REPO)}")
    assert not broken, f"{os.path.relpath(doc, REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: os.path.relpath(path, REPO))
def test_every_mentioned_figure_exists(doc):
    with open(doc, encoding="utf-8") as f:
        mentioned = set(FIGURE_MENTION.findall(f.read()))
    missing = sorted(name for name in mentioned if not os.path.isfile(os.path.join(REPO, name)))
    assert not missing, f"{os.path.relpath(doc, REPO)} names missing figures {missing}"


def test_readme_is_a_short_front_door_with_its_three_commands():
    readme = os.path.join(REPO, "README.md")
    assert os.path.getsize(readme) < 15_500, "README.md grew past ~15 KB: move the details to docs/*.md"
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for command in README_COMMANDS:
        assert command in text
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert re.search(r"^python -m pytest -q$", ci, flags=re.MULTILINE), "CI must run the README's test command"


def test_architecture_page_maps_every_module_and_every_test_file():
    """docs/architecture.md is a newcomer's map: a module or test file missing from it is a map out of date."""
    with open(os.path.join(REPO, "docs", "architecture.md"), encoding="utf-8") as f:
        text = f.read()
    modules = [os.path.relpath(path, REPO) for path in glob.glob(os.path.join(REPO, "dcgan_tf", "*.py"))
               if not path.endswith("__init__.py")]
    packages = [os.path.relpath(path, REPO) + "/" for path in glob.glob(os.path.join(REPO, "dcgan_tf", "*", ""))
                if os.path.exists(os.path.join(path, "__init__.py"))]
    named = set(re.findall(r"`([\w/.]+)`", text))
    # A row may name several modules of one folder after the first: `dcgan_tf/distribute.py`, `custom_loop.py`.
    missing = [m for m in modules + packages if m not in named and os.path.basename(m.rstrip("/")) + (
        "/" if m.endswith("/") else "") not in named]
    assert not missing, f"docs/architecture.md does not place {missing}"
    tests = [os.path.basename(p) for p in glob.glob(os.path.join(REPO, "tests", "test_*.py"))]
    assert not [t for t in tests if f"`{t}`" not in text], "docs/architecture.md's test table misses some test files"
