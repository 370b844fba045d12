"""A small WebDriver BiDi client for the tests: a headless Firefox driven over its own WebSocket, no geckodriver.

Firefox speaks WebDriver BiDi itself (``--remote-debugging-port``): a WebSocket to
``ws://127.0.0.1:PORT/session`` takes JSON commands (``{"id", "method", "params"}``) and answers each with its
``id``, with events (``log.entryAdded``) in between. :class:`Firefox` starts the browser on a fresh profile (a
temporary folder, nothing fetched from the internet), opens a session, and offers what the tests need: navigate,
run JavaScript (its value comes back as JSON), press keys and click as a user would (``input.performActions``),
resize the viewport, take screenshots, and collect the console's errors. The WebSocket is
``websocket-client``'s synchronous one (Selenium's own dependency).

Examples
--------
>>> with Firefox() as firefox:  # doctest: +SKIP
...     firefox.navigate("http://127.0.0.1:8000/")
...     firefox.run("return document.title")
'echoengine review'
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from servers import free_port

FIREFOX = shutil.which("firefox") or shutil.which("firefox-esr") or "/usr/bin/firefox"
#: WebDriver's key codes of the keys the tests press (the rest are typed as they are).
KEYS = {"Enter": "\ue007", "Escape": "\ue00c", "Tab": "\ue004", "Backspace": "\ue003", "ArrowRight": "\ue014",
        "ArrowLeft": "\ue012"}
# a quiet browser: no first-run pages, updates, telemetry, or connections of its own (on top of the automation
# preferences Firefox sets itself when remote control is on)
PREFERENCES = {
    "app.update.disabledForTesting": True, "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore", "browser.aboutwelcome.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False, "toolkit.telemetry.reportingpolicy.firstRun": False,
    "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False, "media.autoplay.default": 0, "browser.translations.enable": False,
    "messaging-system.rsexperimentloader.enabled": False, "app.normandy.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",  # remote settings: a closed local port, at once
}
# runs a function body with JSON arguments and gives back its (awaited) value as JSON
_WRAPPER = ("async function(...raw) { const args = raw.map(a => JSON.parse(a));"
            " const value = await (async function() { %s }).apply(this, args);"
            " return JSON.stringify(value === undefined ? null : value); }")


class BiDiError(RuntimeError):
    """A command the browser refused, or JavaScript that threw: the method and the browser's message."""


class Firefox:
    """A headless Firefox on a fresh profile, one session, one tab (:attr:`context`).

    Parameters
    ----------
    binary : str
        The ``firefox`` program.
    width, height : int
        The viewport, in CSS pixels.
    timeout : float
        Seconds to wait for the browser to listen, and for any one command's answer.
    log : Path, optional
        Where the browser's own output goes (default: a file in the profile's folder, removed at the end).
    """

    def __init__(self, binary: str = FIREFOX, *, width: int = 1280, height: int = 900, timeout: float = 60.0,
                 log: Path | None = None) -> None:
        import websocket

        self.timeout = timeout
        self.folder = Path(tempfile.mkdtemp(prefix="echoengine-firefox-"))
        profile = self.folder / "profile"
        profile.mkdir()
        (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                                 for k, v in PREFERENCES.items()))
        self.log = log or self.folder / "firefox.log"
        port = free_port()
        environment = {**os.environ, "MOZ_HEADLESS": "1", "MOZ_CRASHREPORTER_DISABLE": "1"}
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                [binary, "--headless", "--no-remote", "--profile", str(profile), "--remote-debugging-port",
                 str(port), "about:blank"], stdout=output, stderr=subprocess.STDOUT, env=environment)
        self.events: list[dict] = []
        self._id = 0
        try:
            self.socket = self._connect(websocket, f"ws://127.0.0.1:{port}/session")
            self.command("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
            self.context = self.command("browsingContext.getTree", {"maxDepth": 0})["contexts"][0]["context"]
            self.command("session.subscribe", {"events": ["log.entryAdded"]})
            self.set_viewport(width, height)
        except BaseException:
            self.close()
            raise

    def _connect(self, websocket, url: str):
        """The session's WebSocket, once the browser listens (its output is in the error if it never does)."""
        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise BiDiError(f"firefox exited ({self.process.returncode}): {self.output()[-2000:]}")
            try:  # no Origin header: Firefox refuses WebSocket clients that send one it was not told to allow
                return websocket.create_connection(url, timeout=self.timeout, suppress_origin=True)
            except (OSError, websocket.WebSocketException):
                if time.monotonic() > deadline:
                    raise BiDiError(f"firefox did not listen on {url} in {self.timeout} s: "
                                    f"{self.output()[-2000:]}") from None
                time.sleep(0.2)

    def output(self) -> str:
        """What the browser has written so far."""
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    # ---- the protocol --------------------------------------------------------------------------------------------
    def command(self, method: str, params: dict) -> dict:
        """Send a command and wait for its answer's ``result``; events that arrive meanwhile go to :attr:`events`.

        Raises
        ------
        BiDiError
            The browser answered with an error.
        """
        self._id += 1
        self.socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("type") == "event":
                self.events.append(message)
            elif message.get("id") == self._id:
                if message.get("type") == "error":
                    raise BiDiError(f"{method}: {message.get('error')}: {message.get('message')}")
                return message["result"]

    def navigate(self, url: str) -> None:
        """Load ``url`` in the tab and wait until the document has loaded."""
        self.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def reload(self) -> None:
        """Reload the tab's document and wait until it has loaded."""
        self.command("browsingContext.reload", {"context": self.context, "wait": "complete"})

    def run(self, body: str, *args: Any) -> Any:
        """Run a JavaScript function body (``arguments[0]``... are ``args``, as JSON) in the page, awaiting a
        promise; its value, through JSON.

        Raises
        ------
        BiDiError
            The script threw: its message.
        """
        answer = self.command("script.callFunction", {
            "functionDeclaration": _WRAPPER % body, "awaitPromise": True, "target": {"context": self.context},
            "arguments": [{"type": "string", "value": json.dumps(arg)} for arg in args], "userActivation": True})
        if answer["type"] == "exception":
            details = answer["exceptionDetails"]
            raise BiDiError(f"script: {details.get('text')} (line {details.get('lineNumber')}): {body[:200]}")
        return json.loads(answer["result"]["value"])

    def _element(self, css: str) -> dict:
        """A reference to the first element ``css`` matches (for pointer actions)."""
        answer = self.command("script.callFunction", {
            "functionDeclaration": "function(css) { return document.querySelector(css); }", "awaitPromise": False,
            "target": {"context": self.context}, "arguments": [{"type": "string", "value": css}]})
        value = answer.get("result", {})
        if answer["type"] == "exception" or value.get("type") != "node":
            raise BiDiError(f"no element matches {css!r}")
        return {"sharedId": value["sharedId"]}

    # ---- what a user does ----------------------------------------------------------------------------------------
    def keys(self, *keys: str) -> None:
        """Press keys where the focus is: each argument is a key name of :data:`KEYS` or text typed as it is."""
        actions = []
        for key in keys:
            for value in [KEYS[key]] if key in KEYS else list(key):
                actions += [{"type": "keyDown", "value": value}, {"type": "keyUp", "value": value}]
        self.command("input.performActions", {"context": self.context, "actions": [
            {"type": "key", "id": "keyboard", "actions": actions}]})

    def click(self, css: str) -> None:
        """Move the mouse to the middle of the element ``css`` matches and click it."""
        element = self._element(css)
        self.command("input.performActions", {"context": self.context, "actions": [
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
                {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})

    def set_viewport(self, width: int, height: int) -> None:
        """The viewport's size in CSS pixels."""
        self.command("browsingContext.setViewport", {"context": self.context,
                                                      "viewport": {"width": width, "height": height}})

    def screenshot(self) -> bytes:
        """The viewport as PNG."""
        return base64.b64decode(self.command("browsingContext.captureScreenshot", {"context": self.context})["data"])

    def console_errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """The console's errors since the last call (less those naming one of ``allowed``); the events are
        cleared."""
        self.command("script.evaluate", {"expression": "0", "awaitPromise": False,
                                         "target": {"context": self.context}})  # reads the events sent so far
        errors = [event["params"].get("text", "") for event in self.events
                  if event.get("method") == "log.entryAdded" and event["params"].get("level") == "error"]
        self.events.clear()
        return [text for text in errors if not any(word in text for word in allowed)]

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 20.0, status: Callable[[], str] = str
             ) -> Any:
        """Poll ``condition`` until it is true (its value), or fail saying ``what`` did not happen and ``status()``."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen in {timeout} s; {status()}")
            time.sleep(0.05)

    # ---- the end -------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """End the session and the browser (killed if it does not stop), and remove the profile."""
        try:
            if getattr(self, "socket", None) is None:
                self.process.terminate()
            else:
                with contextlib.suppress(Exception):  # the browser may go before it answers
                    self.command("browser.close", {})
                self.socket.close()
        finally:
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)
            shutil.rmtree(self.folder, ignore_errors=True)  # a log kept elsewhere stays

    def __enter__(self) -> Firefox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
