"""A bare Starlette + aiohttp passthrough: the floor a Python proxy on the same stack can reach."""
