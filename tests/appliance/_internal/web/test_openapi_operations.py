"""The OpenAPI document lists the operations the appliance promises. The committed list is the
contract: an operation that disappears breaks clients; one that appears must be added to the
list on purpose (``METHOD PATH operationId``, sorted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COMMITTED = Path(__file__).with_name("openapi_operations.txt")


def _operations(client: Any) -> set[str]:
    doc = client.get("/openapi.json").get_json()
    return {f"{method.upper()} {path} {op['operationId']}"
            for path, item in doc["paths"].items()
            for method, op in item.items() if isinstance(op, dict) and "operationId" in op}


def test_operation_ids_match_the_committed_list(client: Any) -> None:
    promised = set(COMMITTED.read_text().split("\n")) - {""}
    served = _operations(client)
    assert not promised - served, f"operations removed (clients depend on them): {sorted(promised - served)}"
    assert not served - promised, (
        f"new operations: add them to {COMMITTED.name}: {sorted(served - promised)}")


def test_operation_ids_are_unique(client: Any) -> None:
    ids = [line.rsplit(" ", 1)[-1] for line in _operations(client)]
    assert len(ids) == len(set(ids))
