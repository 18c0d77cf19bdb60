import numpy as np
import pytest

from tinyseq.plot import braille_panel, projection, simplex_picture


def test_braille_panel_puts_dots_where_points_are():
    # a point at the top-left corner and one at the bottom-right corner
    rows = braille_panel(np.array([[0.0, 1.0], [1.0, 0.0]]), (0, 1, 0, 1), width=4, height=2)
    assert len(rows) == 2 and all(len(r) == 4 for r in rows)
    assert rows[0][0] == chr(0x2800 + 0x01)      # dot (col 0, row 0) of the top-left cell
    assert rows[1][3] == chr(0x2800 + 0x80)      # dot (col 1, row 3) of the bottom-right cell
    assert rows[0][1:] == "   " and rows[1][:3] == "   "


def test_ternary_corners_and_pca_consistency():
    proj, how = projection(np.eye(3))
    np.testing.assert_allclose(proj(np.eye(3)), [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    rng = np.random.default_rng(0)
    Y = rng.dirichlet(np.ones(5), size=50)
    proj, how = projection(Y)
    assert "principal" in how
    np.testing.assert_allclose(proj(Y).mean(axis=0), 0, atol=1e-12)


def test_picture_has_two_panels_of_equal_height():
    Y = np.random.default_rng(1).dirichlet(np.ones(3), size=200)
    pic = simplex_picture(Y, Y)
    lines = pic.splitlines()
    assert "true beliefs" in lines[0] and "probed" in lines[0]
    body = lines[1:14]                        # the default height, 13 rows; the caption below may wrap
    assert len(body) == 13 and lines[14].startswith("(")
    # identical beliefs -> identical panels
    assert all(l[:34] == l[37:71] for l in body)


def test_png_written_when_matplotlib_present(tmp_path):
    pytest.importorskip("matplotlib")
    from tinyseq.plot import simplex_png
    Y = np.random.default_rng(1).dirichlet(np.ones(3), size=100)
    out = tmp_path / "s.png"
    simplex_png(str(out), Y, Y)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
