"""The docs stay true to the code: the CLI reference to `--help`, the layout page to the tree,
every link to a file that exists."""

import difflib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def cli_reference():
    """docs/cli_reference.py, the script `make docs` runs (it is not a module of the package)."""
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_the_commands_help(monkeypatch):
    """docs/cli.md is what every command's --help prints now, whatever the terminal's width."""
    monkeypatch.setenv("COLUMNS", "40")
    expected = cli_reference().render()
    committed = (DOCS / "cli.md").read_text(encoding="utf-8")
    diff = "".join(
        list(difflib.unified_diff(committed.splitlines(True), expected.splitlines(True), "docs/cli.md", "--help"))[:60]
    )
    assert committed == expected, f"docs/cli.md is out of date: run `make docs` and commit it.\n{diff}"


def test_cli_reference_has_every_command():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    commands = "generate, ledger status, ledger show, ledger failures, ledger retry, export, verify, pair, browse"
    for command in [*commands.split(", "), "merge", "repair", "tiny-model"]:
        assert f"\n## prefgen {command}\n" in text
        assert f"Usage: prefgen {command} [OPTIONS]" in text


def tree_modules() -> set[str]:
    """Every module of the package (its __init__ and __main__ aside) and of benchmarks/, by path."""
    paths = [*ROOT.glob("prefgen/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    return {p.relative_to(ROOT).as_posix() for p in paths if p.name not in ("__init__.py", "__main__.py")}


def tree_folders() -> set[str]:
    return {p.parent.relative_to(ROOT).as_posix() + "/" for p in ROOT.glob("prefgen/**/__init__.py")}


def layout_names() -> set[str]:
    """The files and folders docs/layout.md names, as `prefgen/...` or `benchmarks/...` code spans."""
    text = (DOCS / "layout.md").read_text(encoding="utf-8")
    return set(re.findall(r"`((?:prefgen|benchmarks)/[\w./]*)`", text))


def test_layout_page_names_every_module():
    missing = sorted(tree_modules() - layout_names())
    assert not missing, f"docs/layout.md does not name these modules; add each with its one-line job: {missing}"
    missing = sorted(tree_folders() - layout_names())
    assert not missing, f"docs/layout.md does not name these folders; add each with its job: {missing}"


def test_layout_page_names_only_what_exists():
    gone = sorted(name for name in layout_names() if not (ROOT / name).exists())
    assert not gone, f"docs/layout.md names files or folders that do not exist (any more): {gone}"


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page (fenced code skipped)."""
    found, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            n = 1
            while slug in found:  # a repeated heading gets -1, -2, ...
                slug = re.sub(r"-\d+$", "", slug) + f"-{n}"
                n += 1
            found.add(slug)
    return found


def test_every_link_between_the_docs_resolves():
    broken = []
    for page in markdown_files():
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, f"links to files or headings that do not exist: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name}" not in readme]
    assert not unlinked, f"README.md does not point to these pages: {unlinked}"


def test_readme_starts_with_the_two_commands_and_stays_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    head = "\n".join(lines[:8])
    assert "make generate" in head and "make test" in head
    assert len(lines) <= 250, "README.md is the front page: move details to a page under docs/"
