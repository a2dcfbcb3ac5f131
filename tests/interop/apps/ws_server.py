"""A `websockets` echo server: prints its port; the first message it sends is
the X-Line-User-Id of the upgrade request, then it echoes everything."""

import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    await ws.send("user:" + (ws.request.headers.get("x-line-user-id") or "none"))
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, subprotocols=["chat"]) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main())
