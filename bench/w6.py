"""W6: an empty asyncio program; the harness times start-up (fork+exec+wait) and peak RSS."""
import asyncio


async def main():
    pass


asyncio.run(main())
