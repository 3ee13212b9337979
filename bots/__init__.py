"""Interfaces (console, Telegram, Discord), the shared turn and commands, and wiring."""
