"""Who may talk to the bot: one policy for every interface.

The default is closed: with no allowlist, nobody is allowed until the operator adds
someone or sets ``access.allow_everyone``. An id in the lists matches on any
interface ("12345") or on one ("telegram:12345"). ``allowed_chats`` lets everyone in
a chat in (a Telegram group, a Discord guild or channel), ``allowed_guilds`` and
``allowed_roles`` everyone in a Discord guild or with a role there: all are matched
against the actor's ``groups``. The local console is the operator at the terminal and
is always allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conversation.settings import AccessSettings


@dataclass(frozen=True, slots=True)
class Actor:
    """The person behind an incoming message."""

    interface: str
    user_id: str
    display_name: str | None = None
    # Extra ids this person matches as (a Discord guild or role, a Telegram chat).
    groups: tuple[str, ...] = field(default=())


class AccessPolicy:
    # Interfaces that authenticate their callers themselves: whoever reaches the core
    # through the HTTP API holds its admin token, and names the participant.
    AUTHENTICATED = frozenset({"api"})

    def __init__(self, settings: AccessSettings) -> None:
        self._allowed = set(settings.allowed_users)
        # Discord's guild, role and channel ids are all snowflakes, unique across kinds,
        # so one set serves them all; an actor carries those it belongs to in ``groups``.
        self._chats = (
            set(settings.allowed_chats) | set(settings.allowed_guilds) | set(settings.allowed_roles)
        )
        self._admins = set(settings.admins)
        self._everyone = settings.allow_everyone

    def _matches(self, actor: Actor, ids: set[str]) -> bool:
        candidates = (actor.user_id, *actor.groups)
        return any(c in ids or f"{actor.interface}:{c}" in ids for c in candidates)

    @staticmethod
    def is_operator(actor: Actor) -> bool:
        """The person at the console: the one who runs this bot."""
        return actor.interface == "console"

    def allows(self, actor: Actor) -> bool:
        if self.is_operator(actor) or self._everyone or actor.interface in self.AUTHENTICATED:
            return True
        if self._matches(actor, self._allowed) or self.is_admin(actor):
            return True
        chats = self._chats
        return any(g in chats or f"{actor.interface}:{g}" in chats for g in actor.groups)

    def is_admin(self, actor: Actor) -> bool:
        if self.is_operator(actor):
            return True
        return actor.user_id in self._admins or f"{actor.interface}:{actor.user_id}" in self._admins

    def admin_ids(self, interface: str) -> list[str]:
        """The admins' user ids on ``interface`` (bare ids count for every interface)."""
        ids: set[str] = set()
        for entry in self._admins:
            prefix, colon, user_id = entry.partition(":")
            if not colon:
                ids.add(entry)
            elif prefix == interface and user_id:
                ids.add(user_id)
        return sorted(ids)

    @staticmethod
    def denied_message(actor: Actor) -> str:
        return (
            "Sorry, this bot is private and you are not on its allowlist.\n"
            f"Your {actor.interface} user id is {actor.user_id}. To let you in, the operator "
            f'adds "{actor.interface}:{actor.user_id}" to access.allowed_users in config.toml '
            "(or PALAVER_ACCESS__ALLOWED_USERS)."
        )
