"""PyTorch's default nn.Linear initialisation, which DiVA's heads and regressors use (algorithm.md 2.2)."""

import math

import keras


def torch_linear_init(fan_in: int, seed=None) -> keras.initializers.Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for both kernel and bias of a torch Linear."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound, seed=seed)


def torch_dense(units: int, fan_in: int, name: str | None = None, seed=None, **kw) -> keras.layers.Dense:
    """A Dense layer initialised like torch.nn.Linear(fan_in, units)."""
    kernel_seed = None if seed is None else seed
    bias_seed = None if seed is None else seed + 1
    return keras.layers.Dense(
        units,
        kernel_initializer=torch_linear_init(fan_in, kernel_seed),
        bias_initializer=torch_linear_init(fan_in, bias_seed),
        name=name,
        **kw,
    )
