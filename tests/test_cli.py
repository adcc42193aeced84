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


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["vae", str(d / "missing.csv")], "no such file"),
        (lambda d: ["vae", str(d)], "not a file"),
        (lambda d: ["vae", "-m", "0", "--max-iter", "1"], "n_components"),
        (lambda d: ["vae", str(d / "one.npy")], "2-D table"),
        (lambda d: ["vae", str(d / "bad.csv")], "cannot read"),
        (lambda d: ["ivae", "--n-segments", "0"], "n_segments"),
        (lambda d: ["vae", "-o", str(d / "nodir" / "z.csv")], "not a directory"),
        (lambda d: ["vae", "-o", str(d / "z.txt")], ".csv or .npy"),
        (lambda d: ["vae", "--plot", str(d / "x.xyz")], "figure format"),
        (lambda d: ["vae", "--solver", "em"], "option of mle"),
        (lambda d: ["ivae", str(d / "x.csv")], "auxiliary variable"),
        (lambda d: ["ivae", str(d / "x.csv"), "--aux-column", "9"], "out of range"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(
    tmp_path, capsys, make_args, message
):
    np.save(tmp_path / "one.npy", np.arange(5.0))
    (tmp_path / "bad.csv").write_text("1,2\n3,x,4\n")
    np.savetxt(tmp_path / "x.csv", np.zeros((20, 3)), delimiter=",")
    code, out, err = run_cli(make_args(tmp_path), capsys)
    assert code == 2
    assert err.startswith("nlica: error:") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert "fitting" not in out  # path and parameter errors come before the fit


def test_a_diverging_fit_exits_1_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "z.csv"
    args = [
        "vae",
        "--learning-rate-init",
        "1e6",
        "--max-iter",
        "3",
        "-q",
        "-o",
        str(out),
    ]
    code, _, err = run_cli([*args, "--n-samples", "300"], capsys)
    # Diverged or non-finite, depending on how fast the optimizer blows up.
    assert code == 1 and not out.exists()
    assert "diverged" in err or "became nan" in err


def test_nothing_is_written_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["vae", "--max-iter", "1", "--n-samples", "100"], capsys)
    assert code == 0 and "score" in out
    assert list(tmp_path.iterdir()) == []


def test_interrupt_exits_130_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import sklearn_nlica._cli as cli

    def interrupted(model, X, aux):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", interrupted)
    out = tmp_path / "z.csv"
    code, _, err = run_cli(["vae", "-o", str(out), "--n-samples", "100"], capsys)
    assert code == 130 and "interrupted" in err and not out.exists()


def test_help_shows_the_defaults_and_training_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--tol", "--n-iter-no-change", "--solver", "--verbose"):
        assert option in text
    assert "epochs (default: 200)" in text and "(default: 2000)" in text


def test_plot_shows_every_latent_against_the_sources(tmp_path, capsys):
    from PIL import Image

    fig = tmp_path / "z.png"
    args = ["ivae", "-m", "3", "--max-iter", "1", "--n-samples", "400", "-q"]
    code, _, _ = run_cli([*args, "--n-features", "3", "--plot", str(fig)], capsys)
    assert code == 0
    width, height = Image.open(fig).size
    assert width > 2.5 * height  # three panels side by side


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_nlica", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "nlica" in result.stdout and "vae" in result.stdout
