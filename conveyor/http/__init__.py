"""The aiohttp front end: authenticate, validate, enqueue, report."""
