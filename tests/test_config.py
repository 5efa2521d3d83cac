"""Settings: precedence, parsing from strings, and errors that name the fix."""

from __future__ import annotations

import logging

import pytest

from tinybird_export import TinybirdConfig, TinybirdHandler


class TestResolution:
    def test_argument_beats_env_beats_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An explicit argument wins over TINYBIRD_*, which wins over the default."""
        monkeypatch.setenv("TINYBIRD_FLUSH_INTERVAL", "2.5")
        monkeypatch.setenv("TINYBIRD_DATASOURCE", "from_env")
        assert TinybirdConfig.resolve().flush_interval == 2.5
        assert TinybirdConfig.resolve({"flush_interval": 0.5}).flush_interval == 0.5
        assert TinybirdConfig.resolve().datasource == "from_env"
        assert TinybirdConfig.resolve({"datasource": "arg"}).datasource == "arg"
        assert TinybirdConfig.resolve().batch_max_rows == 10_000

    def test_strings_from_dictconfig_are_parsed(self) -> None:
        """Numbers and booleans arrive as strings from fileConfig and env vars."""
        config = TinybirdConfig.resolve(
            {
                "datasource": "x",
                "wait": "true",
                "flush_interval": "0.2",
                "batch_max_rows": "50",
                "compression": "NONE",
                "fields": "environment=prod, release=1.2",
            }
        )
        assert config.wait is True
        assert config.flush_interval == 0.2
        assert config.batch_max_rows == 50
        assert config.compression == "none"
        assert config.fields == {"environment": "prod", "release": "1.2"}

    def test_service_from_otel_service_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """service defaults to OTEL_SERVICE_NAME."""
        monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
        assert TinybirdConfig.resolve({"datasource": "x"}).service == "checkout"


class TestErrors:
    @pytest.mark.parametrize(
        ("settings", "names"),
        [
            ({}, ("'datasource'", "TINYBIRD_DATASOURCE")),
            ({"datasource": "bad-name"}, ("'datasource'", "letters")),
            ({"datasource": "x", "host": "api.tinybird.co"}, ("'host'", "TINYBIRD_HOST")),
            ({"datasource": "x", "host": "ftp://x"}, ("'host'", "TINYBIRD_HOST")),
            ({"datasource": "x", "host": "https://h:99999"}, ("'host'", "port")),
            ({"datasource": "x", "host": "https://h/?token=abc"}, ("'host'", "token")),
            (
                {"datasource": "x", "flush_interval": "soon"},
                ("'flush_interval'", "TINYBIRD_FLUSH_INTERVAL"),
            ),
            ({"datasource": "x", "flush_interval": "-1"}, ("'flush_interval'", "at least")),
            ({"datasource": "x", "wait": "maybe"}, ("'wait'", "TINYBIRD_WAIT", "true or false")),
            ({"datasource": "x", "compression": "zip"}, ("'compression'", "gzip")),
            ({"datasource": "x", "batch_max_bytes": 200_000_000}, ("'batch_max_bytes'", "100 MB")),
            (
                {"datasource": "x", "before_send": "no.such:thing"},
                ("'before_send'", "TINYBIRD_BEFORE_SEND"),
            ),
            ({"datasource": "x", "fields": "novalue"}, ("'fields'", "key=value")),
        ],
    )
    def test_invalid_values_raise_naming_setting_and_env(
        self, settings: dict[str, object], names: tuple[str, ...]
    ) -> None:
        """A bad config raises at construction, naming the setting, its env var and the fix."""
        with pytest.raises(ValueError) as error:
            TinybirdHandler(**settings)  # type: ignore[arg-type]
        for name in names:
            assert name in str(error.value)

    def test_env_value_errors_name_the_env_var(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad value from the environment names its environment variable."""
        monkeypatch.setenv("TINYBIRD_QUEUE_MAX_BYTES", "lots")
        with pytest.raises(ValueError, match="TINYBIRD_QUEUE_MAX_BYTES"):
            TinybirdHandler(datasource="x")

    def test_unknown_setting_is_a_type_error(self) -> None:
        """An unknown setting is a TypeError that suggests the nearest name."""
        with pytest.raises(TypeError, match="flush_intervall.*did you mean 'flush_interval'"):
            TinybirdHandler(datasource="x", flush_intervall=1)  # type: ignore[call-arg]

    def test_plain_http_to_remote_host_is_refused(self) -> None:
        """The token would cross the network in clear text."""
        with pytest.raises(ValueError, match="TINYBIRD_ALLOW_HTTP"):
            TinybirdHandler(datasource="x", host="http://tinybird.internal", token="t")
        TinybirdHandler(
            datasource="x", host="http://tinybird.internal", token="t", allow_http=True
        ).close()
        TinybirdHandler(datasource="x", host="http://localhost:7181", token="t").close()

    def test_static_field_named_like_builtin_is_refused(self) -> None:
        """A static field may not reuse a built-in field's name."""
        with pytest.raises(ValueError, match="'fields'.*level"):
            TinybirdHandler(datasource="x", token="t", fields={"level": "x"})


class TestDisabled:
    def test_missing_token_disables_and_says_so_once(
        self, capsys: pytest.CaptureFixture[str], logger: logging.Logger
    ) -> None:
        """manage.py migrate in CI has no token: start-up must not break."""
        from tinybird_export import _diagnostics

        _diagnostics._said.discard("no-token")
        handlers = [TinybirdHandler(datasource="x"), TinybirdHandler(datasource="y")]
        logger.addHandler(handlers[0])
        logger.info("not sent")
        err = capsys.readouterr().err
        assert err.count("TINYBIRD_TOKEN is not set") == 1
        assert "`tinybird-export local`" in err  # the way to try it without an account
        assert handlers[0].stats().dropped_by_reason == {"disabled": 1}
        assert handlers[0].flush() is True
        for handler in handlers:
            handler.close()

    def test_enabled_false_is_quiet(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """TINYBIRD_ENABLED=false disables the handler without a word."""
        from tinybird_export import _diagnostics

        _diagnostics._said.discard("no-token")
        monkeypatch.setenv("TINYBIRD_ENABLED", "false")
        handler = TinybirdHandler(datasource="x", token="t")
        assert capsys.readouterr().err == ""
        handler.close()
