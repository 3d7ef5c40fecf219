"""Where a job's software comes from besides its package: a user image (``image=``) and a package index
(``index_url=``). The shapes are checked here, by the SDK before sending and by the supervisor on receipt; which
registries and indexes are allowed is the supervisor's setting (``jobs.image_registries``,
``jobs.package_indexes``).

Image references follow Docker's grammar (``[REGISTRY/]PATH[:TAG][@sha256:DIGEST]``; a first component with a dot
or a colon, or ``localhost``, is the registry; none: Docker Hub, ``docker.io``). Index URLs are ``https://`` (or
``http://`` to a loopback or private address) simple-API URLs without credentials: those are stored per user.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cumulus.errors import InvalidRequest

DOCKER_HUB = "docker.io"
MAX_REFERENCE_LEN = 255
MAX_INDEX_URL_LEN = 2048

_HOST_PART = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)"
_REGISTRY = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]{{1,5}})?|\[[0-9a-fA-F:]+\](?::[0-9]{{1,5}})?")
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_PATH_PART}(?:/{_PATH_PART})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageReference:
    """A parsed image reference: ``registry`` (``docker.io`` when none is written), ``path``, ``tag`` and
    ``digest`` (either may be empty, not both: a reference with neither means ``:latest``)."""

    registry: str
    path: str
    tag: str
    digest: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}" + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")

    def by_digest(self, digest: str) -> str:
        """This image pinned to ``digest`` (what a node runs once the tag was resolved)."""
        return f"{self.registry}/{self.path}@{digest}"


def parse_image_reference(text: str) -> ImageReference:
    """Parse ``text`` or raise :class:`~cumulus.errors.InvalidRequest` saying what a reference looks like."""
    hint = "give REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST, e.g. registry.example.com/team/torch:2.4"
    if not isinstance(text, str) or not text or len(text) > MAX_REFERENCE_LEN:
        raise InvalidRequest(f"image={str(text)[:80]!r} is not an image reference ({MAX_REFERENCE_LEN} characters "
                             f"at most); {hint}")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise InvalidRequest(f"image={text!r}: the digest {digest!r} is not sha256:<64 hex digits>; {hint}")
    name, tag = rest, ""
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidRequest(f"image={text!r}: the tag {tag!r} is not a valid tag (letters, digits, '_', '.', "
                                 f"'-'; 128 at most); {hint}")
    first, sep, path = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry = first
        if not _REGISTRY.fullmatch(registry):
            raise InvalidRequest(f"image={text!r}: {registry!r} is not a registry host[:port]; {hint}")
    else:
        registry, path = DOCKER_HUB, name
    if not _PATH.fullmatch(path):
        raise InvalidRequest(f"image={text!r}: {path!r} is not a repository name (lower-case letters, digits, "
                             f"and '.', '_', '-' between them, '/' between components); {hint}")
    return ImageReference(registry.lower(), path, tag, digest)


def registry_problem(registry: str) -> str:
    """What is wrong with an entry of ``jobs.image_registries`` ("" when nothing)."""
    if not _REGISTRY.fullmatch(registry or ""):
        return f"{registry!r} is not a registry host[:port] (e.g. registry.example.com, 10.0.0.5:5000, docker.io)"
    return ""


def check_index_url(url: str) -> str:
    """The index URL normalised (a trailing ``/``), or InvalidRequest saying what an index URL looks like."""
    problem = index_url_problem(url)
    if problem:
        raise InvalidRequest(f"index_url: {problem}")
    return url.rstrip("/") + "/"


def index_url_problem(url: str) -> str:
    """What is wrong with a package index URL ("" when nothing)."""
    example = "e.g. https://pypi.example.com/simple/"
    if not isinstance(url, str) or not url or len(url) > MAX_INDEX_URL_LEN or any(c.isspace() for c in url):
        return f"{str(url)[:80]!r} is not a URL ({example})"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"{url[:80]!r} is not a URL ({error}; {example})"
    if parts.username or parts.password:
        return (f"{parts.scheme}://{parts.hostname}... carries credentials; give the URL without them and store "
                f"them with `cumulus index login URL` (they are kept per user, never in a job)")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{url[:80]!r} must be an https:// URL with a host ({example})"
    if parts.query or parts.fragment:
        return f"{url[:80]!r} must not have a query or fragment ({example})"
    if parts.scheme == "http" and not _private_host(parts.hostname):
        return (f"{url[:80]!r} is plain http to a public host: use https:// (http:// only to a loopback or private "
                f"address){' (port ' + str(port) + ')' if port else ''}")
    return ""


def _private_host(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_private or address.is_loopback


__all__ = ["DOCKER_HUB", "ImageReference", "check_index_url", "index_url_problem", "parse_image_reference",
           "registry_problem"]
