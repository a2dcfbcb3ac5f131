"""Opens N keep-alive connections to a proxy, sends one authorised request on
each (so that each is a served connection, not a bare socket), reads the
answer, and then holds them all idle until stdin closes. Prints "HELD <n>"
once they are all open. Used by benches/load.sh to measure the memory of idle
client connections.

    python3 benches/idle_conns.py HOST PORT N TOKEN
"""
import asyncio
import sys


async def one(host, port, token, held, gate):
    async with gate:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET /api/idle HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"not 200: {head[:40]!r}")
        held.append(writer)


async def main():
    host, port, n, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    held = []
    gate = asyncio.Semaphore(int(__import__("os").environ.get("GATE", "256")))
    await asyncio.gather(*(one(host, port, token, held, gate) for _ in range(n)))
    print(f"HELD {len(held)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()


asyncio.run(main())
