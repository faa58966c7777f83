"""The docs stay true to the code: the CLI reference to `--help`, the layout page to the tree,
every link to a file that exists."""

import difflib
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

from conftest import DB_ROOT, generate_args, query, run_cli

from prefgen.cli import cli

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


def sections(text: str, level: int = 2) -> dict[str, str]:
    """The text under each heading of `level` (a higher heading ends one; fenced code skipped)."""
    found, title, fenced = {}, None, False
    for line in text.splitlines():
        fenced = fenced != line.startswith("```")
        depth = len(line) - len(line.lstrip("#"))
        if not fenced and depth and line[depth:].startswith(" "):
            if depth == level:
                title = line[depth:].strip()
                found[title] = ""
                continue
            if depth < level:
                title = None
        if title is not None:
            found[title] += line + "\n"
    return found


def page_section(page: str, heading: str) -> str:
    return sections((DOCS / page).read_text(encoding="utf-8"))[heading]


def tables(text: str) -> dict[str, list[str]]:
    """The Markdown tables in `text`, by the header of their first column: each row's first
    cell, without its backticks."""
    found, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        first = line.split("|")[1].strip()
        if header is None:
            header = first
            found.setdefault(header, [])
        elif not set(first) <= set("-: "):
            found[header].append(first.strip("`"))
    return found


def documented_schema(heading: str) -> dict[str, dict[str, list[str]]]:
    """docs/ledger.md's ``### `name` `` sections under `## Tables` or `## Views`: their tables."""
    part = sections(page_section("ledger.md", heading), level=3)
    return {name.strip("`"): tables(text) for name, text in part.items() if name.startswith("`")}


def test_the_ledger_page_lists_every_table_and_view_with_every_column(tmp_path):
    from prefgen.ledger.store import Ledger

    ledger = Ledger(tmp_path / "new.ledger.sqlite")  # a new ledger: every migration applied, today's views
    ledger.close()
    for kind, heading in (("table", "Tables"), ("view", "Views")):
        names = query(tmp_path / "new.ledger.sqlite", f"select name from sqlite_master where type = '{kind}'")
        actual = {
            row["name"]: [
                c["name"] for c in query(tmp_path / "new.ledger.sqlite", f"pragma table_info([{row['name']}])")
            ]
            for row in names
            if not row["name"].startswith("sqlite_")
        }
        documented = {name: found.get("column", []) for name, found in documented_schema(heading).items()}
        assert sorted(documented) == sorted(actual), f"docs/ledger.md's {heading} are not the ledger's {kind}s"
        for name, columns in actual.items():
            assert documented[name] == columns, (
                f"docs/ledger.md, `{name}`: list its columns in the ledger's order, one row each: {columns}"
            )


def test_the_ledger_page_lists_every_meta_key_a_run_writes(tiny_model, sample_data, workdir):
    """The keys of a finished --db-root run, and of one whose --max-new-tokens was then raised in
    place (the only run that records `raised_from`)."""
    out = workdir / "pairs.jsonl"
    flags = dict(db_root=DB_ROOT, max_samples=2, batch_size=4)
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=4, **flags))
    first = {row["key"] for row in query(str(out) + ".ledger.sqlite", "select key from meta")}
    run_cli(generate_args(tiny_model, sample_data, out, max_new_tokens=8, **flags))
    raised = {row["key"] for row in query(str(out) + ".ledger.sqlite", "select key from meta")}
    assert "raised_from" in raised - first and first <= raised
    documented = documented_schema("Tables")["meta"]["key"]
    assert sorted(documented) == sorted(set(documented)), "docs/ledger.md lists a meta key twice"
    assert set(documented) == raised, f"docs/ledger.md's meta keys are not a run's: {sorted(raised)}"


def test_the_test_table_names_every_test_file():
    listed = tables(page_section("contributing.md", "How the tests are organised"))["file"]
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    assert sorted(listed) == sorted(set(listed)), "docs/contributing.md lists a test file twice"
    assert sorted(listed) == files, (
        f"docs/contributing.md's test table: add {sorted(set(files) - set(listed))},"
        f" remove {sorted(set(listed) - set(files))}"
    )


# Variables of the Makefile that are not flags of `prefgen generate`.
NOT_GENERATE = {"PYTHON", "VENV", "CLIENTS_VENV", "VLLM_VENV", "RAY_VENV", "RAY_BENCH_ARGS", "PORT"}


def make_variables() -> list[tuple[str, str]]:
    """`make generate`'s variables as docs/generate-and-judging.md lists them: (variable, flag)."""
    text = page_section("generate-and-judging.md", "Through make")
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| `")]
    return [(var.strip().strip("`"), (re.findall(r"`(--[\w-]+)`", flag) or [""])[0]) for var, flag in rows]


def make_generate_argv(**variables) -> list[str]:
    """The `prefgen generate` command `make generate` runs with these variables (make -n: nothing runs)."""
    assignments = [f"{name}={value}" for name, value in variables.items()]
    # Neither a make that runs the tests (MAKEFLAGS) nor the environment (`?=` takes it) chooses.
    ignored = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", *(name for name, _ in make_variables())}
    env = {k: v for k, v in os.environ.items() if k not in ignored}
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "generate", *assignments], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    commands = [c for c in done.stdout.replace("\\\n", " ").splitlines() if "prefgen generate" in c]
    assert len(commands) == 1, done.stdout
    argv = shlex.split(commands[0])
    return argv[argv.index("generate") + 1 :]


def test_make_generate_has_the_variables_the_docs_list_and_passes_the_rest_through_args():
    rows = make_variables()
    documented = [name for name, _ in rows]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    defined = set(re.findall(r"^([A-Z_]+) \?=", makefile, flags=re.M)) - NOT_GENERATE
    assert sorted(documented) == sorted(defined), (
        "docs/generate-and-judging.md#through-make and the Makefile's variables differ (a variable"
        f" that is no flag of generate goes into NOT_GENERATE): {sorted(set(documented) ^ defined)}"
    )
    flags = {opt for p in cli.commands["generate"].params for opt in [*p.opts, *p.secondary_opts]}
    own = {name: flag for name, flag in rows if name != "ARGS"}
    assert set(own.values()) <= flags, f"not flags of prefgen generate: {set(own.values()) - flags}"
    assert len(set(own.values())) == len(own), "two variables for one flag"
    # Every variable reaches its flag: each given a value of its own (DEDUP takes a mode).
    values = {name: "sql" if name == "DEDUP" else f"x-{name.lower()}" for name in own}
    argv = make_generate_argv(**values, ARGS="--evaluator bird --db-variants 5")
    for name, flag in own.items():
        assert flag in argv and argv[argv.index(flag) + 1] == values[name], f"{name} does not set {flag}: {argv}"
    assert argv[-4:] == ["--evaluator", "bird", "--db-variants", "5"]
    assert "--evaluator" not in make_generate_argv(MODEL="m")


def test_the_layouts_rules_hold():
    """docs/layout.md's rules: the root holds only the shared leaves, and only prefgen/ledger
    touches a ledger (prefgen/sql runs the users' databases, which is its job)."""
    root = {p.name for p in (ROOT / "prefgen").glob("*.py")}
    assert root == {"__init__.py", "__main__.py", "config.py", "errors.py", "paths.py", "units.py"}
    offenders = []
    for path in (ROOT / "prefgen").rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("prefgen/ledger/", "prefgen/sql/")):
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"^\s*(import sqlite3|import sqlite_utils|from sqlite_utils)", text, re.M) or ".db." in text:
            offenders.append(relative)
    assert not offenders, f"only prefgen/ledger may touch a ledger's database: {offenders}"
