"""The nlica command on built-in data and on files."""

import subprocess
import sys

import numpy as np
import pytest

from sklearn_nlica._cli import load_data, main


def test_builtin_data_writes_latents_and_figure(tmp_path, capsys):
    out, fig = tmp_path / "z.csv", tmp_path / "z.png"
    assert (
        main(
            [
                "vae",
                "--max-iter",
                "3",
                "--n-samples",
                "300",
                "-q",
                "--output",
                str(out),
                "--plot",
                str(fig),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for line in ("score", "log-likelihood", "reconstruction", "source recovery"):
        assert line in printed
    Z = np.loadtxt(out, delimiter=",", skiprows=1)
    assert Z.shape == (300, 2) and np.isfinite(Z).all()
    assert fig.stat().st_size > 1000


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".txt"])
def test_file_input(tmp_path, suffix):
    X = np.random.RandomState(0).randn(120, 4)
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, X)
    elif suffix == ".csv":
        np.savetxt(path, X, delimiter=",", header="a,b,c,d", comments="")
    else:
        np.savetxt(path, X)
    np.testing.assert_allclose(load_data(path), X)
    out = tmp_path / "z.npy"
    assert (
        main(
            [
                "vae",
                str(path),
                "-m",
                "1",
                "--max-iter",
                "2",
                "-q",
                "--hidden-layer-sizes",
                "8",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert np.load(out).shape == (120, 1)


def test_errors_are_reported_not_raised(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        main(["vae", str(tmp_path / "missing.csv")])
    with pytest.raises(SystemExit, match="n_components"):
        main(
            [
                "vae",
                "-m",
                "0",
                "--max-iter",
                "1",
                "-q",
                "--output",
                str(tmp_path / "z.csv"),
            ]
        )


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_nlica", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "nlica" in result.stdout and "vae" in result.stdout
