"""Who may read and who may write: an API key for writes, reads open to this machine by default.

Writes (uploads, reviews) need the ``X-API-Key`` header when the server has a
key (``--api-key-file``); without a key, only clients on this machine
(loopback) may write. Reads are open to loopback clients, to a client that
gives the key, and to everyone with ``--public-reads``. Behind a reverse
proxy every client looks local: give the server a key then.

Examples
--------
>>> rules = Access(api_key="s3cret")
>>> rules.may_write("127.0.0.1", "s3cret"), rules.may_write("127.0.0.1", None)
(True, False)
>>> rules.may_read("192.0.2.7", None), rules.may_read("192.0.2.7", "s3cret"), rules.may_read("::1", None)
(False, True, True)
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from echoengine.errors import EchoError

__all__ = ["API_KEY_HEADER", "Access", "is_loopback", "read_api_key"]

API_KEY_HEADER = "X-API-Key"
_WRONG_KEY = f"wrong API key: the {API_KEY_HEADER} header does not hold the key the server was started with"


def read_api_key(path: str | Path) -> str:
    """The key in a file (its first line, stripped); an EchoError for a missing or empty file.

    Examples
    --------
    >>> read_api_key("/nonexistent/key")
    Traceback (most recent call last):
    ...
    echoengine.errors.EchoError: --api-key-file /nonexistent/key: cannot read it (No such file or directory)
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EchoError(f"--api-key-file {path}: cannot read it ({exc.strerror})") from None
    key = lines[0].strip() if lines else ""
    if len(key) < 8:
        raise EchoError(f"--api-key-file {path}: its first line must hold the key, at least 8 characters")
    return key


def is_loopback(host: str | None) -> bool:
    """Whether a client address is this machine (a Unix socket, without one, is).

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("10.0.0.2"), is_loopback("testclient")
    (True, True, False, False)
    """
    if host is None:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The server's access rules.

    Parameters
    ----------
    api_key : str, optional
        The key writes need (and reads from other machines may give).
    public_reads : bool
        Reads open to every client.
    """

    api_key: str | None = None
    public_reads: bool = False

    def _key_matches(self, given: str | None) -> bool:
        return self.api_key is not None and given is not None and hmac.compare_digest(given.encode(),
                                                                                        self.api_key.encode())

    def may_read(self, host: str | None, given: str | None) -> bool:
        """Whether a client at ``host`` that sent the key ``given`` may read."""
        return self.public_reads or is_loopback(host) or self._key_matches(given)

    def may_write(self, host: str | None, given: str | None) -> bool:
        """Whether a client at ``host`` that sent the key ``given`` may write."""
        return self._key_matches(given) if self.api_key is not None else is_loopback(host)

    def _wrong_key(self, given: str | None) -> bool:
        return self.api_key is not None and given is not None and not self._key_matches(given)

    def write_refusal(self, given: str | None = None) -> tuple[int, str]:
        """The status and reason a refused write gets, for a client that sent the key ``given``.

        Examples
        --------
        >>> Access(api_key="s3cret-key").write_refusal("guess")
        (401, 'wrong API key: the X-API-Key header does not hold the key the server was started with')
        """
        if self._wrong_key(given):
            return 401, _WRONG_KEY
        if self.api_key is not None:
            return 401, f"writes need the server's API key in the {API_KEY_HEADER} header"
        return 403, "writes are open to this machine only; give the server a key (--api-key-file) to write from others"

    def read_refusal(self, given: str | None = None) -> tuple[int, str]:
        """The status and reason a refused read gets, for a client that sent the key ``given``.

        Examples
        --------
        >>> Access().read_refusal()[1]
        'reads are open to this machine only; start the server with --public-reads or --api-key-file'
        """
        if self._wrong_key(given):
            return 401, _WRONG_KEY
        if self.api_key is not None:
            return 403, (f"reads from other machines need the server's API key in the {API_KEY_HEADER} header "
                         "(or a server started with --public-reads)")
        return 403, "reads are open to this machine only; start the server with --public-reads or --api-key-file"
