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


def _analysis(name, chi2=None, vr=0.05, hst=None, corr=None):
    from types import SimpleNamespace

    result = None if chi2 is None else SimpleNamespace(chi2=chi2, variance_ratio_aperture=vr)
    agreement = None if corr is None else SimpleNamespace(correlation=corr)
    return SimpleNamespace(name=name, z=0.21677, i_mag=19.0, m=63.1, upsampling_factor=1.01, result=result,
                           hst=hst, agreement=agreement, wall_time_s=3.25)


def test_targets_table_rows_and_file(tmp_path):
    ok = _analysis("test_1", chi2=[1.234, 2.0, 123456.0], hst=[[1.0]], corr=0.8761)
    diverged = _analysis("t2", hst=[[1.0]])
    rows = manuscript.write_targets_table("t", [ok, diverged], "caption", "tab:t", missing=["a_b"],
                                          directory=tmp_path)
    assert rows[0] == ["test\\_1", "0.2168", "19.00", "63.1", "1.01", "1.23", "2.00", "1.23e+05", "0.050",
                       "0.876", "3.2", ""]  # no residual report: empty last column
    assert rows[1][5:10] == ["diverged"] * 5  # no posterior: chi2, variance ratio and HST columns
    tex = (tmp_path / "t.tex").read_text()
    assert r"\label{tab:t}" in tex and r"Absent, not run: a\_b." in tex
    assert tex.count("&") == (len(manuscript.TARGETS_TABLE_HEADER) - 1) * 3  # header + two rows
    manuscript.write_targets_table("empty", [], "caption", "tab:e", directory=tmp_path)
    assert "no target present" in (tmp_path / "empty.tex").read_text()
