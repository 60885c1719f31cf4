"""The manual pages and the admin guide's key table: made by docs/generate.py
from the parsers behind ``--help`` and from the config's keys, committed,
kept up to date with their sources, installed by the documented install
step, and rendered by man(1) without a warning.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "docs"))
import generate  # noqa: E402 - docs/ is no package

PAGES = sorted((REPO / "docs" / "man").glob("*.[0-9]"))
ADMIN = REPO / "docs" / "admin.md"
MAN_ENV = {"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat", "PAGER": "cat"}


def render(*args: str) -> subprocess.CompletedProcess:
    """``man`` with every groff warning on (``-ww``), as a reader's terminal would run it."""
    return subprocess.run(["man", "--warnings=w", *args], capture_output=True, text=True, env=MAN_ENV, timeout=60)


def test_the_committed_pages_and_key_table_are_what_their_sources_make():
    """Change a parser, a config key or a page source, and this fails until
    ``.venv/bin/python docs/generate.py`` has been run and its output committed."""
    out = subprocess.run([sys.executable, str(REPO / "docs" / "generate.py"), "--check"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {page.name for page in PAGES} == {"booster.8", "booster.toml.5", "invoker.8"} | \
        {source.name.removesuffix(".md") for source in generate.SOURCES.glob("*.md")}


def test_a_command_added_to_a_parser_appears_in_its_page(monkeypatch):
    """Nothing in the generator names a command: whatever build_parser holds is in the page."""
    from booster.cli import build_parser

    def with_one_more(prog: str) -> argparse.ArgumentParser:
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        added = commands.add_parser(
            "frobnicate", help="frobnicate an instance", formatter_class=argparse.RawDescriptionHelpFormatter,
            description="Frobnicate USER's instance.  Twice if need be.",
            epilog="exit status:\n  0  frobnicated\n  4  too much")
        added.add_argument("user", metavar="USER", help="whose")
        added.add_argument("--hard", action="store_true", help="harder than --soft")
        return parser

    monkeypatch.setattr(generate, "parser_of", with_one_more)
    name, text = generate.page(generate.SOURCES / "booster.8.md")
    assert text != (generate.MAN / name).read_text()  # so --check would say the page is out of date
    synopsis = text.split('.SH "SYNOPSIS"')[1].split(".SH")[0]
    assert "\\fBfrobnicate\\fR [\\fB\\-\\-hard\\fR] \\fIUSER\\fR" in synopsis
    section = text.split('.SS "frobnicate"')[1].split(".SS")[0]
    assert "Frobnicate USER's instance.\nTwice if need be." in section
    assert "\\fB\\-\\-hard\\fR\nharder than \\fB\\-\\-soft\\fR" in section
    assert "\\fB4\\fR\ntoo much" in section


def test_every_config_key_has_exactly_one_meaning(monkeypatch):
    import dataclasses

    from common import config, config_doc

    rows = generate.config_keys()
    assert [name for names, *_ in rows for name in names] == [f.name for f in dataclasses.fields(config.Config)]
    assert all(meaning for *_, meaning in rows)
    table = generate.admin_table()
    assert all(f"`{f.name}`" in table for f in dataclasses.fields(config.Config))

    without_socket = tuple(k for k in config_doc.KEYS if k.names != ("socket",))
    monkeypatch.setattr(config_doc, "KEYS", without_socket)
    with pytest.raises(generate.SourceError, match="no meaning in common/config_doc.py for socket"):
        generate.config_keys()
    monkeypatch.setattr(config_doc, "KEYS", (config_doc.Key("sockett", "typo"),) + config_doc.KEYS)
    with pytest.raises(generate.SourceError, match="names keys Config does not have: sockett"):
        generate.config_keys()


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_a_page_renders_without_a_warning(page):
    out = render("-l", str(page))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith(page.name.rpartition(".")[0].upper() + "(")
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert f"\n{heading}\n" in out.stdout, heading


def test_the_render_check_sees_a_broken_page(tmp_path):
    """What the check above would catch: an unknown macro, a font left open."""
    broken = tmp_path / "broken.8"
    broken.write_text('.TH BROKEN 8\n.SH NAME\nbroken \\- a page\n.XX\n.SH SYNOPSIS\n\\fBbold\n.TP\n')
    assert "warning: macro 'XX' not defined" in render("-l", str(broken)).stderr


def test_the_rendered_pages_say_what_the_code_says():
    """Spot checks through man itself: every command of each parser, every config key."""
    import dataclasses

    from booster.cli import build_parser as booster_parser
    from common import config
    from invoker.cli import build_parser as invoker_parser

    for page, parser in (("booster.8", booster_parser()), ("invoker.8", invoker_parser())):
        shown = render("-l", str(REPO / "docs" / "man" / page)).stdout
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        for name in commands:
            assert re.search(rf"^       {parser.prog} {re.escape(name)}\b", shown, re.M), (page, name)
            assert f"\n   {name}\n" in shown, (page, name)
    keys = render("-l", str(REPO / "docs" / "man" / "booster.toml.5")).stdout
    for field in dataclasses.fields(config.Config):
        assert re.search(rf"^       {field.name} = ", keys, re.M), field.name


def test_the_hook_options_and_module_arguments_are_those_the_code_reads():
    """invoker(8) lists them by hand (the hook parses its argv itself, for
    speed): every one the code accepts, and no other."""
    from invoker import hook, pam_hooks

    source = (generate.SOURCES / "invoker.8.md").read_text()

    def terms(section: str) -> set[str]:
        body = source.split(f"# {section}\n")[1].split("\n# ")[0]
        return {m.group(1) for m in re.finditer(r"^`([^`]+)`$", body, re.M)}

    hook_options = {term.split()[0] for term in terms("HOOK OPTIONS")}
    assert hook_options == {f"--{name}" for name in hook.Options.__slots__}
    module_arguments = {term.partition("=")[0] for term in terms("MODULE ARGUMENTS")}
    assert module_arguments == set(pam_hooks.options(["pam_module.py"]))


def test_the_installed_package_carries_the_pages_and_shipped_files():
    """What pip put in the virtualenv (the data files of pyproject.toml) is
    what the repository holds."""
    for page in PAGES:
        installed = Path(sys.prefix) / "share" / "man" / f"man{page.suffix[1:]}" / page.name
        assert installed.read_bytes() == page.read_bytes(), installed
    shipped = REPO / "systemd-dinit"
    installed = Path(sys.prefix) / "share" / "dinit-booster" / "systemd-dinit"
    for path in shipped.rglob("*"):
        if path.is_file():
            copy = installed / path.relative_to(shipped)
            assert copy.read_bytes() == path.read_bytes(), copy
            assert os.access(copy, os.X_OK) == os.access(path, os.X_OK), copy
    assert (Path(sys.prefix) / "share" / "doc" / "dinit-booster" / "admin.md").read_bytes() == ADMIN.read_bytes()


def install_step() -> list[str]:
    """The lines of the admin guide's install block that place files outside
    the virtualenv (the links), as written."""
    install = ADMIN.read_text().split("\n## Install\n")[1].split("\n#")[0]
    block = [line[4:] for line in install.splitlines() if line.startswith("    ")]
    return [line for line in block if line.startswith(("ln ", "mkdir "))]


def test_the_documented_install_step_makes_man_find_every_page(tmp_path):
    """The guide's link commands, with /usr/local moved to a directory of the
    test's and /opt/dinit-booster being this virtualenv: man finds and renders
    each page there, and the links are what the uninstall's find removes."""
    local = tmp_path / "local"
    (local / "bin").mkdir(parents=True)
    steps = install_step()
    assert steps, "no install step found in docs/admin.md"
    for step in steps:
        command = step.replace("/opt/dinit-booster", sys.prefix).replace("/usr/local", str(local))
        subprocess.run(["sh", "-ec", command], check=True, timeout=30)
    manpath = str(local / "share" / "man")
    for page in PAGES:
        name, _, section = page.name.rpartition(".")
        linked = local / "share" / "man" / f"man{section}" / page.name
        assert linked.is_symlink() and linked.resolve() == (Path(sys.prefix) / "share" / "man" / f"man{section}" /
                                                            page.name).resolve()
        out = render("-M", manpath, section, name)
        assert out.returncode == 0 and out.stderr == "", (page.name, out.stderr)
        assert out.stdout.startswith(name.upper() + "(" + section + ")")
    assert (local / "bin" / "booster").resolve() == (Path(sys.prefix) / "bin" / "booster").resolve()
    version = subprocess.run([str(local / "bin" / "booster"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("booster (dinit-booster)")
    # Uninstall: the guide's find removes exactly the links into the virtualenv.
    unrelated = local / "share" / "man" / "man8" / "other.8"
    unrelated.symlink_to("/usr/share/man/man8/other.8")
    uninstall = next(line for line in uninstall_lines() if line.startswith("find "))
    command = uninstall.replace("/opt/dinit-booster", sys.prefix).replace("/usr/local", str(local))
    subprocess.run(["sh", "-ec", command], check=True, timeout=30)
    left = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_symlink())
    assert left == ["share/man/man8/other.8"], left


def uninstall_lines() -> list[str]:
    """The commands of the admin guide's uninstall block (a code block in a list item)."""
    section = ADMIN.read_text().split("\n## Uninstall\n")[1].split("\n## ")[0]
    return [line.strip() for line in section.splitlines() if line.startswith("       ")]


def test_a_page_of_plain_markdown_is_built_like_the_others(tmp_path):
    """How pam_booster(8) or any page without a parser comes in: its own
    source, nothing but Markdown (and config defaults if it wants them)."""
    source = tmp_path / "pam_example.8.md"
    source.write_text("# NAME\n\npam_example - a module\n\n# SYNOPSIS\n\n"
                      "    session optional pam_example.so [socket=PATH]\n\n"
                      "# DESCRIPTION\n\nIt talks to `{default:socket}`, *quickly*.\n\n"
                      "`socket=PATH`\n: The socket.\n\n- one\n- two\n\n# SEE ALSO\n\nbooster(8).\n")
    name, text = generate.page(source)
    assert name == "pam_example.8"
    page = tmp_path / name
    page.write_text(text)
    out = render("-l", str(page))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "It talks to /run/booster/control.sock, quickly." in out.stdout
    assert "session optional pam_example.so [socket=PATH]" in out.stdout
