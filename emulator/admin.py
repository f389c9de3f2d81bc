"""`/_emulator/…`: the HTTP face of `Emulator`'s Python API, for tests and tools in other processes.

* `POST /_emulator/inbound` `{"recipient", "sender", "at"?, "body"?}`: a contact wrote in.
* `POST /_emulator/faults` `{"kind", "count"?, "delay_s"?, "retry_after_s"?, "error_code"?,
  "status"?}`: the next create requests meet a fault.
* `GET|PUT /_emulator/callback-options` `{"delay_s", "out_of_order", "duplicates", "read"}`.
* `GET /_emulator/callbacks`: every callback POST attempted.
* `GET /_emulator/messages`: every accepted create request, oldest first.
* `POST /_emulator/reset`: forget everything but the accounts.

Unauthenticated, like the emulator itself: it is a local development tool.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emulator.controls import CallbackOptions, FaultInjection, Inbound
from emulator.store import Emulator


async def _body[M: BaseModel](request: Request, model: type[M]) -> M | JSONResponse:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as error:
        details = error.errors(include_url=False, include_context=False, include_input=False)
        return JSONResponse({"detail": details}, status_code=400)


def routes(emulator: Emulator) -> list[Route]:
    async def inbound(request: Request) -> Response:
        body = await _body(request, Inbound)
        if isinstance(body, Response):
            return body
        emulator.record_inbound(body.recipient, body.sender, body.at, body.body)
        return Response(status_code=204)

    async def faults(request: Request) -> Response:
        body = await _body(request, FaultInjection)
        if isinstance(body, Response):
            return body
        emulator.inject(body.fault(), body.count)
        return Response(status_code=204)

    async def callback_options(request: Request) -> Response:
        if request.method == "PUT":
            body = await _body(request, CallbackOptions)
            if isinstance(body, Response):
                return body
            emulator.configure_callbacks(body)
        return JSONResponse(emulator.callback_options.model_dump())

    async def callbacks(request: Request) -> Response:
        return JSONResponse({"callbacks": emulator.callbacks()})

    async def messages(request: Request) -> Response:
        return JSONResponse({"messages": emulator.received()})

    async def reset(request: Request) -> Response:
        emulator.reset()
        return Response(status_code=204)

    return [
        Route("/_emulator/inbound", inbound, methods=["POST"]),
        Route("/_emulator/faults", faults, methods=["POST"]),
        Route("/_emulator/callback-options", callback_options, methods=["GET", "PUT"]),
        Route("/_emulator/callbacks", callbacks, methods=["GET"]),
        Route("/_emulator/messages", messages, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]
