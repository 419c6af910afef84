"""The docs cannot drift from the code unnoticed: docs/configuration.md lists every key of srpipe/config.py with its
type and default, every relative link of README.md and docs/*.md leads to a file (and heading) that exists, and the
README stays a short front page that links every docs page."""

import dataclasses
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from srpipe.config import Config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
REFERENCE = DOCS / "configuration.md"
# linked before they exist: another change is writing them; the link is checked like any other once the file is there
PENDING = {"docs/layout.md"}
README_MAX_LINES = 200

_ROW = re.compile(r"^\| `([A-Za-z_][\w.]*)` \|(.*)$", re.M)  # a reference row: | `section.key` | type | default | ...
_CELL = re.compile(r"(?<!\\)\|")  # a cell border; `\|` is a pipe inside a cell
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, ...


def toml_type(hint: Any) -> str:
    """How a config field's type reads to someone writing TOML: 'number', 'list of 2 strings', 'one of `"a"`, ...'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(toml_type(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {toml_type(args[0])}s"
        kinds = {toml_type(a) for a in args}
        if len(kinds) == 1:
            return f"list of {len(args)} {kinds.pop()}s"
        return "list of " + ", ".join(toml_type(a) for a in args)
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[hint]


def toml_value(value: Any) -> str:
    """`value` written as a TOML value (strings in double quotes, tuples as arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def config_keys() -> dict[str, tuple[str, str]]:
    """{key: (type, default)} of every config key, `section.key` or a top-level `key`, as the reference shows them."""
    keys = {}

    def add(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                add(hints[f.name], f"{f.name}.")
            else:
                keys[prefix + f.name] = (toml_type(hints[f.name]), f"`{toml_value(f.default)}`")

    add(Config, "")
    return keys


def documented_keys(text: str) -> tuple[dict[str, tuple[str, str, str]], list[str]]:
    """({key: (type, default, meaning)} of the reference rows in `text`, [each key listed more than once])."""
    rows, twice = {}, []
    for key, rest in _ROW.findall(text):
        cells = [c.strip() for c in _CELL.split(rest)]
        if key in rows:
            twice.append(key)
        rows[key] = tuple([*cells, "", "", ""][:3])
    return rows, twice


def reference_problems(text: str) -> list[str]:
    """What in the reference `text` disagrees with srpipe/config.py, each with the row that config.py implies."""
    expected = config_keys()
    rows, twice = documented_keys(text)
    problems = [f"`{key}` is listed more than once" for key in twice]
    for key in expected.keys() - rows.keys():
        kind, default = expected[key]
        problems.append(f"missing key; add: | `{key}` | {kind} | {default} | (its meaning) |")
    problems += [f"`{key}` is no config key (config.py has none of that name)" for key in rows.keys() - expected.keys()]
    for key in expected.keys() & rows.keys():
        kind, default, meaning = rows[key]
        if (kind, default) != expected[key]:
            problems.append(f"`{key}`: documented as {kind} {default}; config.py: {' '.join(expected[key])}")
        if not meaning:
            problems.append(f"`{key}` has no meaning")
    return sorted(problems)


def test_the_configuration_reference_lists_every_key_with_its_type_and_default():
    """docs/configuration.md and config.py's dataclasses hold the same keys, types and defaults, in both directions."""
    problems = reference_problems(REFERENCE.read_text())
    assert not problems, "docs/configuration.md against srpipe/config.py:\n" + "\n".join(problems)


def test_the_reference_check_sees_a_missing_an_extra_and_a_changed_key():
    """The check above can fail: a row taken out, a row for no key, a changed type or default are each found."""
    text = REFERENCE.read_text()
    assert not reference_problems(text)
    without = re.sub(r"^\| `source\.seed` \|.*\n", "", text, flags=re.M)
    assert any("missing key" in p and "`source.seed`" in p for p in reference_problems(without))
    extra = text + "\n| `source.no_such_key` | integer | `0` | nothing |\n"
    assert any("`source.no_such_key` is no config key" in p for p in reference_problems(extra))
    changed = text.replace("| `train.epochs` | integer | `50` |", "| `train.epochs` | integer | `40` |")
    assert changed != text and any("`train.epochs`: documented as" in p for p in reference_problems(changed))
    retyped = text.replace("| `train.lr` | number |", "| `train.lr` | integer |")
    assert retyped != text and any("`train.lr`: documented as" in p for p in reference_problems(retyped))
    nothing = re.sub(r"^(\| `train\.seed` \|[^|]*\|[^|]*\|).*$", r"\1  |", text, flags=re.M)
    assert any("`train.seed` has no meaning" in p for p in reference_problems(nothing))


_FILE_SUFFIXES = {"pt", "py", "json", "toml", "tif", "h5", "md", "csv", "png"}  # `model.pt` is a file, not a key


def unknown_keys(text: str) -> list[str]:
    """Each `section.key` written in `text` that is neither a config key nor a property of its section's dataclass."""
    hints = typing.get_type_hints(Config)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}
    known = config_keys()
    found = re.findall(r"`(" + "|".join(sections) + r")\.(\w+)", text)
    return [
        f"{section}.{name}"
        for section, name in found
        if f"{section}.{name}" not in known
        and name not in _FILE_SUFFIXES
        and not isinstance(getattr(sections[section], name, None), property)
    ]


def test_every_config_key_named_in_the_readme_and_the_docs_exists():
    """A key renamed or removed in config.py cannot live on in the prose or the key tables of README.md and docs/."""
    problems = {page.name: unknown_keys(page.read_text()) for page in pages()}
    problems = {name: keys for name, keys in problems.items() if keys}
    assert not problems, f"keys that srpipe/config.py does not have: {problems}"
    assert unknown_keys("`train.epochs`, `loss.scored_border_px`, `model.pt`, `train.epoch`") == ["train.epoch"]


def _prose(text: str) -> str:
    """`text` without fenced code blocks and code spans, where brackets are code, not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """The heading anchors of a Markdown page as GitHub makes them (lower case, punctuation dropped, spaces -> '-')."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", _FENCE.sub("", text), re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").lower()).replace(" ", "-") for h in headings}


def link_problems(page: Path, repo: Path = REPO) -> list[str]:
    """'page: target: what' for each relative link of `page` whose file or heading does not exist."""
    problems = []
    for target in _LINK.findall(_prose(page.read_text())):
        if _SCHEME.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(repo)}: {target}"
        if not file.is_relative_to(repo):
            problems.append(f"{where}: outside the repository")
        elif not file.exists():
            if file.relative_to(repo).as_posix() not in PENDING:
                problems.append(f"{where}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{where}: no heading '{anchor}' in {file.relative_to(repo)}")
    return problems


def pages(repo: Path = REPO) -> list[Path]:
    """README.md and every docs page."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def test_every_relative_link_of_the_readme_and_the_docs_leads_somewhere():
    """Each relative link (and #heading) of README.md and docs/*.md names a file (and heading) that exists."""
    problems = [p for page in pages() for p in link_problems(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_finds_a_missing_file_a_missing_heading_and_a_way_out(tmp_path):
    """The check above can fail; links inside code, URLs and the pending pages are left alone."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its `first` part (here)\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/a.md) [ok](docs/a.md#its-first-part-here) [ok](#top) [ok](https://example.org/x.md)\n"
        "[pending](docs/layout.md) `[code](docs/none.md)`\n```\n[code](docs/none.md)\n```\n"
        f"[gone](docs/b.md) [bad heading](docs/a.md#its-second-part) [out]({os.pardir}/x.md)\n# Top\n"
    )
    problems = link_problems(tmp_path / "README.md", tmp_path)
    assert [p.split(": ")[1] for p in problems] == ["docs/b.md", "docs/a.md#its-second-part", f"{os.pardir}/x.md"]


def _section(text: str, heading: str) -> str:
    """The body of the `## heading` section of `text`, up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def test_the_readme_is_a_short_front_page_with_the_two_commands_and_a_link_to_every_docs_page():
    """README.md: at most 200 lines; its set-up block is `make demo` and `make test`; a Tests section says what
    `make test` runs; every docs page (the configuration reference too) is linked from it."""
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, f"README.md has {len(text.splitlines())} lines"
    block = re.search(r"```sh\n(.*?)```", _section(text, "Two commands"), re.S)
    assert block, "README.md, Two commands: no sh block"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    tests = _section(text, "Tests")
    assert "`make test`" in tests and "pytest" in tests
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _LINK.findall(_prose(text))}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
