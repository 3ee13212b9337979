"""The environment the Claude Code CLI, and every command it runs, gets.

claude_agent_sdk starts the CLI with Palaver's whole environment, updated by
``ClaudeAgentOptions.env``: it can add and change variables, not remove them. So the
agent hands it every variable of Palaver's environment that is not on the short list
below set to the empty string: a bot token, the admin token or a database password
never reaches the CLI, nor a ``Bash`` command that prints its environment. (A custom
transport could drop them outright, but the SDK skips its store-backed resume for
custom transports; an empty value is as good as none for a secret.)

Passed through: what a shell and the tools need to work (PATH, HOME, locale, proxies,
CA bundles, TMPDIR), ``ANTHROPIC_*`` and ``CLAUDE_CODE_*`` (how the operator points
Claude Code at an API or a cloud provider), and any name the operator lists in
``claude_code.pass_env``. The API key is given to the CLI here, in its environment,
never on its command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

_KEEP = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TERM",
        "TMPDIR",
        "TEMP",
        "TMP",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
    }
)
_KEEP_PREFIXES = ("LC_", "ANTHROPIC_", "CLAUDE_CODE_", "XDG_")
# Not Palaver's to pass on: the SDK sets these itself, or they would point the CLI
# away from Palaver's own config dir.
_NEVER_PASSED = frozenset({"CLAUDE_CONFIG_DIR", "CLAUDECODE"})


def cli_environment(
    parent: Mapping[str, str],
    *,
    config_dir: Path,
    api_key: str | None = None,
    base_url: str | None = None,
    pass_env: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``ClaudeAgentOptions.env`` for a CLI started from a process with ``parent``."""
    passed = set(pass_env)
    env: dict[str, str] = {}
    for name in parent:
        keep = name in _KEEP or name in passed or name.startswith(_KEEP_PREFIXES)
        if not keep or name in _NEVER_PASSED:
            env[name] = ""
    # The CLI's own state (transcripts, settings) lives in Palaver's data directory,
    # and the SDK reads the same variable to find the transcripts it mirrors.
    env["CLAUDE_CONFIG_DIR"] = str(config_dir)
    # A server host has no use for Claude Code's auto-updater, telemetry and error
    # reports; the operator can still turn them on by setting the variable to 0.
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    if "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC" in parent:
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = parent[
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"
        ]
    if api_key:
        env["ANTHROPIC_API_KEY"] = api_key
    if base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
    env.update(extra or {})
    return env
