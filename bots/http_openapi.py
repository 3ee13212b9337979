"""The OpenAPI 3 document of the operator surface, served at /api/openapi.json.

Written by hand, next to nothing else, and checked against the server's routes by a
test (every route documented, nothing documented that does not exist).
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}} if schema else None
    response: dict[str, Any] = {"description": description}
    if content:
        response["content"] = content
    return response


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"], "description": "null: the last page"},
        },
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


SESSION_ID = _path("id", "a session id", {"type": "integer", "minimum": 1})
CURSOR = _query("cursor", "the next_cursor of the previous page")
LIMIT = _query("limit", "items per page (at most http.max_page_size)", {"type": "integer"})
ERRORS = {"400": _ERROR, "401": _ERROR, "404": _ERROR, "503": _ERROR}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An operation: its own responses, and the errors every route may answer
    (where it says more of one, say what a 404 means there, its own wins)."""
    return {"summary": summary, "responses": {**ERRORS, **responses}, **extra}


def _error(description: str) -> dict[str, Any]:
    """An error response of one route, saying when it happens."""
    schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document(version: str) -> dict[str, Any]:
    usage = {
        "type": "object",
        "properties": {
            k: {"type": "integer"}
            for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
        }
        | {"cost_usd": {"type": "number"}},
    }
    session = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "chat": {"type": ["string", "null"]},
            "scope": {"enum": ["chat", "project"]},
            "project_id": {"type": ["integer", "null"]},
            "interface": {"type": "string"},
            "status": {"enum": ["active", "idle", "finalized", "expired", "ended"]},
            "created_at": {"type": "string", "format": "date-time"},
            "last_activity_at": {"type": "string", "format": "date-time"},
            "ended_at": {"type": ["string", "null"], "format": "date-time"},
            "usage": usage,
            "carried_summary": {"type": ["string", "null"]},
            "closing_summary": {"type": ["string", "null"]},
            "message_count": {"type": "integer"},
            "stats": {"type": "object", "description": "with ?stats=true, and for one session"},
        },
    }
    attachment = {
        "type": "object",
        "description": "a file kept with its message (JSON exports; absent: no files)",
        "properties": {
            "name": {"type": "string"},
            "kind": {"enum": ["image", "pdf"]},
            "media_type": {"type": "string"},
            "sha256": {"type": "string", "description": "the content hash of the bytes"},
            "bytes": {"type": "integer"},
            "width": {"type": ["integer", "null"]},
            "height": {"type": ["integer", "null"]},
            "pages": {"type": ["integer", "null"]},
            "tokens": {"type": "integer"},
            "data": {
                "type": "string",
                "contentEncoding": "base64",
                "description": "the bytes, in an export with files=true; an import checks "
                "them against sha256 and keeps them",
            },
        },
    }
    message = {
        "type": "object",
        "properties": {
            "session_id": {"type": "integer"},
            "seq": {"type": "integer"},
            "role": {"enum": ["user", "assistant", "system", "tool"]},
            "author_id": {"type": ["string", "null"]},
            "author_name": {"type": ["string", "null"]},
            "text": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "token_count": {"type": "integer"},
            "platform_message_id": {"type": ["string", "null"]},
            "metadata": {"type": "object"},
            "usage": {"oneOf": [usage, {"type": "null"}]},
            "attachments": {"type": "array", "items": attachment},
        },
    }
    summary = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "first_seq": {"type": "integer"},
            "last_seq": {"type": "integer"},
            "level": {"type": "integer"},
            "text": {"type": "string"},
            "token_count": {"type": "integer"},
            "summarizer": {"type": "string"},
            "fallback": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
        },
    }
    export = {
        "type": "object",
        "description": 'a JSON export as GET .../export?format=json writes it ("palaver-export/1")',
        "required": ["format", "session", "summaries", "messages"],
        "properties": {
            "format": {"const": "palaver-export/1"},
            "session": _ref("Session"),
            "summaries": {"type": "array", "items": _ref("Summary")},
            "messages": {"type": "array", "items": _ref("Message")},
        },
    }
    chat_request = {
        "type": "object",
        "required": ["user_id", "text"],
        "additionalProperties": False,
        "properties": {
            "user_id": {"type": "string", "maxLength": 100},
            "display_name": {"type": ["string", "null"], "maxLength": 200},
            "text": {"type": "string"},
            "message_id": {"type": ["string", "null"], "maxLength": 100},
            "thread": {"type": ["string", "null"]},
            "group": {"type": "boolean", "default": False},
        },
    }
    any_object = {"type": "object"}
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "The process answers (no token needed)",
                "security": [],
                "responses": {"200": _ok("alive", any_object)},
            }
        },
        "/readyz": {
            "get": _op(
                "The database answers and every configured bot is connected",
                {"200": _ok("ready", any_object)},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "the text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/api/openapi.json": {"get": _op("This document", {"200": _ok("OpenAPI 3", any_object)})},
        "/api/sessions": {
            "get": _op(
                "Sessions, newest first, a page at a time",
                {"200": _ok("a page of sessions", _page("Session"))},
                parameters=[
                    _query("interface", "telegram, discord, console, api, ..."),
                    _query("chat", "interface:chat_id[:thread_id]: that chat's own sessions"),
                    _query("status", "one or more of active,idle,finalized,expired,ended"),
                    _query("project", "a project's name or id"),
                    _query("user", "sessions this user wrote in: user_id or interface:user_id"),
                    _query(
                        "active_since", "ISO 8601 time", {"type": "string", "format": "date-time"}
                    ),
                    _query(
                        "stats", "true: each session's counters, and totals", {"type": "boolean"}
                    ),
                    CURSOR,
                    LIMIT,
                ],
            )
        },
        "/api/sessions/{id}": {
            "get": _op(
                "One session, with its counters",
                {"200": _ok("the session", _ref("Session"))},
                parameters=[SESSION_ID],
            ),
            "delete": _op(
                "Delete a session with its messages, summaries and events",
                {"200": _ok("deleted", any_object)},
                parameters=[SESSION_ID],
            ),
        },
        "/api/sessions/{id}/messages": {
            "get": _op(
                "A session's messages, oldest first, a page at a time",
                {"200": _ok("a page of messages", _page("Message"))},
                parameters=[SESSION_ID, CURSOR, LIMIT],
            )
        },
        "/api/sessions/{id}/summaries": {
            "get": _op(
                "A session's active summaries",
                {
                    "200": _ok(
                        "summaries",
                        {
                            "type": "object",
                            "properties": {"items": {"type": "array", "items": _ref("Summary")}},
                        },
                    )
                },
                parameters=[SESSION_ID],
            )
        },
        "/api/sessions/{id}/export": {
            "get": _op(
                "The session as a file, streamed",
                {
                    "200": {
                        "description": "the export",
                        "content": {
                            "application/json": {"schema": _ref("Export")},
                            "text/csv": {"schema": {"type": "string"}},
                            "text/markdown": {"schema": {"type": "string"}},
                        },
                    }
                },
                parameters=[
                    SESSION_ID,
                    _query("format", "json (default), csv or md"),
                    _query(
                        "files",
                        "true: each attachment of a JSON export carries its bytes as base64 "
                        "`data`, so that an import elsewhere links the files again "
                        "(default false: references by content hash only)",
                        {"type": "boolean", "default": False},
                    ),
                ],
            )
        },
        "/api/sessions/{id}/end": {
            "post": _op(
                "End a session that is still going (as /reset does)",
                {"200": _ok("the ended session", _ref("Session")), "409": _ERROR},
                parameters=[SESSION_ID],
            )
        },
        "/api/import": {
            "post": _op(
                "Restore a JSON export: all or nothing, and only once",
                {
                    "201": _ok("imported", any_object),
                    "200": _ok("this export is here already: nothing changed", any_object),
                    "413": _ERROR,
                },
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Export")}},
                },
            )
        },
        "/api/stats": {
            "get": _op(
                "Totals, by interface, tokens and cost per day, cache hit rates",
                {"200": _ok("stats", any_object)},
                parameters=[
                    _query("days", "days of per-day usage (default 30)", {"type": "integer"})
                ],
            )
        },
        "/api/projects": {"get": _op("Projects", {"200": _ok("projects", any_object)})},
        "/api/jobs": {
            "get": _op(
                "Scheduled jobs, with their last and next runs", {"200": _ok("jobs", any_object)}
            )
        },
        "/api/jobs/{name}/run": {
            "post": _op(
                "Run a job now",
                {
                    "200": _ok("the recorded run", any_object),
                    "404": _error("there is no job of that name (the error lists the jobs)"),
                    "409": _ERROR,
                    "503": _error(
                        "jobs do not run in this process, or they are shutting down: "
                        "nothing new starts"
                    ),
                },
                parameters=[_path("name", "the job's name")],
            )
        },
        "/api/chats/{chat}/messages": {
            "post": _op(
                "A turn in the API chat {chat}, the reply streamed as server-sent events",
                {
                    "200": {
                        "description": "events: delta, replace, message, file, offer, done",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    }
                },
                parameters=[_path("chat", "the chat's id: letters, digits, _ . @ -")],
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ChatMessage")}},
                },
            )
        },
    }
    paths["/api/chats/{chat}/choices"] = {
        "post": _op(
            "Press a choice an offer event showed (a tool approval)",
            {"200": _ok("what the press did", any_object)},
            parameters=[_path("chat", "the chat's id")],
            requestBody={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["user_id", "data"],
                            "properties": {
                                "user_id": {"type": "string"},
                                "display_name": {"type": ["string", "null"]},
                                "data": {"type": "string"},
                                "thread": {"type": ["string", "null"]},
                            },
                        }
                    }
                },
            },
        )
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Palaver operator API",
            "version": version,
            "description": "Sessions, transcripts, summaries, export and import, stats, jobs "
            "and chat. Live events: Socket.IO at /socket.io/ (auth: {token}).",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "an error, in plain words",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["error"],
                                "properties": {"error": {"type": "string"}},
                            }
                        }
                    },
                }
            },
            "schemas": {
                "Session": session,
                "Message": message,
                "Summary": summary,
                "Export": export,
                "ChatMessage": chat_request,
            },
        },
    }
