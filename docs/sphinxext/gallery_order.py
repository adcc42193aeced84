"""The order of the examples in the gallery (sphinx-gallery sort key).

A module rather than a function in conf.py so that Sphinx can pickle the
configuration (it names the key by its import path).
"""

ORDER = [
    "plot_vae_quickstart.py",
    "plot_data.py",
    "plot_mle_vs_vae_reconstruction.py",
    "plot_learning_curves.py",
    "plot_mle_vs_vae.py",
    "plot_sample.py",
    "plot_metric_scaling.py",
    "plot_integrators.py",
    "plot_ivae_identifiability.py",
    "plot_ivae_time.py",
    "plot_choose_n_components.py",
    "plot_scorers.py",
]


class ExampleOrder:
    """Examples listed in ``ORDER`` first, in that order, then the rest by name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        if filename in ORDER:
            return (0, ORDER.index(filename), filename)
        return (1, 0, filename)
