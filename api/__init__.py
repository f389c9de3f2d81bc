"""The HTTP side: FastAPI app, webhook and query routers. Nothing imports this package."""
