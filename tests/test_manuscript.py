import pytest

from diffdecon import manuscript


def test_variables_file(tmp_path):
    path = manuscript.write_variables("demo", {"FigOneRedshift": 0.8463, "NSamples": 256, "Label": "a_b"},
                                      directory=tmp_path)
    text = path.read_text()
    assert r"\newcommand{\FigOneRedshift}{0.846}" in text
    assert r"\newcommand{\NSamples}{256}" in text
    assert r"\newcommand{\Label}{a\_b}" in text


def test_variable_names_must_be_macro_names(tmp_path):
    with pytest.raises(ValueError, match="macro"):
        manuscript.write_variables("demo", {"fig_1": 1}, directory=tmp_path)


def test_latex_table_shape():
    tex = manuscript.latex_table(["a", "b"], [["x", 1.23456], ["y", 2]], caption="c", label="t")
    assert r"\begin{table}" in tex and r"\label{t}" in tex
    assert "x & 1.235" in tex and "y & 2" in tex
