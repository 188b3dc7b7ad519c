"""Gin text read by Gin's own parser (`gin.config_parser`), without registering or importing anything:
the one reader of Gin text besides Gin itself. The duplicate-binding check (harness.run.config) and the
reports (a saved config.gin's bindings, which must read on a machine without the training code) use it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gin import config_parser

from harness.core.errors import ConfigError


class GinRef(str):
    """A reference or macro as written ('@Adam', '@Schedule()', '%LR'); its repr is that text, so a
    value holding one (a list of references) reads back as Gin text."""

    def __repr__(self) -> str:
        return str(self)


class _AsText(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
        return GinRef(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name):
        return GinRef(f"%{macro_name}")


def statements(text: str, where: str = "<config>") -> Iterator:
    """Gin's statements of `text` (bindings, imports, includes), each with its location; a syntax
    error is one ConfigError line naming `where`."""
    try:
        yield from config_parser.ConfigParser(text, _AsText())
    except SyntaxError as exc:
        raise ConfigError(f"{where}, line {exc.lineno}: Gin syntax error: {str(exc.msg).splitlines()[0]}") from None


def key_of(statement) -> str:
    """'[scope/]Selector.param' of a binding statement."""
    return f"{statement.scope + '/' if statement.scope else ''}{statement.selector}.{statement.arg_name}"


def bindings(text: str, where: str = "<config>") -> dict[str, str]:
    """{'[scope/]Selector.param': the value as Gin text} of `text` (later bindings win); values are the
    repr of what Gin parsed, so `1e-5` and `0.00001` read the same, references and macros as written."""
    return {key_of(s): repr(s.value) for s in statements(text, where)
            if isinstance(s, config_parser.BindingStatement)}


def includes(path: Path, search_dir: Path) -> Iterator[tuple[Path, object]]:
    """(file, statement) over `path` and, depth first where they stand, the files it includes."""
    for s in statements(Path(path).read_text(), str(path)):
        if isinstance(s, config_parser.IncludeStatement):
            yield from includes(search_dir / s.filename, search_dir)
        else:
            yield Path(path), s
