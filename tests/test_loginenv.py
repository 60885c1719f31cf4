"""What a login may take from READY (``common/loginenv.py``): the two
variables, each value's rule, and the session bus address escaped as D-Bus
requires, checked against libdbus itself (``dbus_parse_address``, through
ctypes): whatever path the booster builds an address from, libdbus reads
back one address of the ``unix`` transport with exactly that path."""

from __future__ import annotations

import ctypes
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import loginenv

LIBDBUS = "libdbus-1.so.3"


class _DBusError(ctypes.Structure):
    # name, message, the flag bits and padding: generous, dbus_error_init fills it.
    _fields_ = [("name", ctypes.c_char_p), ("message", ctypes.c_char_p), ("bits", ctypes.c_uint),
                ("padding", ctypes.c_void_p * 4)]


@pytest.fixture(scope="module")
def dbus():
    try:
        lib = ctypes.CDLL(LIBDBUS)
    except OSError:
        pytest.skip(f"{LIBDBUS} not found (Debian's libdbus-1-3, installed with dbus)")
    lib.dbus_parse_address.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p)),
                                       ctypes.POINTER(ctypes.c_int), ctypes.POINTER(_DBusError)]
    lib.dbus_address_entry_get_method.argtypes = [ctypes.c_void_p]
    lib.dbus_address_entry_get_method.restype = ctypes.c_char_p
    lib.dbus_address_entry_get_value.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.dbus_address_entry_get_value.restype = ctypes.c_char_p
    lib.dbus_address_entries_free.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.dbus_error_init.argtypes = [ctypes.POINTER(_DBusError)]
    lib.dbus_error_free.argtypes = [ctypes.POINTER(_DBusError)]
    return lib


def parse(lib, address: bytes) -> list[tuple[bytes, bytes]] | str:
    """libdbus's reading of ``address``: (method, path) of each entry, or its error."""
    error = _DBusError()
    lib.dbus_error_init(ctypes.byref(error))
    entries = ctypes.POINTER(ctypes.c_void_p)()
    count = ctypes.c_int()
    if not lib.dbus_parse_address(address, ctypes.byref(entries), ctypes.byref(count), ctypes.byref(error)):
        why = (error.message or b"").decode(errors="replace")
        lib.dbus_error_free(ctypes.byref(error))
        return why
    try:
        return [(lib.dbus_address_entry_get_method(entries[i]), lib.dbus_address_entry_get_value(entries[i], b"path"))
                for i in range(count.value)]
    finally:
        lib.dbus_address_entries_free(entries)


# Paths as a runtime directory's bus socket could be named: any bytes but NUL.
PATHS = st.binary(min_size=0, max_size=200).map(lambda b: b"/" + b.replace(b"\0", b""))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(raw=PATHS)
def test_libdbus_reads_back_exactly_the_path_the_address_was_built_from(dbus, raw):
    path = raw.decode("utf-8", "surrogateescape")
    address = loginenv.bus_address(path)
    assert re.fullmatch(r"unix:path=([-_/.\\*a-zA-Z0-9]|%[0-9a-f]{2})*", address), address
    assert parse(dbus, address.encode("ascii")) == [(b"unix", raw)]
    assert loginenv.unescape(address[len(loginenv.BUS_PREFIX):]) == raw
    # Exported exactly when the path it names passes the runtime directory's rule.
    assert (loginenv.problem("DBUS_SESSION_BUS_ADDRESS", address) is None) == (loginenv.path_problem(raw) is None)


def test_separators_in_the_runtime_directory_give_one_address(dbus):
    """The issue's case: an unescaped ';' made two addresses of one."""
    path = "/run/u;tcp:host=evil,port=1/bus"
    # What the booster used to send: a second address, and a bus that is not the user's.
    assert parse(dbus, f"unix:path={path}".encode()) == [(b"unix", b"/run/u"), (b"tcp", None)]
    address = loginenv.bus_address(path)
    assert address == "unix:path=/run/u%3btcp%3ahost%3devil%2cport%3d1/bus"
    assert parse(dbus, address.encode()) == [(b"unix", path.encode())]
    assert loginenv.problem("DBUS_SESSION_BUS_ADDRESS", address) is None


@pytest.mark.parametrize("value,why", [
    ("unix:path=/run/user/1000/bus;unix:path=/tmp/evil", "not one address"),
    ("unix:path=/run/user/1000/bus,guid=1", "not one address"),
    ("unix:path=/a%2", "not one address"),
    ("unix:path=/a%zz", "not one address"),
    ("unix:path=/a b", "not one address"),
    ("unix:path=/é", "not one address"),
    ("unix:path=relative/bus", "not an absolute path"),
    ("unix:path=/run/%0aLD_PRELOAD%3dx", "a control character"),
    ("unix:path=/run/%c2%85", "a control character"),
    ("unix:path=/run/%00", "a control character"),
    ("unix:abstract=/tmp/bus", "not a unix:path= address"),
    ("tcp:host=localhost,port=1", "not a unix:path= address"),
    ("unix:path=/" + "a" * 4095, "longer than 4095 bytes"),
    ("unix:path=/" + "%61" * 1500, "longer than 4095 bytes"),
])
def test_bus_addresses_other_than_one_escaped_unix_path_are_refused(value, why):
    assert why in (loginenv.problem("DBUS_SESSION_BUS_ADDRESS", value) or ""), value


@pytest.mark.parametrize("value,why", [
    ("", "not an absolute path"), ("run/user/1000", "not an absolute path"),
    ("/run/user/1000\nLD_PRELOAD=/x", "a control character at byte 14"), ("/run/\x1b[2J", "a control character"),
    ("/run/\x7f", "a control character"), ("/run/\x85", "a control character"), ("/run/\t", "a control character"),
    ("/" + "a" * 4095, "4096 bytes, more than 4095"),
])
def test_runtime_directories_must_be_absolute_plain_and_bounded(value, why):
    assert why in (loginenv.problem("XDG_RUNTIME_DIR", value) or ""), value


def test_only_the_two_variables_pass_and_order_is_kept():
    env = [("LD_PRELOAD", "/home/u/evil.so"), ("XDG_RUNTIME_DIR", "/run/user/1000"), ("PATH", "/home/u/bin"),
           ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus"), ("BASH_ENV", "/x"),
           ("XDG_RUNTIME_DIR", "/home/u\nX=1"), ("xdg_runtime_dir", "/run/user/1000")]
    accepted, dropped = loginenv.checked(env)
    assert accepted == [("XDG_RUNTIME_DIR", "/run/user/1000"),
                        ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus")]
    assert [key for key, _ in dropped] == ["LD_PRELOAD", "PATH", "BASH_ENV", "XDG_RUNTIME_DIR", "xdg_runtime_dir"]
    assert all(why for _, why in dropped)
    assert loginenv.path_problem("/run/user/1000/é".encode()) is None  # non-ASCII is not control
    assert loginenv.problem("XDG_RUNTIME_DIR", "/" + "a" * 4094) is None
