"""`Forward`: a read-only attribute that one object answers by asking one of its members.

The runtime layers its views: a model's `SessionContext` reads the session, the `Session`
reads its `Playback`. Each read the outer object passes on unchanged is one `Forward`
line (named, typed, documented) instead of a property per name that only returns the
member's attribute; what the outer object adds (checks, locking) stays a real method.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class Forward(Generic[T]):
    """Reads `owner.<member>.<name>` (`name`: the attribute's own name unless `attr` names another).

    A method forwards too: the value read is the member's bound method, called by the reader.
    """

    def __init__(self, member: str, doc: str | None = None, *, attr: str | None = None) -> None:
        self.member = member
        self.attr = attr
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        if self.attr is None:
            self.attr = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> "Forward[T]": ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.member), self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.attr} is read-only here (it is {self.member}.{self.attr})")
