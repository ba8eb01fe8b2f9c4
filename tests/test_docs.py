"""README.md and docs/*.md: the README's size, every relative link and anchor, and every `--flag` quoted
after an `hf-reflow <command>` (checked against that command's own `--help`, so nothing is listed twice)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from hf_reflow import cli
from hf_reflow.parsing import HelpRequested

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_BYTES = 15_360


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def split_code(text: str) -> tuple[str, list[str]]:
    """(prose with fenced code blocks blanked out, the code blocks' lines)."""
    prose, code, fence = [], [], None
    for line in text.split("\n"):
        marker = re.match(r"^\s*(```+|~~~+)", line)
        if fence is None and marker:
            fence = marker.group(1)[0] * 3
            prose.append("")
        elif fence is not None:
            if line.strip().startswith(fence):
                fence = None
            else:
                code.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), code


# ---- links and anchors ----------------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: markdown links reduced to their text, lowercase, punctuation dropped
    (letters, digits, `_`, `-` and spaces kept), each space -> `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose.split("\n"):
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")  # GitHub numbers repeats
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(out)


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """Relative links of one markdown file whose file or `#anchor` does not exist."""
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    prose = re.sub(r"(?<![\[`])`[^`\n]+`(?!\]\()", "", prose)  # inline code is no link (a link's text may be)
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}: ({target})"
        if not resolved.exists():
            problems.append(f"{where}: {file_part} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(root)}")
    return problems


def test_readme_is_short() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md: {size} bytes; keep it <= {README_MAX_BYTES} (move text to docs/)"


def test_readme_links_every_docs_page() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ holds no pages"
    prose, _ = split_code(README.read_text(encoding="utf-8"))
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(prose)}
    assert [p.name for p in pages if p.resolve() not in linked] == []


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_link_checker_reports_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `make demo` run, step 2\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#the-make-demo-run-step-2) [ok](#page) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) `[not a link](nowhere.md)`\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2 and "missing.md does not exist" in problems[0] and "#nope" in problems[1]


# ---- flags of `hf-reflow <command>` lines -----------------------------------------------------------

INVOCATION = re.compile(r"(?:(?<![\w.=-])hf-reflow|-m hf_reflow)\s+([a-z][\w-]*)(?:[ \t]+([a-z][\w-]*))?")
FLAG = re.compile(r"(?:^|(?<=[\s\[(]))--([A-Za-z_][\w.-]*)")
SECTION_PLACEHOLDER = re.compile(r"^(.+)\.<(\w+)>$")  # `--reflow.<key>`, `--policy.<field>` in --help


@functools.cache
def command_options() -> dict[str, frozenset[str]]:
    """Option names of every command, read from the text `hf-reflow <command> --help` prints (`--name`,
    `--config_path` / `--config`, the aliases, and `section.<key>` / `policy.<field>` placeholders)."""
    options: dict[str, set[str]] = {}
    for name, run in cli.COMMANDS.items():
        try:
            run(["--help"])
        except HelpRequested as e:
            text = str(e)
        else:
            raise AssertionError(f"hf-reflow {name} --help printed no help")
        command = name
        for line in text.split("\n"):
            usage = re.match(r"^usage: hf-reflow (.+?) \[--config_path", line)
            if usage:  # `dataset --help` prints `dataset metaworld`'s and `dataset toy`'s
                command = usage.group(1)
                options.setdefault(command, set())
            elif re.match(r"^  (-h, )?--", line):
                options[command] |= set(re.findall(r"--([\w.<>]+)", line))
    return {command: frozenset(names) for command, names in options.items()}


def flag_problem(command: str, flag: str) -> str | None:
    """None when `hf-reflow <command>` accepts `--flag` (its name only; values are not checked)."""
    options = command_options()
    if command not in options:
        return f"unknown command `hf-reflow {command}` (commands: {', '.join(sorted(options))})"
    name = flag.replace("-", "_").rstrip(".")  # the parser reads `-` in names as `_`
    if name in options[command] or name.endswith(".discover_packages_path"):  # a LeRobot plugin import
        return None
    for option in options[command]:
        section = SECTION_PLACEHOLDER.match(option)
        if section and (name == section.group(1) or name.startswith(section.group(1) + ".")):
            rest = name[len(section.group(1)) + 1 :]
            if section.group(2) == "key" and rest:  # a pipeline stage section holds `hf-reflow train` options
                return flag_problem("train", rest) and f"--{flag}: {rest} is not an `hf-reflow train` option"
            return None  # `policy.<field>`: fields of the policy type's LeRobot config class
    return f"`hf-reflow {command}` has no option --{flag}"


def invocations(snippet: str) -> list[tuple[str, list[str]]]:
    """(command, flags) of each `hf-reflow <command> ...` (or `-m hf_reflow <command>`) in a snippet."""
    found = list(INVOCATION.finditer(snippet))
    out = []
    for i, match in enumerate(found):
        first, second = match.group(1), match.group(2)
        command = f"{first} {second}" if first in ("dataset", "couplings") and second else first
        end = found[i + 1].start() if i + 1 < len(found) else len(snippet)
        out.append((command, FLAG.findall(snippet[match.end() : end])))
    return out


def snippets(text: str) -> list[str]:
    """Shell snippets of a markdown text: each logical line of a code block (`\\` continuations joined,
    a `# comment` set apart, its inline code kept) and each inline code span of the prose."""
    prose, code = split_code(text)
    out = []
    for line in re.sub(r"\\\n", " ", "\n".join(code)).split("\n"):
        comment = re.search(r"(?:^|\s)#", line)
        out.append(line[: comment.start()] if comment else line)
        out += re.findall(r"`([^`]+)`", line[comment.start() :]) if comment else []
    for paragraph in re.split(r"\n\s*\n", prose):
        out += re.findall(r"`([^`]+)`", paragraph.replace("\n", " "))
    return out


def flag_problems(text: str) -> list[str]:
    """One line per unknown command or flag in a markdown text."""
    problems = []
    for snippet in snippets(text):
        for command, flags in invocations(snippet):
            if command not in command_options():
                flags = [""]  # reported once, as an unknown command
            found = dict.fromkeys(flag_problem(command, flag) for flag in flags)
            problems += [f"{problem} (in: {snippet.strip()[:120]})" for problem in found if problem]
    return problems


def test_help_lists_every_command() -> None:
    options = command_options()
    assert {c.split()[0] for c in options} == set(cli.COMMANDS)
    train = {"steps", "teacher.path", "teacher_model_path", "config_path", "config", "help", "policy.<field>"}
    assert train <= options["train"]
    assert {"reflow.<key>", "push.hub_model_id"} <= options["pipeline"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_flags_exist(path: Path) -> None:
    assert flag_problems(path.read_text(encoding="utf-8")) == []


def test_docs_quote_commands() -> None:
    """The flag check is not vacuous: the docs quote many commands, every one of them."""
    texts = [path.read_text(encoding="utf-8") for path in markdown_files()]
    found = [inv for text in texts for snippet in snippets(text) for inv in invocations(snippet)]
    assert len(found) > 30
    quoted = {command for command, _ in found}
    assert {"train", "pipeline", "eval", "push", "space", "couplings generate", "dataset metaworld"} <= quoted


def test_flag_checker_reports_misspelt_flags() -> None:
    text = (
        "Run `hf-reflow train --stpes=3` or:\n\n```bash\n"
        "hf-reflow train --steps=3 --teacher_model_path=x --policy.hidden_dim=8 --save-every=5\n"
        "hf-reflow pipeline --seeds=0,1 --reflow.coupling_reuse=4 --reflow.stepz=5 \\\n  --push.hub_modelid=a/b\n"
        "accelerate launch -m hf_reflow couplings generate --teacher.path=x --outptu=y"
        "   # then `hf-reflow space --push`\n"
        "hf-reflow dataset toy --root=d; hf-reflow nonsense --x=1\n```\n"
    )
    problems = [problem.split(" (in: ")[0] for problem in flag_problems(text)]
    assert len(problems) == 5, problems
    for wrong in ("--stpes", "--reflow.stepz", "--push.hub_modelid", "--outptu", "hf-reflow nonsense"):
        assert sum(wrong in problem for problem in problems) == 1, (wrong, problems)
