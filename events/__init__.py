"""The event-log contract: envelopes, the type registry, and the per-tenant hash chain.

This package imports nothing else of zapflow's and no framework or I/O library.
"""
