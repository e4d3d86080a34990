"""The README and docs/ stay true: links resolve, and every command they show names real commands,
options, make targets, scripts and manifests (run with `--help`: most need a finished demo or a cluster)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(page: Path) -> list[list[str]]:
    """Each shell command in the page's ```bash blocks, continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quoted value runs on to the next line
                continue
            pending = ""
            found.append(words)
        assert not pending, f"{page.name}: unclosed quote in {pending!r}"
    return [c for c in found if c]


def _inline_commands(page: Path) -> list[list[str]]:
    """`photogenic ...` and `make ...` written inline in the text, as users copy them."""
    found = []
    for code in re.findall(r"`([^`\n]+)`", page.read_text()):
        if re.match(r"(\.venv/bin/)?photogenic \w|make \w", code) and "..." not in code and "<" not in code:
            try:
                found.append(shlex.split(code))
            except ValueError:
                continue
    return found


def _photogenic_args(words: list[str]) -> list[str] | None:
    """The arguments after a `photogenic` word, up to a pipe or a separator; None when there is none."""
    for i, word in enumerate(words):
        if not all(re.match(r"[A-Z_]+=", w) for w in words[:i]):  # only after VAR=value prefixes
            return None
        if word == "photogenic" or word.endswith("/bin/photogenic"):
            args = []
            for w in words[i + 1 :]:
                if w in ("|", "&&", ";", ">", "&"):
                    break
                args.append(w)
            return args
    return None


def test_the_readme_is_a_short_door_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"the README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"(https?:|mailto:|#)", target):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: broken link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_shown_names_real_commands_options_targets_and_files(page: Path) -> None:
    from photogenic.cli import main

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    checked = 0
    for words in _commands(page) + _inline_commands(page):
        args = _photogenic_args(words)
        if args is not None and "..." not in " ".join(args) and not any("same options" in a for a in args):
            result = CliRunner().invoke(main, [*args, "--help"])
            assert result.exit_code == 0, f"{page.name}: photogenic {shlex.join(args)}: {result.output}"
            checked += 1
        if words[0] == "make":
            for word in words[1:]:
                if "=" not in word:
                    assert word in targets, f"{page.name}: no make target {word!r}"
            checked += 1
        for i, word in enumerate(words):
            if word == "-k" or (word == "kustomize" and i and words[i - 1] == "kubectl"):
                path = words[i + 1]
                if "<" not in path:
                    assert (ROOT / path / "kustomization.yaml").exists(), f"{page.name}: no overlay {path}"
            if re.fullmatch(r"(bench|images|tests/data/crds)/[\w/.-]+\.(py|sh)", word):
                assert (ROOT / word).exists(), f"{page.name}: no script {word}"
    if page.name in ("README.md", "kubeflow.md", "stages.md"):
        assert checked >= 3, f"{page.name}: expected commands to check"


def test_the_checker_catches_a_wrong_option() -> None:
    from photogenic.cli import main

    result = CliRunner().invoke(main, ["pipeline", "run", "--parameter", "x=1", "--help"])
    assert result.exit_code != 0 and "No such option" in result.output
