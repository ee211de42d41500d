"""The compression profile a client may ask for over HTTP: a name, or an inline mapping.

A path never comes from a client: a name is looked up among the built-in profiles and the
server's own ``profiles_dir`` (its configuration), and an inline mapping is validated like a
profile YAML file, so a request cannot make the server open a file, nor learn from an error
whether one exists (every unknown name gets the same answer, which lists the known names).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from compression.core.errors import ProfileError
from compression.profiles import PROFILES, profile_from_dict
from service.serving.errors import BadRequest

# A profile name: what a file name in profiles_dir may be (no separators, no dots).
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def known_profiles(profiles_dir: Path | None) -> list[str]:
    """``auto``, the built-in profile names and those of ``profiles_dir``'s YAML files."""
    names = {"auto", *PROFILES}
    if profiles_dir is not None and Path(profiles_dir).is_dir():
        names |= {
            p.stem for p in Path(profiles_dir).glob("*.yaml") if PROFILE_NAME.fullmatch(p.stem)
        }
    return sorted(names)


def requested_profile(
    value: str | dict[str, Any] | None, profiles_dir: Path | None
) -> tuple[str | None, dict[str, Any] | None]:
    """``(name, None)``, ``(None, inline mapping)`` or ``(None, None)`` (the service default).

    Raises :class:`BadRequest` (400) for anything else, naming what is accepted.

    >>> requested_profile("cpu", None)
    ('cpu', None)
    """
    if value is None:
        return None, None
    if isinstance(value, dict):
        mapping = {"name": "inline", **value}
        if not isinstance(mapping["name"], str) or not PROFILE_NAME.fullmatch(mapping["name"]):
            raise BadRequest(
                "profile.name: a profile name is 1-64 lowercase letters, digits, '_' or '-'"
            )
        try:
            profile_from_dict(mapping, source="profile")
        except ProfileError as err:
            raise BadRequest(str(err)) from None
        return None, mapping
    known = known_profiles(profiles_dir)
    if not PROFILE_NAME.fullmatch(value) or value not in known:
        # A value that is not a name (a path, say) is not echoed: every one gets one answer.
        shown = repr(value) if PROFILE_NAME.fullmatch(value) else "(not a profile name)"
        raise BadRequest(
            f"unknown profile {shown}: expected one of {known} (built-in or configured on the "
            "server) or an inline mapping of profile keys; paths are not accepted over HTTP"
        )
    return value, None
