"""Property-based checks: the config loader and the CLI fail only with clear errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab._util import CnnlabError
from cnnlab.cli.main import build_parser, main
from cnnlab.train import TrainConfig

values = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True),
                   st.text(max_size=8))
keys = st.sampled_from(["epochs", "batch_size", "optimizer", "lr", "schedule",
                        "label_smoothing", "clip_norm", "weight_decay", "warmup_epochs",
                        "early_stopping_patience", "no_such_option"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=4))
def test_config_loader_accepts_or_names_the_bad_option(options):
    try:
        config = TrainConfig.from_dict(options)
    except CnnlabError as error:
        text = str(error)
        assert any(key.replace("_", "-") in text or key in text for key in options) or \
            "unknown" in text
        return
    assert config.epochs >= 1 and config.lr > 0


numbers = st.one_of(st.integers(-100, 100).map(str), st.floats(allow_nan=True).map(str),
                    st.sampled_from(["inf", "-inf", "nan", "1e400", "0", "0.0"]),
                    st.text(alphabet="abc-0.e", max_size=6))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["--epochs", "--batch-size", "--lr", "--limit", "--clip-norm",
                        "--nproc", "--validation", "--resize"]), numbers)
def test_numeric_cli_options_parse_or_exit_with_usage_error(option, value):
    parser = build_parser()
    try:
        args = parser.parse_args(["train", option, value])
    except SystemExit as stop:
        assert stop.code == 2
        return
    except ValueError:
        pytest.fail(f"{option} {value!r} raised a raw ValueError")
    attribute = option.lstrip("-").replace("-", "_")
    parsed = getattr(args, attribute)
    if option in ("--epochs", "--batch-size", "--limit", "--nproc", "--resize"):
        assert parsed >= 1
    elif option in ("--lr", "--clip-norm", "--validation"):
        assert parsed > 0


def test_validation_option_rejects_words_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--validation", "lots"])
    assert stop.value.code == 2
    assert "--validation" in capsys.readouterr().err
