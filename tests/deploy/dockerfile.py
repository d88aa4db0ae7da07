"""A small reader for the Dockerfile and `.dockerignore`, enough to check what they promise."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            found.append(Stage(base=parts[0], name=name))
        elif found:
            found[-1].instructions.append((keyword, args))
    return found


def build_args(text: str) -> dict[str, str]:
    """Global ARG defaults (before the first FROM)."""
    values: dict[str, str] = {}
    for keyword, args in instructions(text):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            values[name] = value
    return values


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(item) for item in value]


def env_values(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for match in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
            values[match.group(1)] = match.group(2)
    return values


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            if pattern.startswith("/", index):
                out += "/?"
                index += 1
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", index)
            out += pattern[index : end + 1]
            index = end
        else:
            out += re.escape(char)
        index += 1
    return re.compile(f"^{out}$")


def dockerignore_excludes(text: str, path: str) -> bool:
    """Whether Docker leaves `path` (relative, with /) out of the build context.

    Docker's rules: patterns are anchored at the context root, a pattern also matches every
    path below a matching directory, `!` re-includes, and the last matching line wins.
    """
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        regex = _pattern_regex(pattern.strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded
