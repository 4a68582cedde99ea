"""Configuration in one place: only flujo_dagster/config.py reads the environment or pyproject.toml; its accessors
read when called, let arguments win, and name the variable and the bad value in their errors."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest

from flujo_dagster import ApprovalSettings, ConfigurationError, Price
from flujo_dagster import config as cfg
from flujo_dagster.adapter.control.graphql import Webserver
from flujo_dagster.config import (
    APPROVALS_INTERVAL_ENV,
    DAGSTER_HOME_ENV,
    DECISION_SECRET_ENV,
    WEBSERVER_URL_ENV,
)

PACKAGE = Path(__file__).resolve().parent.parent / "flujo_dagster"
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
TOML_MODULES = {"tomllib", "tomli", "toml", "tomlkit"}


def _reads(path: Path) -> list[str]:
    """Where `path` reads the environment or parses TOML: `os.environ`, `os.getenv(...)`, `from os import environ`,
    `import tomllib` and the like (found in the syntax tree, so docstrings that mention them do not count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in ENV_NAMES:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", *TOML_MODULES}:
            names = {a.name for a in node.names}
            if node.module in TOML_MODULES or names & ENV_NAMES:
                found.append(f"{path.name}:{node.lineno} from {node.module} import {sorted(names)}")
        elif isinstance(node, ast.Import) and {a.name for a in node.names} & TOML_MODULES:
            found.append(f"{path.name}:{node.lineno} import {[a.name for a in node.names]}")
    return found


def test_only_the_config_module_reads_the_environment_or_toml() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the whole package was scanned
    offenders = {
        str(p.relative_to(PACKAGE)): _reads(p) for p in modules if p.name != "config.py" or p.parent != PACKAGE
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    own = _reads(PACKAGE / "config.py")  # the scanner does see a read where there is one
    assert any(".environ" in r for r in own) and any("tomllib" in r for r in own)


def test_the_decision_secret_is_read_when_asked_under_the_name_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DECISION_SECRET_ENV, raising=False)
    assert DECISION_SECRET_ENV == "FLUJO_DAGSTER_DECISION_SECRET"
    assert cfg.decision_secret() is None
    monkeypatch.setenv(DECISION_SECRET_ENV, "")
    assert cfg.decision_secret() is None  # empty counts as unset
    monkeypatch.setenv(DECISION_SECRET_ENV, "s3cret")
    assert cfg.decision_secret() == "s3cret"
    assert ApprovalSettings().secret() == "s3cret"
    monkeypatch.setenv("TEAM_SECRET", "other")
    assert ApprovalSettings(secret_env="TEAM_SECRET").secret() == "other"
    assert ApprovalSettings(secret_env="UNSET_FLUJO_TEST_SECRET").secret() is None


def test_the_webserver_url_comes_from_the_argument_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WEBSERVER_URL_ENV, raising=False)
    assert cfg.webserver_url() == "http://127.0.0.1:3000"
    monkeypatch.setenv(WEBSERVER_URL_ENV, "https://dagster.example:8443/")
    assert cfg.webserver_url() == "https://dagster.example:8443"
    assert cfg.webserver_url("http://dagster:80") == "http://dagster:80"
    monkeypatch.setenv(WEBSERVER_URL_ENV, "dagster:3000")
    with pytest.raises(ConfigurationError, match=f"^{WEBSERVER_URL_ENV}='dagster:3000' is not an http"):
        cfg.webserver_url()
    with pytest.raises(ConfigurationError, match="^webserver_url='ftp://x' is not an http"):
        cfg.webserver_url("ftp://x")


def test_the_approvals_interval_is_a_timedelta_of_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APPROVALS_INTERVAL_ENV, raising=False)
    assert cfg.approvals_interval() == timedelta(seconds=30)
    monkeypatch.setenv(APPROVALS_INTERVAL_ENV, "7")
    assert cfg.approvals_interval() == timedelta(seconds=7)
    assert cfg.approvals_interval(timedelta(minutes=2)) == timedelta(minutes=2)  # the argument wins
    for raw, problem in [("7.5", "is not a whole number of seconds"), ("-3", "must be a whole number of seconds")]:
        monkeypatch.setenv(APPROVALS_INTERVAL_ENV, raw)
        with pytest.raises(ConfigurationError, match=f"^{APPROVALS_INTERVAL_ENV}='{raw}' {problem}"):
            cfg.approvals_interval()
    with pytest.raises(ConfigurationError, match="whole number of seconds, at least 1"):
        cfg.approvals_interval(timedelta(milliseconds=1500))
    with pytest.raises(
        ConfigurationError, match=r"approvals_interval must be a datetime.timedelta, got 30: write e\.g\."
    ):
        cfg.approvals_interval(30)  # type: ignore[arg-type]


def test_dagster_home_is_read_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DAGSTER_HOME_ENV, raising=False)
    assert cfg.dagster_home() is None
    monkeypatch.setenv(DAGSTER_HOME_ENV, str(tmp_path))
    assert cfg.dagster_home() == str(tmp_path)


def test_pyproject_prices_are_read_from_the_nearest_pyproject(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src" / "pkg").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.flujo_dagster.pricing]\n"local:llama" = { input_per_mtok = 0.5, output_per_mtok = 1 }\n'
    )
    found = cfg.find_pyproject(project / "src" / "pkg")
    assert found == project / "pyproject.toml"
    assert cfg.pyproject_prices(found) == {"local:llama": Price(input_per_mtok=0.5, output_per_mtok=1)}  # type: ignore[arg-type]
    assert cfg.pyproject_prices(None) == {}
    (project / "pyproject.toml").write_text("[tool.flujo_dagster]\npricing = 3\n")
    with pytest.raises(ConfigurationError, match=r"\[tool\.flujo_dagster\.pricing\] must be a table of models"):
        cfg.pyproject_prices(found)
    (project / "pyproject.toml").write_text("[tool.flujo_dagster.pricing\n")
    with pytest.raises(ConfigurationError, match=r"pyproject\.toml: cannot read \[tool\.flujo_dagster\.pricing\]"):
        cfg.pyproject_prices(found)


def test_the_webserver_headers_and_token_are_read_when_called_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    token, value = "tok-Secret-1", "hdr-Secret-2"
    monkeypatch.delenv(cfg.WEBSERVER_HEADERS_ENV, raising=False)
    monkeypatch.delenv(cfg.WEBSERVER_TOKEN_ENV, raising=False)
    assert cfg.webserver_headers() == {}
    monkeypatch.setenv(cfg.WEBSERVER_TOKEN_ENV, token)
    monkeypatch.setenv(cfg.WEBSERVER_HEADERS_ENV, f'{{"X-Proxy-Token": "{value}"}}')
    assert cfg.webserver_headers() == {"X-Proxy-Token": value, "Authorization": f"Bearer {token}"}
    bad = {
        "not json": f"{cfg.WEBSERVER_HEADERS_ENV} is not JSON",
        '["a"]': f"{cfg.WEBSERVER_HEADERS_ENV} must be a JSON object",
        '{"X Bad": "v"}': f"{cfg.WEBSERVER_HEADERS_ENV}: 'X Bad' is not an HTTP header name",
        f'{{"X-Ok": "{value}\\r\\nX-Injected: 1"}}': "the value of header X-Ok must be a non-empty string",
        f'{{"Authorization": "{value}"}}': f"both {cfg.WEBSERVER_TOKEN_ENV} and an Authorization header",
    }
    for raw, message in bad.items():
        monkeypatch.setenv(cfg.WEBSERVER_HEADERS_ENV, raw)
        with pytest.raises(ConfigurationError) as raised:
            cfg.webserver_headers()
        assert message in str(raised.value) and value not in str(raised.value) and token not in str(raised.value)
    monkeypatch.delenv(cfg.WEBSERVER_HEADERS_ENV)
    monkeypatch.setenv(cfg.WEBSERVER_TOKEN_ENV, f"{token} x")
    with pytest.raises(ConfigurationError, match="must be visible ASCII without spaces") as raised:
        cfg.webserver_headers()
    assert token not in str(raised.value)


def test_credentials_in_the_webserver_url_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cfg.shown_url("https://ana:pa%40ss@dagster.example:8443/x") == "https://***@dagster.example:8443/x"
    assert cfg.shown_url("http://127.0.0.1:3000") == "http://127.0.0.1:3000"
    monkeypatch.setenv(WEBSERVER_URL_ENV, "ftp://ana:s3cret@host")
    with pytest.raises(ConfigurationError) as raised:
        cfg.webserver_url()
    assert str(raised.value) == f"{WEBSERVER_URL_ENV}='ftp://***@host' is not an http(s) URL of the Dagster webserver"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@ss@127.0.0.1:1/", "http://***@127.0.0.1:1/"),  # an unencoded `@` in the password
        ("http://127.0.0.1:1/graphql?token=S3CRETQ", "http://127.0.0.1:1/graphql?***"),  # a token in the query
        ("http://127.0.0.1:1/#S3CRETQ", "http://127.0.0.1:1/?***"),
    ],
)
def test_a_password_with_an_at_sign_or_a_token_in_the_query_is_never_shown(url: str, shown: str) -> None:
    assert cfg.shown_url(url) == shown
    server = Webserver(url)
    redacted = server.redact(f"cannot reach {url}: refused")
    assert "S3CRETQ" not in redacted and "p@ss" not in redacted and "ss@" not in redacted, redacted
