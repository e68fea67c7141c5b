"""Errors in OpenAI's shape, so any OpenAI client shows the message instead of failing to parse it."""
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """A request the server refuses; becomes `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self):
        return JSONResponse(self.body(), status_code=self.status)


def invalid(message, param=None, code=None):
    """The usual 400 for a request that is well-formed JSON but asks for something wrong."""
    return APIError(400, message, param=param, code=code)


def install_handlers(app: FastAPI):
    """Every error the app can produce, routing ones (404, 405) and bugs included, leaves in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError):
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException):
        code = "not_found" if error.status_code == 404 else None
        return APIError(error.status_code, str(error.detail), code=code).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        # The traceback goes to the server log, never to the client.
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error", type="server_error").response()
