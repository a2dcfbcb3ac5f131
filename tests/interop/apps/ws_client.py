"""A `websockets` client through the proxy: `ws_client.py URL TOKEN N`. The token
goes as a subprotocol entry (as a browser must send it); N messages are echoed.
Prints one JSON object."""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url, token, n):
    async with connect(url, subprotocols=[f"bearer.line-auth-proxy.{token}", "chat"]) as ws:
        first = await ws.recv()
        echoed = 0
        for i in range(n):
            message = f"message {i}"
            await ws.send(message)
            if await ws.recv() == message:
                echoed += 1
        print(json.dumps({"first": first, "echoed": echoed, "subprotocol": ws.subprotocol}), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
