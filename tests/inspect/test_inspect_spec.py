"""The layer-spec text form: the classic numbers, costs without weight sharing, and the grammar."""

from __future__ import annotations

import pytest
import sympy

from cnnlab._util import CnnlabError
from cnnlab.inspect import analyse_spec, build_spec_model, inspect, looks_like_spec, parse_spec


def test_two_3x3_convolutions_have_the_textbook_parameters_and_fields():
    result = analyse_spec("conv3x3-16, conv3x3-32", "3xNxN")
    # 16 * (3*3*3 + 1) and 32 * (3*3*16 + 1)
    assert [row.params for row in result.rows] == [448, 4640]
    assert result.total_params == 5088
    assert [row.receptive_field for row in result.rows] == [(3, 3), (5, 5)]
    assert [row.jump for row in result.rows] == [(1, 1), (1, 1)]


def test_symbolic_sizes_give_formulas_for_the_cost_without_sharing():
    result = analyse_spec("conv3x3-16, conv3x3-32", "3xNxN")
    n = sympy.Symbol("N", integer=True, positive=True)
    first = result.rows[0]
    assert first.output_shape == (16, n - 2, n - 2)
    # Locally connected: one 448-parameter kernel per output position.
    assert sympy.expand(first.locally_connected_params - 448 * (n - 2) ** 2) == 0
    # Fully connected: every one of 16(N-2)^2 outputs sees all 3N^2 inputs plus a bias.
    assert sympy.expand(first.fully_connected_params - (3 * n**2 + 1) * 16 * (n - 2) ** 2) == 0
    assert result.evaluate(result.total_locally_connected, N=32) == 30 * 30 * 448 + 28 * 28 * 4640


def test_given_sizes_give_numbers_and_the_saving_as_a_ratio():
    result = analyse_spec("conv3x3-16, conv3x3-32", "3x32x32")
    assert result.total_locally_connected == 403_200 + 3_637_760
    assert result.total_fully_connected == 3073 * 16 * 30 * 30 + (16 * 30 * 30 + 1) * 32 * 28 * 28
    assert result.total_macs == 16 * 30 * 30 * 27 + 32 * 28 * 28 * 144
    saving = result.saving()
    assert saving["locally_connected"] == pytest.approx(4_040_960 / 5088)
    assert saving["fully_connected"] > 70_000


def test_strided_layers_name_their_output_sizes():
    result = analyse_spec("conv3x3-16/s2p1, maxpool2, fc-10", "3xNxN")
    assert result.definitions[0].startswith("N1 = floor(")
    assert str(result.rows[1].output_shape[1]) == "N2"
    assert result.evaluate(result.rows[2].params, N=32) == (16 * 8 * 8 + 1) * 10


SPECS = [
    ("conv3x3-16, conv3x3-32", "3x32x32"),
    ("conv5-6, relu, maxpool2, conv5-16, relu, maxpool2, fc-120, relu, fc-84, fc-10", "3x32x32"),
    ("conv3x3-32/s2p1, bn, relu, dwconv3/p1, conv1-64, gap, fc-10", "3x40x40"),
    ("conv7-64/s2/p3, maxpool3/s2p1, conv3-64/p1, conv3-64/p1", "3x64x64"),
    ("conv3-8/d2, avgpool3/s2p1, conv3-8/g2p1, tconv2-4/s2", "2x30x30"),
    ("conv3x5-4/p1, maxpool2x3, flatten, bn, fc-3", "1x24x30"),
    ("conv5-4/s2, maxpool2, conv3-6", "1x100"),
]


@pytest.mark.parametrize("spec, shape", SPECS, ids=[s for s, _ in SPECS])
def test_spec_arithmetic_agrees_with_inspecting_the_built_network(spec, shape):
    """The textbook recurrence and the graph analysis are written independently."""
    analytic = analyse_spec(spec, shape)
    model = build_spec_model(spec, shape)
    measured = inspect(model, shape)

    assert analytic.total_params == measured.total_params
    assert analytic.total_macs == measured.total_macs
    assert tuple(analytic.rows[-1].output_shape) == measured.output_shape
    module_rows = [r for r in measured.rows if r.type != "Flatten"]
    spec_rows = [r for r in analytic.rows if r.type != "flatten"]
    assert len(module_rows) == len(spec_rows)
    for spec_row, row in zip(spec_rows, module_rows):
        assert spec_row.params == row.params, spec_row.text
        assert spec_row.receptive_field == row.receptive_field, spec_row.text
        if spec_row.jump is not None:
            assert spec_row.jump == row.jump, spec_row.text


def test_lenet_from_the_spec_has_lenets_parameter_count():
    spec = "conv5-6, relu, maxpool2, conv5-16, relu, maxpool2, fc-120, relu, fc-84, fc-10"
    assert analyse_spec(spec, "3x32x32").total_params == 62_006


BAD_SPECS = [
    ("conv3x3", "output channels"),
    ("conv3x3-16/q2", "option 'q'"),
    ("maxpool2-4", "takes no channel count"),
    ("conv3x3-16,, relu", "empty item"),
    ("banana", "not a layer"),
    ("fc", "not a layer"),
    ("maxpool4/p3", "at most half"),
    ("conv3x3-16/s0", "at least 1"),
]


@pytest.mark.parametrize("spec, message", BAD_SPECS)
def test_bad_specs_name_the_item_and_show_the_grammar(spec, message):
    with pytest.raises(CnnlabError) as error:
        analyse_spec(spec, "3x32x32")
    assert message in str(error.value)
    assert "Grammar:" in str(error.value) or "empty item" in str(error.value)
    assert not looks_like_spec(spec)


def test_spec_shape_errors_name_the_layer():
    with pytest.raises(CnnlabError, match="item 3 'conv5-8' leaves no output positions"):
        analyse_spec("conv5-8, maxpool2, conv5-8", "3x12x12")
    with pytest.raises(CnnlabError, match="3 kernel sizes for an input with 2"):
        analyse_spec("conv3x3x3-4", "3x8x8")
    with pytest.raises(CnnlabError, match="groups=3 must divide"):
        analyse_spec("conv3-4/g3", "3x8x8")
    with pytest.raises(CnnlabError, match="neither a size nor a name"):
        analyse_spec("conv3-4", "3x8x?")


def test_model_names_are_not_mistaken_for_specs():
    assert looks_like_spec("conv3x3-16") and looks_like_spec("relu, fc-10")
    assert not looks_like_spec("resnet18") and not looks_like_spec("lenet5")
    assert parse_spec("Conv3X3-16 / s2")[0].stride == (2, 2)
