"""Tenancy against the real Keystone: the tokens of two projects' members, a project
reader and an admin, validated by keystonemiddleware, and every route of the native API
called with each (``support.tenancy``: a member of alpha reaches alpha's instance, its
guest failure, its application and alpha's subscription; beta's member reaches none of
them, and no route that is not a project's)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from support.tenancy import Tenancy

from .conftest import EXPIRATION, Keystone, Served

pytestmark = pytest.mark.keystone


class FreshTokens(Mapping[str, str]):
    """Each user's token, taken again before it expires (they last ``EXPIRATION``
    seconds in this tier, less than the whole table of calls takes)."""

    def __init__(self, keystone: Keystone, users: list[str]) -> None:
        self._keystone, self._users = keystone, users
        self._tokens: dict[str, tuple[str, float]] = {}

    def __getitem__(self, user: str) -> str:
        token, at = self._tokens.get(user, ("", 0.0))
        if time.monotonic() - at > EXPIRATION / 2:
            token, at = self._keystone.token(user), time.monotonic()
            self._tokens[user] = (token, at)
        return token

    def __iter__(self) -> Iterator[str]:
        return iter(self._users)

    def __len__(self) -> int:
        return len(self._users)


def test_a_project_reaches_its_own_instances_and_nothing_of_another(served: Served) -> None:
    keystone = served.keystone
    tokens = FreshTokens(keystone, ["admin", "alpha-member", "alpha-reader", "beta-member"])
    client = httpx.Client(base_url=served.server.api_url, timeout=30)

    def call(token: str, method: str, path: str, body: Any) -> httpx.Response:
        return client.request(method, path, headers={"X-Auth-Token": token}, json=body)

    with client:
        t = Tenancy(
            served.server,
            served.cloud,
            call,
            tokens,
            keystone.project_id("alpha-member"),
            keystone.project_id("beta-member"),
        )
        seeded = t.seed()
        beta = t.listings_of("beta-member", seeded)
        assert all(seeded.alpha_vm not in text for text in beta.values()), beta
        assert seeded.alpha_vm in t.listings_of("alpha-member", seeded)["/v1/events?limit=1000"]
        assert len(t.check_every_route(seeded)) == 20
