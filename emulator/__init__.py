"""A local emulator of Twilio's Messages API for WhatsApp senders, driven by the official SDK.

Point the SDK at it with `client.api.base_url = server.url`. It keeps Twilio's wire contract
(Basic auth, form bodies, error JSON and codes, the Message resource, paging, signed status
callbacks) and the WhatsApp rules a sender must survive: the 24-hour window (63016 after a 201),
callbacks late, out of order or twice, 429s, 500s, slow answers and dropped connections.

`zapflow emulator` serves it on its own, and `zapflow up` does when no Twilio API URL is set,
both in open-accounts mode: any well-formed account SID, its first password its auth token.
"""

from emulator.controls import CallbackOptions, Fault, FaultKind
from emulator.server import EmulatorApp, EmulatorServer, create_app, run, serve
from emulator.store import Emulator

__all__ = [
    "CallbackOptions",
    "Emulator",
    "EmulatorApp",
    "EmulatorServer",
    "Fault",
    "FaultKind",
    "create_app",
    "run",
    "serve",
]
