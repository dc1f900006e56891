"""A local emulator of the Mastercard Send Account Balance and myPOS PSD2 balance APIs.

Mastercard under /send, myPOS at the root, the control API under /_sandbox/ (see
watcher.sandbox.control for its routes). Start it with `running_sandbox` (tests) or `serve_sandbox`
(the CLI).
"""

from watcher.sandbox.app import (
    RunningSandbox,
    SandboxError,
    build_sandbox_app,
    running_sandbox,
    serve_sandbox,
)
from watcher.sandbox.settings import SandboxSettings

__all__ = [
    "RunningSandbox",
    "SandboxError",
    "SandboxSettings",
    "build_sandbox_app",
    "running_sandbox",
    "serve_sandbox",
]
