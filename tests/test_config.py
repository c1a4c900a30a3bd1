from __future__ import annotations

from pathlib import Path

import pytest

from kvmigrate.adapters.connections import connect_pg, is_pooled_url
from kvmigrate.model.config import build_config
from kvmigrate.model.masking import mask_text, mask_url


def test_pg_url_falls_back_through_vercel_variables_in_order() -> None:
    env = {"POSTGRES_URL": "postgresql://p@h/pooled", "DATABASE_URL_UNPOOLED": "postgresql://p@h/direct"}
    assert build_config(env=env).pg_url == "postgresql://p@h/direct"
    assert build_config(env={"POSTGRES_URL": "postgresql://p@h/x"}).pg_url == "postgresql://p@h/x"
    assert build_config(pg_url="postgresql://cli@h/x", env=env).pg_url == "postgresql://cli@h/x"


def test_kv_url_prefers_kvmigrate_variable_then_vercel_kv_url() -> None:
    assert build_config(env={"KV_URL": "rediss://a@b:1"}).kv_url == "rediss://a@b:1"
    env = {"KV_URL": "rediss://a@b:1", "KVMIGRATE_KV_URL": "redis://c:2"}
    assert build_config(env=env).kv_url == "redis://c:2"


def test_config_repr_masks_passwords_and_tokens() -> None:
    config = build_config(
        kv_url="rediss://default:tok3nSECRET@eu1-x.upstash.io:6379",
        pg_url="postgresql://neondb_owner:npg_PASSWORD1@ep-x-pooler.neon.tech/neondb?sslmode=require",
        env={},
    )
    text = repr(config) + str(config)
    assert "tok3nSECRET" not in text and "npg_PASSWORD1" not in text
    assert "neondb_owner:***@" in text


def test_mask_url_handles_lone_redis_token_and_query_secrets() -> None:
    assert mask_url("redis://onlytoken@host:6379") == "redis://***@host:6379"
    assert "s3cr3t" not in mask_url("postgresql://u@h/db?password=s3cr3t")
    assert mask_text("failed: postgresql://u:pw123@h/db and redis://:tok@h") == (
        "failed: postgresql://u:***@h/db and redis://:***@h"
    )


def test_pooled_endpoints_are_detected() -> None:
    assert is_pooled_url("postgresql://u:p@ep-cool-123-pooler.us-east-2.aws.neon.tech/db")
    assert is_pooled_url("postgresql://u:p@host/db?pgbouncer=true")
    assert not is_pooled_url("postgresql://u:p@ep-cool-123.us-east-2.aws.neon.tech/db")


def test_libpq_options_in_the_url_reach_the_server_with_prisma_parameters_dropped(pg_url: str) -> None:
    joiner = "&" if "?" in pg_url else "?"
    url = (f"{pg_url}{joiner}options=-c%20statement_timeout%3D4321&pgbouncer=false&connection_limit=1"
           "&application_name=a+b%2Bc")
    conn = connect_pg(url, retries=0)
    try:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
    finally:
        conn.close()
    from kvmigrate.adapters.connections import _clean_pg_url

    assert _clean_pg_url(url).endswith("?options=-c%20statement_timeout%3D4321&application_name=a+b%2Bc") or \
        _clean_pg_url(url).endswith("&options=-c%20statement_timeout%3D4321&application_name=a+b%2Bc")


def test_a_bad_setting_exits_2_with_a_clear_error_not_a_traceback() -> None:
    from tests.helpers import cli

    result = cli("--pg-url", "postgresql://u:pw-in-url@127.0.0.1/x", "status",
                 env={"KVMIGRATE_DAILY_QUOTA": "lots"})
    assert result.exit_code == 2, result.output
    assert "error: bad setting: daily_quota" in result.output and "'lots'" in result.output
    assert "Traceback" not in result.output and "pw-in-url" not in result.output


def test_a_malformed_kv_url_exits_2_naming_it_masked() -> None:
    from tests.helpers import cli

    for url in ("redis://:tok3nSECRET@host:notaport/0", "http://:tok3nSECRET@host:6379",
                "redis://default:tok3n/SECRET@host:6379"):  # a '/' in the password reads as a port
        result = cli("--kv-url", url, "inventory")
        assert result.exit_code == 2, result.output
        assert "error: bad KV URL" in result.output or "error: the KV URL is an HTTP REST endpoint" in result.output
        assert "tok3n" not in result.output and "SECRET" not in result.output


def test_a_pooled_url_turns_prepared_statements_off_and_says_so_in_the_json_warnings(pg_url: str) -> None:
    from tests.helpers import cli_json

    pooled = f"{pg_url}{'&' if '?' in pg_url else '?'}pgbouncer=true"
    conn = connect_pg(pooled, retries=0)
    try:
        assert conn.prepare_threshold is None
    finally:
        conn.close()
    cli_json("--pg-url", pg_url, "setup")
    env = cli_json("status", "--json", "--pg-url", pooled)
    assert any("pooled (PgBouncer transaction-mode) endpoint" in w and "DATABASE_URL_UNPOOLED" in w
               for w in env["warnings"]), env["warnings"]


def test_retries_are_reported_in_the_json_warnings_with_the_url_masked() -> None:
    from tests.helpers import cli_json

    dead = "redis://:tok3nSECRET@127.0.0.1:1/0"
    env = cli_json("--kv-url", dead, "inventory", env={"KVMIGRATE_CONNECT_RETRIES": "1"}, expect=3)
    assert [w for w in env["warnings"] if "attempt 1 failed" in w and "redis://:***@127.0.0.1:1/0" in w], env
    assert "tok3nSECRET" not in str(env)


def test_redis_url_is_read_after_kv_url() -> None:
    assert build_config(env={"REDIS_URL": "rediss://default:t@h:6379"}).kv_url == "rediss://default:t@h:6379"
    env = {"REDIS_URL": "rediss://default:t@h:6379", "KV_URL": "rediss://default:k@h:6379"}
    assert build_config(env=env).kv_url == "rediss://default:k@h:6379"


def test_only_rest_api_variables_set_says_which_tcp_url_to_use_instead() -> None:
    from tests.helpers import cli

    for url_var in ("KV_REST_API_URL", "UPSTASH_REDIS_REST_URL"):
        token_var = url_var.replace("_URL", "_TOKEN")
        result = cli("inventory", env={url_var: "https://eu1-x.upstash.io", token_var: "AXrestTOKEN-77"})
        assert result.exit_code == 2, result.output
        assert f"only {url_var}/{token_var} are set" in result.output and "KV_URL or REDIS_URL" in result.output
        assert "vercel env pull" in result.output and "Upstash" in result.output
        assert "AXrestTOKEN" not in result.output


def test_dotenv_files_in_the_working_directory_are_read_and_the_environment_wins(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import cli

    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://u@127.0.0.1:1/from_dotenv\nKV_URL=redis://h:1/0\n")
    (tmp_path / ".env.local").write_text(f'DATABASE_URL="{pg_url}"\n')  # what `vercel env pull` writes
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "KV_URL"):
        monkeypatch.delenv(name, raising=False)
    config = build_config()
    assert (config.pg_url, config.kv_url) == (pg_url, "redis://h:1/0")  # .env.local over .env
    monkeypatch.setenv("KV_URL", "redis://from-env:2/0")
    assert build_config().kv_url == "redis://from-env:2/0"  # the environment over both files
    monkeypatch.delenv("KV_URL")
    result = cli("setup", env={"DATABASE_URL": ""})  # the CLI reads them too
    assert result.exit_code == 0, result.output
