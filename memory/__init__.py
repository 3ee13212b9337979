"""Palaver's session memory: durable sessions, token ledger, rolling summaries.

Knows nothing of chats or models beyond plain data (memory.types).
"""
