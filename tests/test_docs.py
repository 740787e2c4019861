"""The README and docs/ name only things that exist.

Every fenced code block in README.md and docs/*.md must say its language. In the shell blocks
(bash, sh, shell, console) each command is checked for what it names:

- files and folders of this repository (``deploy/tls.sh``, ``presets/tutorial.toml``), unless git
  ignores them (run folders, certificates: things the commands make) or an earlier command of the
  same block writes them (``> deploy/nodes.yml``);
- ``python -m MODULE``: the module resolves from the repository root (without running it), and a
  package has a ``__main__``; ``python -c CODE``: every module it imports resolves;
- ``make TARGET``: the target is in the Makefile;
- the ``--options`` given to this project's own command lines (``python -m launcher.simulate``,
  ``report``, ``autoencoder ...``, ``benchmarks.perf``, ``deploy/*.py``, ``deploy/*.sh``) appear in
  that command's ``--help`` (Python) or in the script's option parsing (shell);
- ``--run-config "key=value ..."``: every key is a knob of ``[tool.flwr.app.config]``;
- placeholders are plain shell words (``RUN_DIR``), never ``<run-dir>``, so a command can be pasted.

Every relative link (and image) must point to a file that exists, and a ``#fragment`` to a heading
of that file. The README must stay short.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
OTHER_LANGUAGES = {"text", "mermaid", "toml", "python", "json", "yaml", "diff"}

# Commands left unchecked, each with the reason. Only for commands whose words stand for the
# reader's own values in a way the checks below cannot tell from a mistake. Keys: the command line
# as the docs write it (after joining continuation lines).
SKIP: dict[str, str] = {}

# Relative words with these endings are taken for files of the repository wherever they are.
SOURCE_SUFFIXES = (".py", ".sh", ".toml", ".yml", ".yaml", ".md", ".txt", ".cfg", ".json")
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python", ".venv/bin/python3"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
REDIRECTS_OUT = {">", ">>", ">&", "&>", ">|"}
PLACEHOLDER = re.compile(r"(?<![\w<>&])<[A-Za-z][\w .-]*>")


# ---------------------------------------------------------------- reading the docs


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    language: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    text: str  # the logical line, continuations joined

    @property
    def where(self) -> str:
        return f"{rel(self.doc)}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def fenced_blocks(doc: Path) -> list[Block]:
    blocks, lines = [], doc.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        blocks.append(Block(doc, i + 1, language.lower(), tuple(body)))
        i = j + 1
    return blocks


def commands_of(block: Block) -> list[Command]:
    """The logical command lines of a shell block: ``\\`` continuations joined; in a console block
    only the lines after a ``$`` prompt."""
    commands, pending, start = [], "", 0
    for offset, raw in enumerate(block.lines, start=block.line + 1):
        line = raw
        if not pending:
            if block.language == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append(Command(block.doc, start, (pending + line).strip()))
        pending = ""
    if pending:
        commands.append(Command(block.doc, start, pending.strip()))
    return commands


def all_blocks() -> list[Block]:
    return [block for doc in DOCS for block in fenced_blocks(doc)]


def all_commands() -> list[Command]:
    return [c for block in all_blocks() if block.language in SHELL_LANGUAGES for c in commands_of(block)]


def simple_commands(text: str) -> list[list[str]]:
    """Split a command line into simple commands (at pipes, ``&&``, ``;``), words unquoted,
    comments dropped. Redirections stay as words (``>``, then the file)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    result: list[list[str]] = [[]]
    for word in lexer:
        if word in SEPARATORS:
            result.append([])
        else:
            result[-1].append(word)
    return [words for words in result if words]


# ---------------------------------------------------------------- what exists


@functools.cache
def git_ignored(path: str) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT, capture_output=True)
    return done.returncode == 0


@functools.cache
def make_targets() -> frozenset[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile, flags=re.M))


@functools.cache
def run_config_keys() -> frozenset[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return frozenset(pyproject["tool"]["flwr"]["app"]["config"])


@functools.cache
def module_resolves(name: str, as_main: bool = False) -> bool:
    """Whether ``python -m NAME`` (as_main) or ``import NAME`` would find it, from the repository
    root, without running the module or its packages."""
    parts = name.split(".")
    spec = PathFinder.find_spec(parts[0], [str(ROOT)]) or importlib.util.find_spec(parts[0])
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return False
        spec = PathFinder.find_spec(part, list(spec.submodule_search_locations))
    if spec is not None and as_main and spec.submodule_search_locations:
        return PathFinder.find_spec("__main__", list(spec.submodule_search_locations)) is not None
    return spec is not None


def looks_like_repo_path(word: str) -> bool:
    if not word or word[0] in "-/~$" or "$" in word or "://" in word or "=" in word or ":" in word:
        return False
    if word in {".", ".."}:
        return True
    first = word.split("/")[0]
    return ("/" in word and (ROOT / first).exists()) or word.rstrip("/").endswith(SOURCE_SUFFIXES)


def path_problem(word: str, written: set[str]) -> str | None:
    """Why a word that names a repository path does not resolve, or None."""
    if word.startswith(".venv/bin/"):  # the environment the tests run in stands for .venv
        name = word.removeprefix(".venv/bin/")
        return None if (Path(sys.executable).parent / name).exists() else f"{word}: no {name} in the environment"
    if not looks_like_repo_path(word) or word.rstrip("/") in written or git_ignored(word.rstrip("/")):
        return None
    return None if (ROOT / word).exists() else f"{word} does not exist"


# ---------------------------------------------------------------- this project's command lines


@dataclass(frozen=True)
class Cli:
    """One of this project's command lines."""

    kind: str  # "module", "script.py" or "script.sh"
    target: str  # the module, or the script's path
    sub: str = ""  # a subcommand (python -m autoencoder encode)

    @property
    def name(self) -> str:
        return " ".join(filter(None, ["python -m" if self.kind == "module" else "", self.target, self.sub]))


# Runs in one child process: every --help page asked for, with the imports (PyTorch) shared.
HELP_PAGES = """
import contextlib, io, json, os, runpy, sys
pages = {}
for kind, target, sub in json.loads(sys.argv[1]):
    sys.argv = [target, *([sub] if sub else []), "--help"]
    out, code = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
                runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code = repr(exc)
    pages[json.dumps([kind, target, sub])] = [code in (0, None), out.getvalue()]
json.dump(pages, sys.__stdout__)
"""

_help_pages: dict[Cli, tuple[bool, str]] = {}


def ask_for_help(clis: set[Cli]) -> None:
    """Fill the --help pages of these Python command lines, all in one child process."""
    wanted = sorted({c for c in clis if c.kind != "script.sh"} - set(_help_pages), key=str)
    if not wanted:
        return
    argv = [sys.executable, "-c", HELP_PAGES, json.dumps([[c.kind, c.target, c.sub] for c in wanted])]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"asking for --help pages failed:\n{done.stderr[-2000:]}"
    for key, (ok, text) in json.loads(done.stdout).items():
        _help_pages[Cli(*json.loads(key))] = (ok, text)


def help_text(cli: Cli) -> tuple[str, str]:
    """(the --help page, an error) of a Python command line, run from the repository root."""
    ask_for_help({cli})
    ok, text = _help_pages[cli]
    return (text, "") if ok else ("", f"{cli.name} --help failed: {text.strip()[-500:]}")


def subcommands(cli: Cli) -> frozenset[str]:
    if cli.kind == "script.sh" or cli.sub:
        return frozenset()
    usage = re.search(r"\{([\w,-]+)\}", help_text(cli)[0])
    return frozenset(usage.group(1).split(",")) if usage else frozenset()


def options(cli: Cli) -> tuple[frozenset[str], str]:
    """(the --options a command line takes, an error): from --help for Python, from the option
    parsing (``--flag)``, ``--flag |``, ``== --flag``) for shell scripts."""
    if cli.kind == "script.sh":
        source = (ROOT / cli.target).read_text(encoding="utf-8")
        found = re.findall(r"(--[A-Za-z0-9][\w-]*)\s*(?:\)|\|)", source)
        found += re.findall(r"==\s*(--[A-Za-z0-9][\w-]*)", source)
        return frozenset(found), ""
    text, error = help_text(cli)  # argparse lists each option at the start of a line: "  -h, --help"
    return frozenset(re.findall(r"^\s+(?:-\w\S*,\s+)*(--[A-Za-z0-9][\w-]*)", text, flags=re.M)), error


@dataclass
class Invocation:
    """A simple command, read: what it runs and with which words."""

    words: list[str]
    cli: Cli | None = None
    module: str = ""
    code: str = ""
    args: tuple[str, ...] = ()
    direct: bool = False  # a script run by its path, so it must be executable


def read_invocation(words: list[str]) -> Invocation:
    """Drop ``VAR=value`` prefixes and ``sudo``/``env``/``export``; find a project command line."""
    words = list(words)
    while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in {"sudo", "env", "export"}):
        words.pop(0)
    inv = Invocation(words)
    if not words:
        return inv
    head, rest = words[0], words[1:]
    if head in PYTHONS:
        if rest[:1] == ["-m"] and len(rest) > 1:
            inv.module, inv.args = rest[1], tuple(rest[2:])
            if (ROOT / inv.module.split(".")[0]).is_dir() and module_resolves(inv.module, as_main=True):
                inv.cli = Cli("module", inv.module)
        elif rest[:1] == ["-c"] and len(rest) > 1:
            inv.code = rest[1]
        elif rest and rest[0].endswith(".py") and (ROOT / rest[0]).is_file():
            inv.cli, inv.args = Cli("script.py", rest[0]), tuple(rest[1:])
    elif head.endswith((".sh", ".py")) and (ROOT / head).is_file():
        inv.cli, inv.args, inv.direct = Cli(f"script{Path(head).suffix}", head), tuple(rest), True
    return inv


def first_word(args: tuple[str, ...]) -> list[str]:
    """The word a subcommand would be: the first argument, unless it is an option."""
    return [args[0]] if args and not args[0].startswith("-") else []


def with_subcommand(cli: Cli, args: tuple[str, ...]) -> Cli:
    if first_word(args) and args[0] in subcommands(cli):
        return Cli(cli.kind, cli.target, args[0])
    return cli


@pytest.fixture(scope="module")
def help_pages():
    """Ask every project command line the docs use for its --help page, with its first word too
    (a subcommand such as ``autoencoder encode``, or a run folder, which argparse takes before
    --help), all at once."""
    clis = set()
    for command in all_commands():
        for words in simple_commands(command.text):
            if (inv := read_invocation(words)).cli:
                clis |= {inv.cli, *(Cli(inv.cli.kind, inv.cli.target, w) for w in first_word(inv.args))}
    ask_for_help(clis)


# ---------------------------------------------------------------- checking one command


def problems_of(command: Command, written: set[str]) -> list[str]:
    try:
        plain_words = shlex.split(command.text, comments=True)
    except ValueError as exc:  # an unclosed quote
        return [f"not a valid shell command: {exc}"]
    problems = [
        f"placeholder {m.group()}: write a shell word such as RUN_DIR instead"
        for word in plain_words
        if (m := PLACEHOLDER.search(word))
    ]
    for words in simple_commands(command.text):
        # Redirections: the file after > is written (checked by nobody), after < read.
        kept, i = [], 0
        while i < len(words):
            if words[i] in REDIRECTS_OUT and i + 1 < len(words):
                written.add(words[i + 1].rstrip("/"))
                i += 2
                continue
            kept.append(words[i])
            i += 1
        words = [w for w in kept if w != "<"]
        for word in words:
            values = word.split("=", 1)[1].split(":") if re.match(r"^[A-Za-z_]\w*=", word) else [word]
            problems += [p for v in values if (p := path_problem(v, written))]
        inv = read_invocation(words)
        if not inv.words:
            continue
        if inv.words[0] == "make":
            problems += [
                f"make {t}: no such target in the Makefile"
                for t in inv.words[1:]
                if not t.startswith("-") and "=" not in t and t not in make_targets()
            ]
        if inv.module and not module_resolves(inv.module, as_main=True):
            problems.append(f"python -m {inv.module}: no such module")
        if inv.code:
            for node in ast.walk(ast.parse(inv.code)):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                )
                problems += [f"python -c: cannot import {n}" for n in names if not module_resolves(n)]
        args = inv.args if inv.cli else tuple(inv.words[1:])
        for i, word in enumerate(args):
            if word == "--run-config" and i + 1 < len(args) and not args[i + 1].endswith(".toml"):
                keys = [pair.split("=", 1)[0] for pair in shlex.split(args[i + 1])]
                problems += [
                    f"--run-config: no knob {k!r} in [tool.flwr.app.config]" for k in keys if k not in run_config_keys()
                ]
        if inv.cli:
            cli = with_subcommand(inv.cli, inv.args)
            known, error = options(cli)
            problems += (
                [error]
                if error
                else [
                    f"{cli.name}: no option {o}"
                    for o in (a.split("=", 1)[0] for a in inv.args if a.startswith("--"))
                    if o not in known
                ]
            )
            if inv.direct and not os.access(ROOT / cli.target, os.X_OK):
                problems.append(f"{cli.target} is run by its path but is not executable")
    return problems


# ---------------------------------------------------------------- the tests


def test_every_fenced_block_says_its_language():
    unnamed = [f"{rel(b.doc)}:{b.line}" for b in all_blocks() if b.language not in SHELL_LANGUAGES | OTHER_LANGUAGES]
    assert not unnamed, f"fenced blocks without a known language (bash, text, ...): {unnamed}"


def test_the_docs_have_shell_commands_to_check():
    commands = all_commands()
    assert len(commands) > 20
    assert any(c.text.startswith("make run") for c in commands if c.doc.name == "README.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_names_what_exists(doc, help_pages):
    problems = []
    for block in fenced_blocks(doc):
        if block.language not in SHELL_LANGUAGES:
            continue
        written: set[str] = set()
        for command in commands_of(block):
            if command.text in SKIP:
                continue
            problems += [f"{command.where}: {p}\n    {command.text}" for p in problems_of(command, written)]
    assert not problems, "\n".join(problems)


def test_the_skip_list_is_small_and_still_needed():
    texts = {c.text for c in all_commands()}
    assert len(SKIP) <= 5
    assert all(reason.strip() for reason in SKIP.values())
    assert not set(SKIP) - texts, f"skipped commands no longer in the docs: {set(SKIP) - texts}"


# ---------------------------------------------------------------- links


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def without_fences(doc: Path) -> list[str]:
    """The lines of a document, its fenced blocks blanked out."""
    kept, fence = [], None
    for line in doc.read_text(encoding="utf-8").splitlines():
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(2)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            kept.append(line)
            continue
        kept.append("")
    return kept


def prose(doc: Path) -> str:
    """The text of a document without its fenced blocks and inline code."""
    return "\n".join(re.sub(r"`+[^`]*`+", "", line) for line in without_fences(doc))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(doc: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", "\n".join(without_fences(doc)), flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return frozenset(result)


def link_problems(doc: Path) -> list[str]:
    problems = []
    text = prose(doc)
    for target in LINK.findall(text) + REFERENCE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        where = f"{rel(doc)}: ({target})"
        if not path.exists():
            problems.append(f"{where}: {path_part} does not exist")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{where}: no heading #{fragment} in {rel(path)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    problems = link_problems(doc)
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    readme = prose(ROOT / "README.md")
    missing = [p.name for p in DOCS[1:] if f"(docs/{p.name}" not in readme]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


def test_the_checks_catch_what_does_not_exist(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        "# A title\n\n[ok](page.md#a-title) [gone](nowhere.md) [bad](page.md#missing)\n\n"
        "```bash\n"
        "make run\n"
        "make nosuchtarget\n"
        "deploy/tls.sh --nodes 3 --nosuchflag\n"
        ".venv/bin/python -m launcher.simulate --num-supernodes 2 --run-config presets/nosuch.toml\n"
        '.venv/bin/python -m launcher.simulate --run-config "num-server-rounds=1 no-such-knob=2"\n'
        ".venv/bin/python -m launcher.nosuchmodule\n"
        ".venv/bin/python -m report outputs/<run-name>\n"
        "```\n"
    )
    assert link_problems(doc) == [
        f"{doc}: (nowhere.md): nowhere.md does not exist",
        f"{doc}: (page.md#missing): no heading #missing in {doc}",
    ]
    (block,) = fenced_blocks(doc)
    found = [problems_of(c, set()) for c in commands_of(block)]
    assert found == [
        [],
        ["make nosuchtarget: no such target in the Makefile"],
        ["deploy/tls.sh: no option --nosuchflag"],
        ["presets/nosuch.toml does not exist"],
        ["--run-config: no knob 'no-such-knob' in [tool.flwr.app.config]"],
        ["python -m launcher.nosuchmodule: no such module"],
        ["placeholder <run-name>: write a shell word such as RUN_DIR instead"],
    ]
