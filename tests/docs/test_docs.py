"""Docs that cannot rot: every `python src/main.py ...` and `python src/report.py ...` line of the README and docs/
composes (a renamed option fails here), every relative link points to a file that exists, and nothing points
outside the repository."""
from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from recondec.config import CONF_DIR, REPO_ROOT

from ..helpers import load_script

PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def command_lines(program: str) -> list[tuple[str, str]]:
    """(page, command) for every line of a code block or inline code span that runs `program`."""
    found = []
    for page in PAGES:
        text = page.read_text()
        joined = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
        for line in re.findall(rf"(?:^|`)\s*(python {re.escape(program)}[^`\n]*)", joined, flags=re.M):
            found.append((page.name, line.split("#")[0].split("&&")[0].strip()))
    return found


MAIN = command_lines("src/main.py")
REPORT = command_lines("src/report.py")


def hydra_overrides(command: str) -> list[list[str]]:
    """The override lists a command composes: a multirun's comma lists give one list per value."""
    args = [a for a in shlex.split(command)[2:] if a not in ("-m", "--multirun")]
    plain = [a for a in args if not ("," in a.split("=", 1)[-1] and "[" not in a)]
    swept = [a for a in args if a not in plain]
    combos = [plain]
    for a in swept:
        key, values = a.split("=", 1)
        combos += [[*plain, f"{key}={v}"] for v in values.split(",")]
    return combos


def test_the_pages_have_commands_to_check():
    assert len(MAIN) >= 10 and len(REPORT) >= 3, (len(MAIN), len(REPORT))


@pytest.mark.parametrize("page, command", MAIN, ids=[f"{p}:{c[18:60]}" for p, c in MAIN])
def test_every_main_command_composes(page, command, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for overrides in hydra_overrides(command):
            if any(o.startswith("hydra/launcher=") for o in overrides):  # a launcher plugin's group: Hydra's own
                overrides = [o for o in overrides if not o.startswith(("hydra/launcher=", "hydra.launcher."))]
            compose("config", overrides=[f"output_dir={tmp_path}", *overrides])  # raises on an unknown key or option


@pytest.mark.parametrize("page, command", REPORT, ids=[f"{p}:{c[20:60]}" for p, c in REPORT])
def test_every_report_command_parses(page, command):
    args = load_script("report").build_parser().parse_args(shlex.split(command)[2:])
    assert args.experiment or args.docs


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_points_to_a_file_that_exists(page):
    links = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://|#|mailto:", link)]
    missing = [link for link in relative if link and not (page.parent / link).exists()]
    assert not missing, f"{page.name}: {missing}"


def test_nothing_in_the_repository_points_outside_it():
    out = subprocess.run(["git", "grep", "-n", r"\.\./shared"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.stdout == "", out.stdout


def test_the_readme_opens_with_the_two_set_up_commands_that_ci_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block == [". .ci/setup.sh && python src/main.py",
                     ". .ci/setup.sh && ruff check && python -m pytest && python -m pytest -m slow"]
    assert block[1] in (REPO_ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) <= 200


def override_spans() -> list[tuple[str, str]]:
    """(page, span) for every inline code span made only of Hydra overrides (`data=fashion_mnist data.x=1`), with
    placeholder values (`=K`, `=<checkpoint>`) given a value of the right kind; the changelog may name old keys."""
    token = r"[+~]?[a-z_]+(?:[./][a-z_0-9]+)*=[^\s`]+"
    found = []
    for page in PAGES:
        if page.name == "CHANGELOG.md":
            continue
        for span in re.findall(r"`([^`\n]+)`", page.read_text()):
            parts = span.split()
            if parts and all(re.fullmatch(token, p) for p in parts) and "*" not in span and \
                    not span.startswith(("python", "tags.")):
                span = re.sub(r"=<[^>]+>", "=x", re.sub(r"=[A-Z]$|=[A-Z](?= )", "=1", span))
                found.append((page.name, span))
    return found


OVERRIDES = override_spans()


@pytest.mark.parametrize("page, span", OVERRIDES, ids=[f"{p}:{s[:50]}" for p, s in OVERRIDES])
def test_every_override_the_docs_show_composes(page, span, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        compose("config", overrides=[f"output_dir={tmp_path}", *span.split()])


def test_the_results_page_holds_the_scope_prose_as_docs_results_scope_md_has_it():
    """docs/results.md is generated (`python src/report.py --docs`); what no grid here can say is prose in
    docs/results_scope.md, included verbatim: prose edited without regenerating the page fails here."""
    from recondec.tracking.results_page import SCOPE_FILE

    assert SCOPE_FILE.parent == REPO_ROOT / "docs"
    assert SCOPE_FILE.read_text().strip() in (REPO_ROOT / "docs" / "results.md").read_text()
