"""Who a user is: the passwd entry and group list the instance runs with."""

from __future__ import annotations

import dataclasses
import os
import pwd


class UnknownUser(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]  # every group the instance is a member of, the primary one included

    def expand(self, path: str) -> str:
        """``~/x`` below this user's home; absolute paths unchanged."""
        if path == "~":
            return self.home
        if path.startswith("~/"):
            return os.path.join(self.home, path[2:])
        return path


def lookup(name: str) -> Account:
    """The account called ``name``.  Names only: a number is not taken as a uid."""
    if not name or name.startswith("-") or "/" in name or name in (".", ".."):
        raise UnknownUser(f"{name!r} is not a valid user name")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise UnknownUser(f"no user named {name!r}") from None
    if not entry.pw_dir.startswith("/"):
        raise UnknownUser(f"user {name!r} has no absolute home directory ({entry.pw_dir!r})")
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return Account(
        name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir,
        shell=entry.pw_shell or "/bin/sh", groups=groups,
    )
