#!/usr/bin/env python3
"""A MongoDB wire-protocol server for the tests (mongoeco, in memory): no real mongod installs here.

    mongo-server.py [PORT]      default 27017; serves until killed
"""
import asyncio
import sys

from mongoeco.engines.memory import MemoryEngine
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 27017
    server = AsyncMongoEcoProxyServer(engine=MemoryEngine(), host="127.0.0.1", port=port)
    await server.start()
    print(f"mongoeco on {server.address}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
