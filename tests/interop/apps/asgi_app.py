"""A Starlette app run by uvicorn: `uvicorn asgi_app:app --port 0`.

- GET /whoami (and /api/whoami, /plain/whoami): the identity as the ASGI scope has it;
- CORS for any http://127.0.0.1:PORT page (the browser test's page origin), so
  that the upstream answers the preflights the proxy forwards and its own 200s;
- WebSocket /ws/chat: accepts the subprotocol "chat", sends
  "user:<X-Line-User-Id>" first, then echoes."""

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute


async def whoami(request):
    raw = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
    return JSONResponse({"user_id": request.headers.get("x-line-user-id"), "raw": raw})


async def chat(websocket):
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="chat" if "chat" in offered else None)
    await websocket.send_text("user:" + (websocket.headers.get("x-line-user-id") or "none"))
    await websocket.send_text("offered:" + ",".join(offered))
    async for message in websocket.iter_text():
        await websocket.send_text(message)


app = Starlette(
    routes=[
        Route("/whoami", whoami),
        Route("/api/whoami", whoami),
        Route("/plain/whoami", whoami),
        WebSocketRoute("/ws/chat", chat),
    ],
    middleware=[
        Middleware(
            CORSMiddleware,
            allow_origin_regex=r"^http://127\.0\.0\.1:[0-9]+$",
            allow_methods=["GET"],
            allow_headers=["authorization"],
        )
    ],
)
