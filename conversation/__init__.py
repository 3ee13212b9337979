"""The conversation core: everything between "a platform event arrived, translated"
and "this text or file goes to that place", decided once for every interface.

Platform-free: it knows chats by ``ChatKey`` and people by ``Actor``; the interfaces
(bots/) translate their events into ``Inbound`` values and implement the outbound
port. Imports point one way: interfaces -> conversation -> agents -> memory.
"""
