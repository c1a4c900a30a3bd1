"""The two forms of every result: a human rendering (rich, on stdout) and a JSON form (`--json`,
on stdout instead, inside one envelope; see kvmigrate.model.serial). Renderers for each result type
register in the sibling modules, by the name of the type they render (report/ imports model/ only:
the result types are named in annotations, imported for type checking)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console

from kvmigrate.model.serial import dumps, envelope, to_dict

__all__ = ["dumps", "envelope", "render", "to_dict"]

Renderer = TypeVar("Renderer", bound=Callable[..., None])
_RENDERERS: dict[str, Callable[[Any, Console], None]] = {}


class _Render:
    """`render(result, console)` prints the human form of a result; `@render.register` adds the
    renderer of the type its first parameter is annotated with (the type's name)."""

    def __call__(self, result: Any, console: Console) -> None:
        for cls in type(result).__mro__:
            fn = _RENDERERS.get(cls.__name__)
            if fn is not None:
                fn(result, console)
                return
        console.print(result)

    def register(self, fn: Renderer) -> Renderer:
        annotation = next(iter(fn.__annotations__.values()))
        name = annotation if isinstance(annotation, str) else annotation.__name__
        _RENDERERS[name.rpartition(".")[2]] = fn
        return fn


render = _Render()
