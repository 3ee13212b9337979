"""Configuration: defaults, environment overrides, validation, secrets, run.py exits."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bots.config import DEFAULT_CONFIG, SECRET_ENV, ConfigError, load_config, render_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "palaver.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_config_equals_the_built_in_defaults() -> None:
    from_file = load_config(DEFAULT_CONFIG, environ={})
    from bots.config import Config

    defaults = Config()
    relative = {"palaver", "projects"}  # paths, made absolute against the file's folder
    assert from_file.model_dump(exclude=relative) == defaults.model_dump(exclude=relative)
    assert from_file.palaver.data_dir == ROOT / "data"
    assert from_file.projects_root == ROOT / "projects"


def test_every_setting_is_in_config_toml_with_a_comment() -> None:
    import tomllib

    from bots.config import Config

    shipped = tomllib.loads(DEFAULT_CONFIG.read_text())
    for name, section in Config().model_dump().items():
        assert name in shipped, f"[{name}] missing from config.toml"
        assert set(section) == set(shipped[name]), f"[{name}] keys differ"
    for line in DEFAULT_CONFIG.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#") and "system_prompt" not in line:
            assert "#" in line, f"no comment on: {line}"


def test_environment_overrides_use_the_documented_scheme(tmp_path: Path) -> None:
    path = write(tmp_path, "[memory]\ntoken_limit = 5000\n")
    config = load_config(
        path,
        environ={
            "PALAVER_MEMORY__TOKEN_LIMIT": "50000",
            "PALAVER_ACCESS__ALLOWED_USERS": '["telegram:1", "2"]',
            "PALAVER_DATABASE__URL": "postgresql+asyncpg://u:pw@db/x",
            "PALAVER_AGENT__SYSTEM_PROMPT": "Be terse.",
            "PALAVER_JOBS__CLEANUP__CRON": "30 * * * *",
            "PALAVER_JOBS__FINALIZE__BATCH": "50",
        },
    )
    assert config.memory.token_limit == 50000
    assert config.jobs.cleanup.cron == "30 * * * *"
    assert config.jobs.finalize.batch == 50
    assert config.access.allowed_users == ["telegram:1", "2"]
    assert config.database_url == "postgresql+asyncpg://u:pw@db/x"
    assert config.agent.system_prompt == "Be terse."


def test_a_bad_value_names_key_value_and_what_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "[memory]\nsummarize_threshold = 1.5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert "memory.summarize_threshold = 1.5" in message
    assert "less than 1" in message


def test_bad_values_from_the_environment_and_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"memory.token_limit = 'lots'.*valid integer"):
        load_config(path, environ={"PALAVER_MEMORY__TOKEN_LIMIT": "lots"})
    with pytest.raises(ConfigError, match=r"memory.tokne_limit.*Extra inputs"):
        load_config(write(tmp_path, "[memory]\ntokne_limit = 3\n"), environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[memory\n"), environ={})
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.toml", environ={})


def test_settings_that_contradict_each_other_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[telegram]\nhttp_version = "2"\n')
    with pytest.raises(ConfigError, match=r'http_version = "2" needs http_client = "httpx"'):
        load_config(path, environ={})
    path = write(tmp_path, '[telegram]\nhttp_version = "2"\nhttp_client = "httpx"\n')
    assert load_config(path, environ={}).telegram.http_version == "2"


def test_secrets_come_only_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[agent]\nanthropic_api_key = "sk-in-file"\n')
    with pytest.raises(ConfigError, match="secrets come only from the environment"):
        load_config(path, environ={})
    config = load_config(write(tmp_path, ""), environ={"ANTHROPIC_API_KEY": "sk-ant-secret-1"})
    assert config.secrets.anthropic_api_key is not None
    assert config.secrets.anthropic_api_key.get_secret_value() == "sk-ant-secret-1"
    assert "sk-ant-secret-1" not in repr(config)


def test_check_config_masks_secrets_and_database_passwords(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": "sk-ant-very-secret",
        "TELEGRAM_BOT_TOKEN": "123:telegram-secret",
        "PALAVER_DATABASE__URL": "postgresql+asyncpg://palaver:hunter2@db.example/x",
    }
    done = subprocess.run(
        [sys.executable, "run.py", "--config", str(write(tmp_path, "")), "check-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "sk-ant-very-secret" not in out and "telegram-secret" not in out
    assert "hunter2" not in out
    assert "# ANTHROPIC_API_KEY = ****** (set)" in out
    assert "# DISCORD_BOT_TOKEN = (not set)" in out
    assert "token_limit = 100000" in out


def test_render_config_round_trips_as_toml(tmp_path: Path) -> None:
    import tomllib

    config = load_config(write(tmp_path, ""), environ={})
    parsed = tomllib.loads(render_config(config))
    assert parsed["memory"]["summarize_threshold"] == 0.7


def test_run_exits_non_zero_on_bad_config_before_touching_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = write(tmp_path, f'[palaver]\ndata_dir = "{data_dir}"\n[memory]\ntoken_limit = -1\n')
    done = subprocess.run(
        [sys.executable, "run.py", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "memory.token_limit = -1" in done.stderr
    assert not data_dir.exists(), "nothing may be created when the config is bad"


# -- start-up errors: one line each, exit status 2, no traceback -----------------------------

BAD_VALUES = [
    pytest.param(
        {"PALAVER_DATABASE__URL": "not a url"},
        ["database.url = 'not a url'", "sqlite+aiosqlite:///", "postgresql+asyncpg://"],
        id="database-url-not-a-url",
    ),
    pytest.param(
        {"PALAVER_DATABASE__URL": "mysql+aiomysql://root:hunter2@db/x"},
        ["database.url = 'mysql+aiomysql://root:***@db/x'", "postgresql+asyncpg://"],
        id="database-url-unsupported",
    ),
    pytest.param(
        {"PALAVER_DATABASE__URL": "sqlite+aiosqlite:///{tmp}/nowhere/deep/palaver.db"},
        [
            "database.url = 'sqlite+aiosqlite:///{tmp}/nowhere/deep/palaver.db'",
            "{tmp}/nowhere/deep does not exist",
        ],
        id="sqlite-into-a-missing-directory",
    ),
    pytest.param(
        {"PALAVER_PALAVER__DATA_DIR": "{tmp}/a-file"},
        ["palaver.data_dir = '{tmp}/a-file'", "not a directory"],
        id="data-dir-is-a-file",
    ),
    pytest.param(
        {"PALAVER_PALAVER__DATA_DIR": "{tmp}/missing/data"},
        ["palaver.data_dir = '{tmp}/missing/data'", "{tmp}/missing does not exist"],
        id="data-dir-parent-missing",
    ),
    pytest.param(
        {"PALAVER_CLAUDE__BASE_URL": "::::", "ANTHROPIC_API_KEY": "sk-test"},
        ["claude.base_url = '::::'", "http:// or https://", "empty"],
        id="claude-base-url",
    ),
    pytest.param(
        {"PALAVER_TELEGRAM__BASE_URL": "api.telegram.org/bot"},
        ["telegram.base_url = 'api.telegram.org/bot'", "http:// or https://"],
        id="telegram-base-url",
    ),
    pytest.param(
        {"PALAVER_MEMORY__TOKEN_LIMIT": "3000"},
        [
            "memory.summary_max_tokens = 500 must be at most half of token_limit x "
            "summary_share = 3000 x 0.3 = 900, so at most 450"
        ],
        id="summary-share-with-numbers",
    ),
    pytest.param(
        {"PALAVER_MEMORY__RETAIN_FOR_S": "1e30"},
        ["memory.retain_for_s = 1e+30", "at most 10 years"],
        id="duration-huge",
    ),
    pytest.param(
        {"PALAVER_MEMORY__RETAIN_FOR_S": "1000000000000000000000"},
        ["memory.retain_for_s = 1000000000000000000000", "at most 10 years"],
        id="duration-huge-integer",
    ),
    pytest.param(
        {"PALAVER_JOBS__KEEP_RUNS_S": "99999999999"},
        ["jobs.keep_runs_s = 99999999999", "at most 10 years (315360000)"],
        id="duration-keep-runs",
    ),
    pytest.param(
        {"PALAVER_MEMORY__CACHE_VERIFY_AFTER_S": "inf"},
        ["memory.cache_verify_after_s = inf", "finite number of seconds"],
        id="duration-inf",
    ),
    pytest.param(
        {"PALAVER_CLAUDE__BREAKER_RESET_S": "nan"},
        ["claude.breaker_reset_s = nan", "finite number of seconds"],
        id="duration-nan",
    ),
    pytest.param(
        {"PALAVER_CLAUDE_CODE__IDLE_S": "1e300"},
        ["claude_code.idle_s = 1e+300", "at most 10 years"],
        id="duration-claude-code-idle",
    ),
    pytest.param(
        {"PALAVER_MEMORY__EXPIRE_AFTER_S": "100"},
        ["memory.expire_after_s = 100 must be longer than idle_after_s = 1800"],
        id="expire-before-idle",
    ),
]


def bad_value_env(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    (tmp_path / "a-file").write_text("not a directory")
    return {
        "PALAVER_PALAVER__DATA_DIR": str(tmp_path / "data"),
        **{k: v.format(tmp=tmp_path) for k, v in env.items()},
    }


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("env", "expected"), BAD_VALUES)
def test_every_bad_value_is_one_line_and_exit_status_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    expected: list[str],
    command: str,
) -> None:
    from run import main

    for name in [n for n in os.environ if n.startswith("PALAVER_") or n in SECRET_ENV]:
        monkeypatch.delenv(name)
    for name, value in bad_value_env(tmp_path, env).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # were it accepted: the console ends
    config = write(tmp_path, "")
    assert main(["--config", str(config), command]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("palaver: invalid configuration: ")
    for part in expected:
        assert part.format(tmp=tmp_path) in lines[0]
    assert out == ""
    assert "hunter2" not in err
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "nowhere").exists()


def test_a_bad_value_through_the_real_process_has_no_traceback(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PALAVER_") and k not in SECRET_ENV
    }
    env.update(bad_value_env(tmp_path, {"PALAVER_DATABASE__URL": "not a url"}))
    for command in ("check-config", "run"):
        done = subprocess.run(
            [sys.executable, "run.py", "--config", str(write(tmp_path, "")), command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            "palaver: invalid configuration: database.url = 'not a url': not a database "
            "URL; use sqlite+aiosqlite:///path/to/file.db or "
            "postgresql+asyncpg://user@host/database (empty: a SQLite file in "
            "palaver.data_dir)"
        ]


def test_several_bad_values_are_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, "[memory]\ntoken_limit = -1\n[agent]\nmax_tokens = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("invalid configuration: ") for line in lines)
    assert any("memory.token_limit = -1" in line for line in lines)
    assert any("agent.max_tokens = 0" in line for line in lines)


def test_a_sqlite_file_in_an_existing_directory_or_the_data_dir_is_fine(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for url in (
        f"sqlite+aiosqlite:///{elsewhere}/palaver.db",
        f"sqlite+aiosqlite:///{tmp_path}/data/palaver.db",  # the data dir: made at start
        "sqlite+aiosqlite:///:memory:",
        "",
    ):
        environ = {
            "PALAVER_DATABASE__URL": url,
            "PALAVER_PALAVER__DATA_DIR": str(tmp_path / "data"),
        }
        assert load_config(write(tmp_path, ""), environ=environ).database.url == url


def test_a_moved_key_still_works_under_its_old_name_with_a_warning(tmp_path: Path) -> None:
    """[telegram] text_extensions now lives in [attachments], for every interface: an
    old config keeps working, says so at start, and the new name wins when both are set."""
    path = write(tmp_path, '[telegram]\ntext_extensions = [".rst", ".tex"]\n')
    config = load_config(path, environ={})
    assert config.attachments.text_extensions == [".rst", ".tex"]
    assert config.notes == [
        "telegram.text_extensions has moved to attachments.text_extensions; "
        "the old name still works for now"
    ]
    (tmp_path / "both").mkdir()
    both = write(
        tmp_path / "both",
        '[telegram]\ntext_extensions = [".rst"]\n[attachments]\ntext_extensions = [".tex"]\n',
    )
    assert load_config(both, environ={}).attachments.text_extensions == [".tex"]

    done = subprocess.run(
        [sys.executable, "run.py", "--config", str(path), "check-config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("PALAVER_")},
    )
    assert done.returncode == 0, done.stderr
    assert "telegram.text_extensions has moved to attachments.text_extensions" in done.stderr
    assert 'text_extensions = [".rst", ".tex"]' in done.stdout


@pytest.mark.parametrize("command", [["check-config"], ["run"], ["stats"], ["jobs", "list"]])
@pytest.mark.parametrize(
    ("where", "wrong"),
    [
        pytest.param("missing.toml", "no such configuration file", id="missing"),
        pytest.param(".", "a directory; give the configuration file in it", id="directory"),
        pytest.param("a-file/palaver.toml", "cannot be read: Not a directory", id="unreadable"),
    ],
)
def test_a_config_file_that_cannot_be_read_is_one_line_and_exit_status_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    where: str,
    wrong: str,
) -> None:
    """The operator's commands (stats, jobs) say it as run.py does."""
    from run import main

    (tmp_path / "a-file").write_text("not a directory")
    path = (tmp_path / where).resolve()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["--config", str(path), *command]) == 2
    out, err = capsys.readouterr()
    assert err == f"palaver: invalid configuration: --config = {str(path)!r}: {wrong}\n"
    assert out == ""


def test_the_operator_commands_redact_secrets_in_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token pasted into a setting is echoed in its problem: not in clear."""
    from run import main

    for name in [n for n in os.environ if n.startswith("PALAVER_") or n in SECRET_ENV]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:SECRETsecretSECRET")
    monkeypatch.setenv(
        "PALAVER_TELEGRAM__BASE_URL", "api.telegram.org/bot123456:SECRETsecretSECRET"
    )
    config = write(tmp_path, "")
    for command in (["stats"], ["jobs", "list"], ["check-config"]):
        assert main(["--config", str(config), *command]) == 2
        err = capsys.readouterr().err
        assert err.startswith("palaver: invalid configuration: telegram.base_url = "), err
        assert "SECRETsecretSECRET" not in err
        assert len(err.splitlines()) == 1


def test_help_names_the_operator_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """`run.py --help` is where a user looks first: every operator command is named
    there, and each one named answers its own --help."""
    from run import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    listed = out.split("operator commands")[1].splitlines()[1:]
    commands = [line.split("  ")[1].strip() for line in listed if line.strip()]
    assert commands == [
        "sessions list",
        "sessions show",
        "sessions export",
        "sessions import",
        "sessions delete",
        "stats",
        "jobs list",
        "jobs run",
    ]
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command.split(), "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: palaver {command}")
