"""Manual pages in man(7) roff, from a small Markdown subset and from argparse.

Two kinds of input become roff here:

* Markdown, the subset the page sources in ``docs/man/src`` use: ``#``
  sections, ``##`` subsections, paragraphs, ``-`` lists, definition lists (a
  term line, then lines starting with ``: ``), code blocks indented by four
  spaces, and inline `code`, *emphasis*, **strong** and [links](url) (their
  text only).
* An ``argparse`` parser, read through its actions: the usage line, every
  option with its help, each subcommand's description, and an epilog that
  lists exit codes the way ``booster --help`` shows them (``exit status:``,
  then ``  CODE  meaning`` lines).  Whatever another command adds to a parser
  shows up in the page with no change here.

Roff's own characters are escaped (backslash, a leading dot or quote, and
``-`` as ``\\-`` so options and paths stay plain hyphen-minus for copy and
search).  The text is only reshaped, never reworded.
"""

from __future__ import annotations

import argparse
import re

# --- escaping -------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Plain text for a roff text line (not yet at a line start: see ``line``).
    Characters beyond ASCII become groff's ``\\[uXXXX]``, so that the page
    needs no input encoding."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "".join(ch if ord(ch) < 128 else f"\\[u{ord(ch):04X}]" for ch in text)


def escape_code(text: str) -> str:
    """Literal text: quotes too, so that copying from the page gives what was written."""
    return escape(text).replace("'", "\\(aq").replace("`", "\\(ga")


def line(text: str) -> str:
    """A text line: one starting with ``.`` or ``'`` would be read as a request."""
    return "\\&" + text if text.startswith((".", "'")) else text


def quoted(text: str) -> str:
    """A macro argument."""
    return '"' + escape(text).replace('"', '\\(dq') + '"'


# --- inline Markdown ------------------------------------------------------------------------

_INLINE = re.compile(r"`(?P<code>[^`]+)`"
                     r"|\*\*(?P<strong>[^*]+)\*\*"
                     r"|\*(?P<em>[^*\s][^*]*)\*"
                     r"|\[(?P<link>[^\]]+)\]\([^)]*\)")


def inline(text: str) -> str:
    """Markdown inline text as roff: `code` and **strong** bold, *emphasis* italic."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(escape(text[pos:m.start()]))
        if m.group("code") is not None:
            out.append(f"\\fB{escape_code(m.group('code'))}\\fR")
        elif m.group("strong") is not None:
            out.append(f"\\fB{escape(m.group('strong'))}\\fR")
        elif m.group("em") is not None:
            out.append(f"\\fI{escape(m.group('em'))}\\fR")
        else:
            out.append(inline(m.group("link")))
        pos = m.end()
    out.append(escape(text[pos:]))
    return "".join(out)


# --- block Markdown -------------------------------------------------------------------------


def markdown(lines: list[str]) -> list[str]:
    """The roff lines for Markdown ``lines`` (no directives: see generate.py)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        text = lines[i]
        if not text.strip():
            i += 1
        elif text.startswith("## "):
            out.append(".SS " + quoted(text[3:].strip()))
            i += 1
        elif text.startswith("# "):
            out.append(".SH " + quoted(text[2:].strip().upper()))
            i += 1
        elif text.startswith("    "):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += [".PP", ".RS 4", ".nf", *(line(escape_code(b)) for b in block), ".fi", ".RE"]
        elif text.startswith("- "):
            while i < len(lines) and lines[i].startswith("- "):
                item = [lines[i][2:]]
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                    item.append(lines[i].strip())
                    i += 1
                out += [".IP \\(bu 2", *(line(inline(t)) for t in item)]
                while i < len(lines) and not lines[i].strip():
                    i += 1
            out.append(".PP")  # back to the margin for whatever follows the list
        elif i + 1 < len(lines) and lines[i + 1].startswith(": "):
            while i + 1 < len(lines) and lines[i].strip() and lines[i + 1].startswith(": "):
                out += [".TP", line(inline(lines[i].strip()))]
                i += 1
                while i < len(lines) and (lines[i].startswith(": ") or lines[i].startswith("  ")) \
                        and lines[i].strip():
                    out.append(line(inline(lines[i][2:].strip())))
                    i += 1
                while i < len(lines) and not lines[i].strip():
                    i += 1
            out.append(".PP")
        else:
            out.append(".PP")
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "- ", "    ")):
                out.append(line(inline(lines[i].strip())))
                i += 1
    return _tidy(out)


def _tidy(out: list[str]) -> list[str]:
    """No paragraph break right before or after a heading, or after another (each would be a blank line too many)."""
    tidy: list[str] = []
    for request in out:
        if request == ".PP" and tidy and tidy[-1] == ".PP":
            continue
        if request.startswith((".SH", ".SS")) and tidy and tidy[-1] == ".PP":
            tidy.pop()
        if request == ".PP" and tidy and tidy[-1].startswith((".SH", ".SS")):
            continue  # a heading starts a paragraph of its own
        tidy.append(request)
    while tidy and tidy[-1] == ".PP":
        tidy.pop()
    return tidy


# --- argparse -------------------------------------------------------------------------------

_OPTION = re.compile(r"(?<![\w\\-])(--?[a-z][a-z0-9-]*)")
_USAGE_TOKEN = re.compile(r"--?[A-Za-z][\w-]*|[A-Z][A-Z0-9_]*(?:\.\.\.)?|[a-z][\w-]*|\S")


def _unwrap(text: str) -> list[str]:
    """Prose that argparse prints pre-wrapped: paragraphs joined, then one
    sentence a line (roff spaces sentences only at the end of a line)."""
    # A sentence ends in two spaces (this project's style), or at the end of a
    # wrapped line, where textwrap dropped them.
    return [" ".join(sentence.split()) for p in re.split(r"\n\s*\n", text.strip())
            for sentence in re.split(r"(?<=[.?!])(?: {2,}|\s*\n\s*)", p) if sentence.strip()]


def _prose(text: str) -> str:
    """Help text as roff: options in bold."""
    parts = _OPTION.split(text)
    return "".join(f"\\fB{escape(p)}\\fR" if k % 2 else escape(p) for k, p in enumerate(parts))


def _invocation(text: str) -> str:
    """A usage or an option with its argument: names bold, metavariables italic."""
    out = []
    for m in re.finditer(r"\s+|" + _USAGE_TOKEN.pattern, text):
        token = m.group(0)
        if token.isspace():
            out.append(" ")
        elif re.fullmatch(r"[A-Z][A-Z0-9_]*(?:\.\.\.)?", token):
            out.append(f"\\fI{escape(token)}\\fR")
        elif re.fullmatch(r"--?[A-Za-z][\w-]*|[a-z][\w-]*", token):
            out.append(f"\\fB{escape(token)}\\fR")
        else:
            out.append(escape(token))
    return "".join(out).strip()


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    # Wide enough that argparse never wraps: roff does the filling.
    return parser.formatter_class(prog=parser.prog, width=10_000, max_help_position=10_000)


def _shown(actions) -> list[argparse.Action]:
    return [a for a in actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]


def usage(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's usage (without ``-h``) as a synopsis: ``.SY`` with the
    program's name, its subcommand and arguments, ``.YS``."""
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, _shown(parser._actions), parser._mutually_exclusive_groups, prefix="")
    text = formatter.format_help().strip()
    program, _, rest = text.partition(" ")
    return [".SY " + escape(program), *([line(_invocation(rest))] if rest else []), ".YS"]


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order they were added."""
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        seen = set()
        for name, sub in action.choices.items():
            if id(sub) in seen or helps.get(name) == argparse.SUPPRESS:
                continue  # an alias, or a command kept out of --help
            seen.add(id(sub))
            found.append((name, helps.get(name) or "", sub))
    return found


def synopsis(parser: argparse.ArgumentParser) -> list[str]:
    """One synopsis entry per subcommand (or the parser's own usage if it has none)."""
    return [request for _, _, sub in subcommands(parser) or [("", "", parser)] for request in usage(sub)]


def options(parser: argparse.ArgumentParser) -> list[str]:
    """A ``.TP`` entry per option and positional argument, with its help."""
    formatter = _formatter(parser)
    out = []
    for action in _shown(parser._actions):
        help_text = formatter._expand_help(action) if action.help else ""
        out += [".TP", line(_invocation(formatter._format_action_invocation(action))), *map(line, map(
            _prose, _unwrap(help_text)))]
    return out


def exit_status(epilog: str | None) -> tuple[list[tuple[str, str]], str]:
    """The exit codes an epilog lists (``exit status:``, then ``  CODE  meaning``
    lines, longer meanings continued further in), and any other text in it."""
    if not epilog:
        return [], ""
    head, sep, listing = epilog.partition("exit status:")
    if not sep:
        return [], epilog
    codes: list[tuple[str, str]] = []
    for text in listing.splitlines():
        m = re.match(r"^  (\S+)  (.*)$", text)
        if m:
            codes.append((m.group(1), m.group(2).strip()))
        elif text.strip() and codes:
            codes[-1] = (codes[-1][0], codes[-1][1] + " " + text.strip())
    return codes, head.strip()


def codes_list(codes: list[tuple[str, str]]) -> list[str]:
    out = []
    for code, meaning in codes:
        out += [".TP", line(f"\\fB{escape(code)}\\fR"), *map(line, map(_prose, _unwrap(meaning)))]
    return out


def command(name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    """A subcommand's subsection: usage, description, options, exit status."""
    out = [".SS " + quoted(name), *usage(parser)]
    description = parser.description or summary
    if description:
        out += [".PP", *map(line, map(_prose, _unwrap(description)))]
    opts = options(parser)
    if opts:
        out += [".PP", "Options:", ".RS", *opts, ".RE"]
    codes, other = exit_status(parser.epilog)
    if other:
        out += [".PP", *map(line, map(_prose, _unwrap(other)))]
    if codes:
        out += [".PP", "Exit status:", ".RS", *codes_list(codes), ".RE"]
    return out
