"""A signing process's main (`python -m watcher.sign_worker`): OAuth1 headers for its parent, the daemon.

Started and fed by `watcher.sign_process.SigningProcesses`, over its stdin and stdout, one line per
message, fields separated by tabs:
- `K <key id> <base64 PKCS#8 DER>`: a private key the requests after it may name;
- `S <request id> <key id> <method> <consumer key> <url>`: sign; the answer is `<request id> <header>`,
  or `<request id> !<error>` when it cannot be signed (an unknown key, a field the header cannot hold).
The process exits when its stdin closes: the daemon closes it at shutdown, and the kernel does when the
daemon dies. It ignores SIGINT and SIGTERM, which a terminal or systemd also sends it: the daemon decides
when signing stops, after its last poll in flight.
"""

from __future__ import annotations

import base64
import signal
import sys
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_der_private_key

from watcher.signing import authorization_header


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer each signing request in order until `requests` ends."""
    keys: dict[str, RSAPrivateKey] = {}
    for line in requests:
        kind, _, rest = line.decode().rstrip("\n").partition("\t")
        if kind == "K":
            key_id, _, der = rest.partition("\t")
            loaded = load_der_private_key(base64.b64decode(der), password=None)
            if not isinstance(loaded, RSAPrivateKey):  # the parent sends RSA keys only
                raise SystemExit(f"signing key {key_id} is not an RSA key")
            keys[key_id] = loaded
            continue
        fields = rest.split("\t")
        if kind != "S" or len(fields) != 5:  # not the parent's: stop, without echoing what it holds
            raise SystemExit(f"watcher.sign_worker: a malformed request line ({len(fields) + 1} fields)")
        request_id, key_id, method, consumer_key, url = fields
        key = keys.get(key_id)
        if key is None:
            answer = f"!no signing key {key_id}"
        else:
            try:
                answer = authorization_header(url, method, consumer_key, key)
            except Exception as exc:  # one request's fault: its caller hears of it, the others go on
                answer = f"!{type(exc).__name__}: {exc}"
        answers.write(f"{request_id}\t{answer}\n".encode())
        answers.flush()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
