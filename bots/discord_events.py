"""Discord events as the core's terms: which chat, who, which files, what text.

- **Chats.** A chat is ``ChatKey("discord", <channel id>)``; a DM is its DM channel's
  id; a thread (or forum post) is ``ChatKey("discord", <parent channel id>, <thread id>)``.
- **Who.** A person, with the ids that ``access`` lists may name to let them in.
- **Text.** Mentions become names the model can read (``<@123>`` -> ``@alice``).
"""

from __future__ import annotations

import re

import discord

from conversation.access import Actor
from conversation.inbound import Attachment
from memory.types import ChatKey

INTERFACE = "discord"


def chat_key(channel: object, channel_id: int | None) -> ChatKey:
    """The session key of a channel: threads are keyed under their parent channel."""
    if isinstance(channel, discord.Thread):
        return ChatKey(INTERFACE, str(channel.parent_id), str(channel.id))
    return ChatKey(INTERFACE, str(channel_id))


def actor_of(user: discord.User | discord.Member, channel: object) -> Actor:
    """The person, with the ids ``access`` lists may name to let them in: in a guild,
    the guild, the channel (and a thread's parent) and the member's roles; in a DM, none
    (a DM needs the user in ``allowed_users``: a guild's allowance stays in the guild)."""
    groups: list[str] = []
    if isinstance(user, discord.Member):
        groups.append(str(user.guild.id))
        if isinstance(channel, discord.Thread):
            groups.append(str(channel.parent_id))
        if isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            groups.append(str(channel.id))
        # Member.roles includes @everyone, whose id is the guild's id.
        groups += (str(role.id) for role in user.roles)
    return Actor(INTERFACE, str(user.id), user.display_name, tuple(dict.fromkeys(groups)))


def attachments_of(message: discord.Message) -> tuple[Attachment, ...]:
    """A message's files (images with the pixels Discord states) and stickers (named)."""
    files = tuple(
        Attachment(
            a.filename, "file", a.content_type, a.size, a.read, width=a.width, height=a.height
        )
        for a in message.attachments
    )
    stickers = tuple(Attachment(f"a sticker ({s.name})", "sticker") for s in message.stickers)
    return files + stickers


_MENTION = re.compile(r"<(@[!&]?|#)(\d+)>")


def readable_content(message: discord.Message, *, strip_user_id: int | None = None) -> str:
    """The text with mentions as names (``<@123>`` -> ``@alice``) for the model; a leading
    mention of ``strip_user_id`` (the bot, when addressed) is removed."""
    text = message.content
    if strip_user_id is not None:
        own_role = message.guild.self_role if message.guild is not None else None
        lead = rf"^\s*<@!?{strip_user_id}>" + (rf"|^\s*<@&{own_role.id}>" if own_role else "")
        text = re.sub(lead, "", text)
    users = {u.id: u.display_name for u in message.mentions}
    roles = {r.id: r.name for r in message.role_mentions}
    channels = {c.id: getattr(c, "name", str(c.id)) for c in message.channel_mentions}

    def name(match: re.Match[str]) -> str:
        kind, ident = match.group(1), int(match.group(2))
        if kind == "#":
            return f"#{channels[ident]}" if ident in channels else match.group(0)
        if kind == "@&":
            return f"@{roles[ident]}" if ident in roles else match.group(0)
        return f"@{users[ident]}" if ident in users else match.group(0)

    return _MENTION.sub(name, text).strip()
