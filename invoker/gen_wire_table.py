"""Write ``wire_table.h``, the C form of the wire format, from ``common.wire``.

The wire format is written once, in ``common/wire.py``.  The native PAM
module (``invoker/pam_booster.c``) and its codec (``invoker/booster_wire.c``)
take every constant and every message's fields from the header this script
prints.  The header is kept in the tree (``invoker/wire_table.h``: the
module builds with a C compiler alone); ``make -C invoker wire-table`` writes
it again, so a message type or a field added on the Python side reaches the
C decoder then, and a field kind the C codec does not know stops this script
instead of being decoded wrongly.  ``tests/test_native.py`` fails while the
header differs from what this script prints.
"""

import sys
from pathlib import Path

if __name__ == "__main__":  # run by the Makefile: common/ is found beside invoker/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import wire  # noqa: E402

# Kinds of codes: (prefix in common.wire, name of the C table of their names or None).
CODE_KINDS = (("MSG_", "wire_message_names"), ("ERR_", "wire_error_names"), ("END_", "wire_end_names"),
              ("OPEN_", None), ("HELLO_", None), ("STATUS_", None))
_INT_KINDS = {("B", False): "WIRE_U8", ("H", False): "WIRE_U16", ("I", False): "WIRE_U32",
              ("Q", False): "WIRE_U64", ("i", True): "WIRE_I32"}


def c_kind(field: str, kind: tuple) -> tuple[str, int]:
    """(the C kind constant, the string limit or 0) of a field kind of ``common.wire``."""
    if kind[0] == wire.INT:
        fmt = kind[1].format.lstrip("<>!=@")
        name = _INT_KINDS.get((fmt, kind[2] < 0))
        if name is None or kind[1].format[0] != ">":
            raise SystemExit(f"gen_wire_table: field {field!r}: integer kind {kind[1].format!r} has no C form")
        return name, 0
    if kind[0] == wire.STR:
        if not 0 <= kind[1] <= 0xFFFF:
            raise SystemExit(f"gen_wire_table: field {field!r}: string limit {kind[1]} does not fit a u16 count")
        return "WIRE_STR", kind[1]
    if kind[0] == wire.ENV_KIND:
        return "WIRE_ENV", 0
    raise SystemExit(f"gen_wire_table: field {field!r}: kind {kind!r} has no C form")


def codes(prefix: str) -> list[tuple[str, int]]:
    return sorted(((key, val) for key, val in vars(wire).items()
                   if key.startswith(prefix) and key.isupper() and type(val) is int), key=lambda kv: kv[1])


class Names:
    """The string of every name, and each name's offset in it (a name used
    twice is there once)."""

    def __init__(self) -> None:
        self.texts = [""]
        self.offsets = {"": 0}
        self.size = 1

    def at(self, text: str) -> int:
        if text not in self.offsets:
            if not text.isascii() or not text.isprintable() or '"' in text or "\\" in text:
                raise SystemExit(f"gen_wire_table: name {text!r} is not plain text")
            self.offsets[text] = self.size
            self.texts.append(text)
            self.size += len(text) + 1
            if self.size > 0xFFFF:
                raise SystemExit("gen_wire_table: the names do not fit u16 offsets")
        return self.offsets[text]


def render() -> str:
    out = ["/* wire_table.h: the booster wire format for C, generated from common/wire.py",
           " * by invoker/gen_wire_table.py.  Do not edit: change common/wire.py and run",
           " * make -C invoker wire-table. */",
           "#ifndef BOOSTER_WIRE_TABLE_H", "#define BOOSTER_WIRE_TABLE_H", "",
           f"#define WIRE_MAGIC0 0x{wire.MAGIC[0]:02x}", f"#define WIRE_MAGIC1 0x{wire.MAGIC[1]:02x}",
           f"#define WIRE_VERSION {wire.VERSION}", f"#define WIRE_HEADER_SIZE {wire.HEADER_SIZE}",
           f"#define WIRE_MAX_FRAME {wire.MAX_FRAME}", f"#define WIRE_MAX_PAYLOAD {wire.MAX_PAYLOAD}",
           f"#define WIRE_MAX_ENV_ENTRIES {wire.MAX_ENV_ENTRIES}",
           f"#define WIRE_ENV_KEY_LIMIT {wire.ENV_KEY_LIMIT}",
           f"#define WIRE_ENV_VALUE_LIMIT {wire.ENV_VALUE_LIMIT}", ""]
    if wire.HEADER.format != ">2sBBI" or len(wire.MAGIC) != 2:
        raise SystemExit(f"gen_wire_table: the header {wire.HEADER.format!r} is not the one the C codec reads")
    for prefix, _ in CODE_KINDS:
        out += [f"#define WIRE_{key} {val}" for key, val in codes(prefix)]
        out.append("")
    max_fields = max(len(fields) for fields in wire.FIELDS.values())
    out += [f"#define WIRE_MAX_FIELDS {max_fields}", "",
            "/* Each message's field count, and each field's place in it. */"]
    for type_, fields in sorted(wire.FIELDS.items()):
        name = wire.code_name("MSG_", type_)
        out.append(f"#define WIRE_FIELDS_{name} {len(fields)}")
        out += [f"#define WIRE_FIELD_{name}_{field.upper()} {i}" for i, (field, _, _) in enumerate(fields)]
    out += ["",
            "/* The tables, for the codec (booster_wire.c) alone.  They hold no pointers:",
            " * a name is its offset in wire_names, a message's fields a run of wire_fields,",
            " * so the tables are read-only data that loading the module does not relocate. */",
            "#ifdef WIRE_TABLES", ""]
    names = Names()
    rows, messages = [], []
    for type_, fields in sorted(wire.FIELDS.items()):
        first = len(rows)
        if first > 0xFFFF:
            raise SystemExit(f"gen_wire_table: {first} fields do not fit a u16 index")
        name = wire.code_name("MSG_", type_)
        for field, kind, _default in fields:
            ckind, limit = c_kind(field, kind)
            rows.append(f"    {{ {names.at(field)}, {ckind}, {limit} }},  /* {name}.{field} */")
        messages.append(f"    [{type_}] = {{ {names.at(name)}, {len(fields)}, {first} }},  /* {name} */")
    tables = []
    for prefix, table in CODE_KINDS:
        if table is None:
            continue
        tables.append(f"static const struct wire_code {table}[] = {{")
        tables += [f"    {{ {val}, {names.at(key[len(prefix):])} }},  /* {key[len(prefix):]} */"
                   for key, val in codes(prefix)]
        tables += ["    { 0, 0 },", "};"]
    out += ["/* Every name, each ended by its NUL; offset 0 is the empty name: none. */",
            "static const char wire_names[] ="]
    out += [f'    "{text}\\0"' for text in names.texts[:-1]] + [f'    "{names.texts[-1]}";', ""]
    out += ["static const struct wire_field wire_fields[] = {"] + rows + ["};", "",
            "/* Indexed by the header's type byte; name 0: not a message type. */",
            "static const struct wire_message wire_messages[256] = {"] + messages + ["};", ""] + tables
    out += ["", "#endif /* WIRE_TABLES */", "#endif", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
