"""Tenant-owned, named and versioned records: datasets and registry models share the shape
(a parent row with a tenant and a name, numbered version rows under it) and so share the
code that parses a ref, finds the parent, resolves a version and lists the parents.

A ref is `NAME` (the latest version), `NAME:VERSION` or, where the family has aliases,
`NAME@ALIAS`. Another tenant's record answers NotFound, like a missing one, so names do not
leak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from modelfab.errors import InvalidRequest, NotFound
from modelfab.schemas.limits import MAX_VERSION
from modelfab.services.common import check_name


@dataclass(frozen=True)
class Ref:
    """A parsed ref: `version` and `alias` are None for the latest version."""

    name: str
    version: int | None = None
    alias: str | None = None


@dataclass(frozen=True)
class Family:
    """One kind of named, versioned record: its parent and version tables and how errors
    name it (`noun`, and the request `param` that carried the ref)."""

    noun: str
    parent: Any  # the ORM class with id, tenant_id, name
    version: Any  # the ORM class with id, version and a foreign key to the parent
    parent_key: InstrumentedAttribute[str]  # e.g. DatasetVersion.dataset_id
    param: str
    aliases: bool = False

    @property
    def forms(self) -> str:
        return "NAME, NAME:VERSION or NAME@ALIAS" if self.aliases else "NAME or NAME:VERSION"


def parse_ref(family: Family, ref: str) -> Ref:
    """`ref` split into name, version or alias. Raises InvalidRequest (param
    `family.param`) for a version that is not a number in [1, MAX_VERSION], an alias where
    the family has none, or a malformed alias."""
    if "@" in ref:
        if not family.aliases:
            raise InvalidRequest(
                f"a {family.noun} ref is {family.forms}, got {ref!r}", param=family.param
            )
        name, _, alias = ref.partition("@")
        return Ref(name, alias=check_name(alias, param="alias"))
    name, _, version = ref.partition(":")
    if not version:
        return Ref(name)
    if not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
        raise InvalidRequest(
            f"{family.noun} version must be a number from 1 to {MAX_VERSION}, got {version!r} "
            f"({family.forms})",
            param=family.param,
        )
    return Ref(name, version=int(version))


def find_parent(session: Session, family: Family, tenant_id: str, name: str) -> Any:
    """The tenant's parent row named `name`. Raises NotFound (param `family.param`)."""
    parent = family.parent
    row = session.scalar(select(parent).where(parent.tenant_id == tenant_id, parent.name == name))
    if row is None:
        raise NotFound(f"no {family.noun} named {name!r}", param=family.param)
    return row


def resolve(
    session: Session, family: Family, tenant_id: str, ref: str, *, by_alias: Any = None
) -> tuple[Any, Any]:
    """(parent, version) that `ref` names in the tenant. `by_alias(stmt, parent, alias)`
    narrows the version query to an alias (families with aliases). Raises InvalidRequest
    for a malformed ref, NotFound for a missing name or version."""
    parsed = parse_ref(family, ref)
    parent = find_parent(session, family, tenant_id, parsed.name)
    stmt: Select[Any] = select(family.version).where(family.parent_key == parent.id)
    if parsed.alias is not None:
        stmt = by_alias(stmt, parent, parsed.alias)
    elif parsed.version is not None:
        stmt = stmt.where(family.version.version == parsed.version)
    else:
        stmt = stmt.order_by(family.version.version.desc()).limit(1)
    version = session.scalar(stmt)
    if version is None:
        what = f"alias {parsed.alias!r}" if parsed.alias else f"version {parsed.version}"
        raise NotFound(f"{family.noun} {parsed.name!r} has no {what}", param=family.param)
    return parent, version


def list_with_counts(session: Session, family: Family, tenant_id: str) -> list[Any]:
    """Rows (parent, latest version number, number of versions) of the tenant's records,
    by name."""
    parent, version = family.parent, family.version
    rows = session.execute(
        select(parent, func.max(version.version), func.count(version.id))
        .join(version, family.parent_key == parent.id)
        .where(parent.tenant_id == tenant_id)
        .group_by(parent.id)
        .order_by(parent.name)
    ).all()
    return list(rows)


def version_numbers(session: Session, family: Family, parent_id: str) -> list[int]:
    """Every version number of one parent, ascending."""
    return list(
        session.scalars(
            select(family.version.version)
            .where(family.parent_key == parent_id)
            .order_by(family.version.version)
        )
    )
