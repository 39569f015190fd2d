"""Errors sigprop raises on bad input: each names the field and what is allowed."""


class SigpropError(Exception):
    """Base of every error sigprop raises on purpose."""


class ConfigError(SigpropError, ValueError):
    """A parameter is outside its allowed range (the message names field and range)."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is invalid: allowed {allowed}")


class UnsupportedComposition(SigpropError, ValueError):
    """An op meets an input law the engine cannot integrate exactly (names the op path)."""


class OverflowInTheory(SigpropError, ArithmeticError):
    """A non-homogeneous op met a scale that float64 cannot hold (names the layer)."""


class MonteCarloOverflow(SigpropError, ArithmeticError):
    """A simulated statistic left the floating-point range (names the block and direction)."""
