"""The skorch training driver shared by every estimator.

The estimators' torch modules return a per-sample objective (log-likelihood
or ELBO); :class:`ObjectiveNet` minimises minus its mean with skorch, which
brings the history, the callbacks (progress, early stopping, LR schedules)
and the device handling. skorch's default data path indexes a Dataset row by
row; :class:`TensorBatches` instead slices whole tensors that already live on
the device, which keeps skorch within a few percent of a bare torch loop.
"""

import math

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.utils import TeeGenerator


class TensorData:
    """Named tensors of equal length, all on the training device.

    ``x`` is the observations; ``extras`` (e.g. the iVAE's auxiliary ``u``)
    travel with them and reach the module as keyword arguments.
    """

    def __init__(self, x, **extras):
        self.x = x
        self.extras = extras

    def __len__(self):
        return len(self.x)

    def take(self, index):
        return TensorData(
            self.x[index], **{k: v[index] for k, v in self.extras.items()}
        )

    def as_input(self):
        """What the module's ``forward`` receives: a tensor, or a dict of them."""
        return {"x": self.x, **self.extras} if self.extras else self.x


class TensorBatches:
    """Mini-batches of a :class:`TensorData` as slices of a shuffled index.

    Used as skorch's ``iterator_train``/``iterator_valid``. The permutation
    is drawn with torch's global generator, which the estimators fork and
    seed for the duration of ``fit`` so that ``random_state`` fixes it.
    """

    def __init__(self, dataset, batch_size, shuffle=False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle

    def __len__(self):
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            # Drawn on the CPU so that the same seed gives the same batches on
            # every device.
            order = torch.randperm(n).to(self.dataset.x.device)
            for index in order.split(self.batch_size):
                yield self.dataset.take(index).as_input(), None
        else:
            for start in range(0, n, self.batch_size):
                part = self.dataset.take(slice(start, start + self.batch_size))
                yield part.as_input(), None


class HoldOut:
    """skorch ``train_split``: a validation set drawn once, like MLPRegressor's."""

    def __init__(self, validation_fraction):
        self.validation_fraction = validation_fraction

    def __call__(self, dataset, y=None, **kwargs):
        n = len(dataset)
        n_valid = max(1, round(self.validation_fraction * n))
        if n - n_valid < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves no training "
                f"sample out of {n}; use more samples or early_stopping=False."
            )
        order = torch.randperm(n).to(dataset.x.device)
        return dataset.take(order[n_valid:]), dataset.take(order[:n_valid])


class RaiseOnNonFinite(Callback):
    """Stop the fit at the first NaN or infinite loss with an actionable error."""

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        # skorch has already synchronised on the loss; reading it again is free.
        if loss is not None and not math.isfinite(loss.item()):
            epoch = len(net.history)
            raise FloatingPointError(
                f"The training objective became {loss.item()} in epoch {epoch}. "
                "Lower learning_rate_init, standardise X (e.g. StandardScaler), "
                "fix noise_variance to a larger value, or use float64 input."
            )


class EpochProgressBar(Callback):
    """One tqdm bar over epochs showing the latest training loss."""

    def __init__(self, total, desc=None):
        self.total = total
        self.desc = desc

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        self.bar_ = tqdm(total=self.total, desc=self.desc, unit="epoch", leave=False)

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        postfix = {"loss": f"{row['train_loss']:.4f}"}
        if "valid_loss" in row:
            postfix["valid"] = f"{row['valid_loss']:.4f}"
        self.bar_.set_postfix(postfix, refresh=False)
        self.bar_.update()

    def on_train_end(self, net, **kwargs):
        self.bar_.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("bar_", None)
        return state


class _NoCriterion(torch.nn.Module):
    """skorch wants a criterion; the module's output already is the objective."""

    def forward(self, objective):
        return -objective.mean()


class ObjectiveNet(NeuralNet):
    """A skorch ``NeuralNet`` whose loss is minus the module's mean objective.

    The module's ``forward`` returns one objective value per sample (to be
    maximised). ``alternating`` (a list of parameter-name prefixes, e.g.
    ``["encoder.", "decoder."]``) switches to one step per group and batch,
    each moving that group alone: the coordinate ascent of seed 004.
    """

    def __init__(self, module, *args, alternating=None, **kwargs):
        super().__init__(module, *args, criterion=_NoCriterion, **kwargs)
        self.alternating = alternating

    def get_loss(self, y_pred, y_true, X=None, training=False):
        return self.criterion_(y_pred)

    def get_dataset(self, X, y=None):
        return X

    def _set_training(self, training=True):
        # skorch switches the mode at every step; walking the module tree each
        # time costs ~5% of a small model's step, so only switch on a change.
        if self.module_.training != training:
            super()._set_training(training)

    def train_step(self, batch, **fit_params):
        if self.alternating is None:
            return super().train_step(batch, **fit_params)
        for prefix in self.alternating:
            self.optimizer_.zero_grad()
            step = self.train_step_single(batch, **fit_params)
            # Adam skips parameters without a gradient: only this group moves.
            for name, param in self.module_.named_parameters():
                if not name.startswith(prefix):
                    param.grad = None
            self.notify(
                "on_grad_computed",
                batch=batch,
                training=True,
                named_parameters=TeeGenerator(self.get_all_learnable_params()),
            )
            self.optimizer_.step()
        return step
