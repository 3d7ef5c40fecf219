"""What the dashboard tests share: the real supervisor on the in-memory fakes with its real HTTP port (hypercorn,
TLS with the run's certificate, as in production) on loopback, users with tokens, an httpx client that signs in
as one of them, and a small HTML reader (elements by id, class and attribute) for the contract's elements."""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, AsyncIterator

import httpx
import trio

from cumulus.app import SupervisorApi, open_supervisor
from cumulus.config import SecuritySettings
from cumulus.rpc.http import serve_http
from tests.credentials import run_credentials
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import settings

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def walk(self) -> list[Element]:
        out = [self]
        for child in self.children:
            if isinstance(child, Element):
                out.extend(child.walk())
        return out

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Element]:
        """Elements of ``tag`` (any if None) whose attributes hold ``attrs`` (``class_`` is one of the classes;
        a value of None: the attribute is there)."""
        found = []
        for element in self.walk()[1:]:
            if tag is not None and element.tag != tag:
                continue
            ok = True
            for key, value in attrs.items():
                name = "class" if key == "class_" else key.replace("_", "-")
                have = element.attrs.get(name)
                if have is None or (value is not None and (value not in have.split() if name == "class"
                                                           else have != value)):
                    ok = False
                    break
            if ok:
                found.append(element)
        return found

    def by_id(self, element_id: str) -> Element:
        found = self.find_all(id=element_id)
        assert len(found) == 1, f"{len(found)} elements with id {element_id!r}"
        return found[0]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Element:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.root


@dataclass
class Served:
    api: SupervisorApi
    world: FakeWorld
    url: str
    tokens: dict[str, str]  # user -> token
    secure: bool

    def client(self, user: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        verify: Any = ssl.create_default_context(cafile=str(run_credentials().ca)) if self.secure else False
        return httpx.AsyncClient(base_url=self.url, verify=verify, follow_redirects=False, timeout=30, **kwargs)

    async def signed_in(self, user: str) -> httpx.AsyncClient:
        """A client with a session of ``user`` (``admin``: the run's admin token)."""
        client = self.client()
        reply = await client.post("/login", data={"token": self.tokens[user]}, headers={"origin": self.url})
        assert reply.status_code == 303, reply.text
        return client


@asynccontextmanager
async def dashboard(*, users: tuple[str, ...] = ("alice", "bob"), insecure: bool = False, workers: int = 2,
                    gpu: bool = True, **overrides: Any) -> AsyncIterator[Served]:
    """The supervisor (fakes) with its HTTP port serving the dashboard; ``users`` get tokens (not admins)."""
    conf = settings(**overrides)
    security = SecuritySettings(insecure=True) if insecure else conf.security
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(i + 1, gpu=gpu) for i in range(workers)], nursery)
        async with open_supervisor(conf, backends=world.backends(), serve_rpc=False) as sup:
            with trio.fail_after(30):
                while not (ws := await sup.list_workers()) or not all(w.healthy for w in ws):
                    await trio.sleep(0.05)
            tokens = {"admin": run_credentials().admin_token}
            for user in users:
                tokens[user] = (await sup.create_token(user))[1]
            url = await nursery.start(lambda task_status: serve_http(sup, sup.metrics, "127.0.0.1:0",
                                                                     security=security, task_status=task_status))
            yield Served(sup, world, url, tokens, not insecure)
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Any, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


__all__ = ["Element", "Served", "dashboard", "parse", "wait_until"]
