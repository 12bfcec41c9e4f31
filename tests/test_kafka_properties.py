"""The Kafka client properties file: parsed strictly, never echoing a value, and never shown by a repr."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from allocator.service.backends import LogSettings
from eventlog.kafka import KafkaEventLog
from eventlog.kafka_properties import (
    CONFIG_FILE_ENV,
    KafkaPropertiesError,
    client_config,
    client_properties_from_env,
    load_client_properties,
    redacted,
    write_client_properties,
)
from eventlog.kafka_scram import user_client_properties

SECRET = "s3cr3t-value-that-must-never-show"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.properties"
    path.write_text(text, encoding="utf-8")
    return path


def test_key_value_lines_are_read_and_comments_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "# the admin\n\n! also a comment\nsecurity.protocol=SASL_SSL\n  sasl.mechanism = SCRAM-SHA-512  \n"
        f"sasl.username=admin\nsasl.password={SECRET}\nssl.ca.location=/x/ca.pem\nempty=\nwith.equals=a=b\n",
    )
    assert load_client_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "admin",
        "sasl.password": SECRET,
        "ssl.ca.location": "/x/ca.pem",
        "empty": "",
        "with.equals": "a=b",
    }


@pytest.mark.parametrize(
    "bad_line",
    [SECRET, f"sasl password={SECRET}", f"={SECRET}", f"[section] {SECRET}", f"sasl.password: {SECRET}"],
)
def test_a_line_that_is_not_key_value_names_file_and_line_but_not_its_content(tmp_path: Path, bad_line: str) -> None:
    path = _write(tmp_path, f"security.protocol=SASL_SSL\n\n{bad_line}\n")
    with pytest.raises(KafkaPropertiesError) as caught:
        load_client_properties(path)
    message = str(caught.value)
    assert str(path) in message and "line 3" in message
    assert SECRET not in message and SECRET not in repr(caught.value)


def test_a_key_set_twice_is_an_error_naming_the_key_only(tmp_path: Path) -> None:
    path = _write(tmp_path, f"sasl.password={SECRET}\nsasl.password={SECRET}x\n")
    with pytest.raises(KafkaPropertiesError, match=r"line 2: sasl\.password is set a second time") as caught:
        load_client_properties(path)
    assert SECRET not in str(caught.value)


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KafkaPropertiesError, match="no such Kafka client properties file"):
        load_client_properties(tmp_path / "nope.properties")
    with pytest.raises(KafkaPropertiesError, match="cannot read"):
        load_client_properties(tmp_path)  # a folder
    binary = tmp_path / "binary.properties"
    binary.write_bytes(b"sasl.password=\xff\xfe" + SECRET.encode())
    with pytest.raises(KafkaPropertiesError, match="not UTF-8") as caught:
        load_client_properties(binary)
    assert SECRET not in str(caught.value)


def test_client_config_takes_the_file_of_the_environment_and_the_bootstrap_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "bootstrap.servers=elsewhere:1\nsecurity.protocol=SASL_SSL\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert client_config("127.0.0.1:9092") == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL"}
    # Given properties replace the environment's; an empty mapping means none at all.
    assert client_config("h:1", {}) == {"bootstrap.servers": "h:1"}
    monkeypatch.setenv(CONFIG_FILE_ENV, "")
    assert client_properties_from_env() == {}


def test_written_properties_are_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "user.properties"
    path.write_text("old\n", encoding="utf-8")
    path.chmod(0o644)
    props = {"sasl.username": "agent", "sasl.password": SECRET}
    write_client_properties(path, props)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_client_properties(path) == props
    with pytest.raises(KafkaPropertiesError) as caught:
        write_client_properties(path, {"sasl.password": f"{SECRET}\nssl.ca.location=/evil"})
    assert SECRET not in str(caught.value)


def test_secrets_are_redacted_and_never_in_a_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, f"security.protocol=SASL_SSL\nsasl.username=admin\nsasl.password={SECRET}\n")
    config = client_config("h:1", load_client_properties(path))
    assert redacted(config) == {
        "security.protocol": "SASL_SSL",
        "sasl.username": "admin",
        "sasl.password": "***",
        "bootstrap.servers": "h:1",
    }
    assert redacted({"ssl.key.password": "k", "sasl.jaas.config": "j", "ssl.key.pem": "p"}) == {
        "ssl.key.password": "***",
        "sasl.jaas.config": "***",
        "ssl.key.pem": "***",
    }
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "h:1")
    settings = LogSettings.resolve(None, None)
    assert settings.kafka_config_file == str(path)
    assert SECRET not in repr(settings) and SECRET not in settings.describe()
    assert settings.kafka_client_config()["sasl.password"] == SECRET
    # What a traceback shows of a loaded file, a client config or a user's login: never the secret.
    assert SECRET not in repr(load_client_properties(path)) and "'sasl.password': '***'" in repr(config)
    assert SECRET not in str(config) and SECRET not in repr(user_client_properties({}, "agent", SECRET))
    log = KafkaEventLog("h:1")  # no connection until first use
    try:
        assert SECRET not in repr(log) and SECRET not in str(log)
    finally:
        log.close()


def test_the_cli_reports_a_bad_properties_file_without_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.common import EXIT_USAGE
    from cli.main import main

    path = _write(tmp_path, f"security.protocol=SASL_SSL\n{SECRET}\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert main(["init", "--kafka", "127.0.0.1:1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{path}, line 2" in err and SECRET not in err


def test_a_relative_location_is_the_file_beside_the_properties_file(tmp_path: Path) -> None:
    folder = tmp_path / "kafka-client"
    folder.mkdir()
    path = folder / "admin.properties"
    path.write_text(
        "ssl.ca.location=ca.pem\nssl.keystore.location=sub/ks.p12\nssl.certificate.location=/abs/cert.pem\n"
        "ssl.key.location=probe\nsasl.username=ca.pem\n",
        encoding="utf-8",
    )
    found = load_client_properties(path)
    assert found["ssl.ca.location"] == str(folder.resolve() / "ca.pem")  # wherever the folder was copied to
    assert found["ssl.keystore.location"] == str(folder.resolve() / "sub" / "ks.p12")
    assert found["ssl.certificate.location"] == "/abs/cert.pem" and found["ssl.key.location"] == "probe"
    assert found["sasl.username"] == "ca.pem"  # only *.location keys name files


def test_a_principal_s_properties_keep_the_broker_s_settings_and_none_of_the_admin_s_credentials() -> None:
    from eventlog.kafka_scram import principal_client_properties

    admin = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin",
             "sasl.password": SECRET, "sasl.jaas.config": SECRET, "ssl.ca.location": "/x/ca.pem",
             "ssl.key.location": "/x/admin.key", "ssl.certificate.location": "/x/admin.pem",
             "ssl.endpoint.identification.algorithm": "https"}  # fmt: skip
    user = principal_client_properties(admin, "alloc-main", "pw")
    assert user == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "alloc-main",
                    "sasl.password": "pw", "ssl.ca.location": "/x/ca.pem",
                    "ssl.endpoint.identification.algorithm": "https"}  # fmt: skip
    assert SECRET not in repr(user) and "pw" not in repr(user)
    assert principal_client_properties({"security.protocol": "SSL"}, "u", "p")["security.protocol"] == "SASL_SSL"
    assert principal_client_properties({}, "u", "p")["security.protocol"] == "SASL_PLAINTEXT"
