"""Shared test configuration."""

import torch

# The models in the tests are small: one intra-op thread is faster than two on
# these machines, and it keeps parallel test runs from oversubscribing the cores.
torch.set_num_threads(1)
