"""A Starlette app run by uvicorn: `uvicorn asgi_app:app --port 0`."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def whoami(request):
    raw = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
    return JSONResponse({"user_id": request.headers.get("x-line-user-id"), "raw": raw})


app = Starlette(routes=[Route("/whoami", whoami)])
