"""Experiment configs (``sims/<name>.toml``): schema, validation and loading.

A sim names one or more architectures (a preset of :mod:`sigprop.presets` with its keyword
arguments), the inputs (:class:`sigprop.Inputs` keyword arguments), optional sweeps (one grid
dim per swept preset argument; an arch may have its own, ``[arch.sweeps]``, or some of the
sim's, ``sweeps = [names]``: docs/guide.md, "Sweeps per architecture"), one or more named
profiles, each with its depth and Monte Carlo settings (by convention ``quick`` for a 2-core
CPU and ``paper`` for one GPU; none is mandatory, and a sim is run only under the profiles it
defines), and optional figures (``[[figure]]``: the arguments of :func:`sigprop.plot`, drawn
by ``sigprop reproduce``)::

    description = "stream variance vs depth per normalisation placement"
    [[arch]]
    label = "Pre-LN"
    preset = "preln"
    act = "relu"
    alpha = "1"
    [inputs]
    q = 1.0
    corr = 0.5
    n = 2
    [profiles.quick]
    depth = 64
    widths = [256]
    seeds = 16
    [profiles.paper]
    depth = 10000
    widths = [4096]
    seeds = 256
    [[figure]]
    name = "preln_q"     # -> paper/figures/preln_q.pdf (default: <sim>_<var>)
    var = "q"
    hue = "arch"
    caption = "Stream second moment vs depth."

Unknown keys are refused and types are strict (``depth = "4"``, ``depth = true`` or
``montecarlo = "yes"`` are errors, not coerced); every error names the file, the key and what
is allowed.
Running a sim is :mod:`sigprop.pipeline.runs`.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sigprop import presets, schema
from sigprop.errors import ConfigError, SigpropError
from sigprop.ops import BatchNorm, Repeat
from sigprop.state.inputs import Inputs
from sigprop.state.params import RESERVED_DIMS, Sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES = ("quick", "paper")  # the conventional profiles; a sim may define others, or only one
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a profile or figure name (also a file name)
FREE_DIMS = ("layer", "input", "input_b", "width")  # sp.plot picks a label of one left free
PROFILE_DIMS = ("layer", "width")  # their labels are a profile's depth and widths
BRANCH_KWARGS = tuple(p for p in inspect.signature(presets.branch).parameters if p != "act")


class SimConfigError(ConfigError):
    """A sims/*.toml file is invalid: names the file, the key, the value and what is allowed."""

    def __init__(self, path, key: str, value, allowed: str, problem: str = "is invalid"):
        self.path = str(path)
        SigpropError.__init__(self, f"{path}: {key} = {value!r} {problem}; allowed: {allowed}")
        self.field, self.value, self.allowed = key, value, allowed


def preset_kwargs(name: str) -> tuple[str, ...]:
    """Keyword arguments a preset accepts (its own, plus the branch's when it forwards **kw)."""
    params = inspect.signature(presets.PRESETS[name]).parameters
    own = tuple(p for p, v in params.items() if p != "depth" and v.kind != v.VAR_KEYWORD)
    forwards = any(v.kind == v.VAR_KEYWORD for v in params.values())
    return own + (BRANCH_KWARGS if forwards else ())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class GridSpec(_Strict):
    """``{linspace = [a, b, n]}`` or ``{logspace = [a, b, n]}`` (base-10 exponents a, b)."""

    linspace: tuple[float, float, int] | None = None
    logspace: tuple[float, float, int] | None = None

    @field_validator("linspace", "logspace", mode="before")
    @classmethod
    def _tuple(cls, v):
        return tuple(v) if isinstance(v, list) else v  # TOML arrays are lists

    @model_validator(mode="after")
    def _one(self):
        if (self.linspace is None) == (self.logspace is None):
            raise ValueError("give exactly one of linspace = [a, b, n] or logspace = [a, b, n]")
        a, b, n = self.linspace or self.logspace
        if n < 1 or not all(np.isfinite(self.values())):
            raise ValueError(f"the grid [{a}, {b}, {n}] is empty or not finite; allowed: finite "
                             "a, b (logspace: 10^a, 10^b within float64) and n >= 1")
        return self

    def values(self) -> list[float]:
        if self.linspace is not None:
            a, b, n = self.linspace
            values = np.linspace(a, b, n)
        else:
            a, b, n = self.logspace
            with np.errstate(over="ignore"):  # 10^400 is inf, refused by the caller
                values = np.logspace(a, b, n)
        # to 15 significant digits, as a user types them: linspace's 0.30000000000000004 was a
        # label apart from a list's 0.3, and two archs' grids joined on it were NaN at each
        return [float(f"{v:.15g}") for v in values]


SweepValues = list[float] | GridSpec


class ArchSpec(BaseModel):
    """One architecture: ``preset`` plus its keyword arguments (flat keys beside it)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)
    preset: str
    label: str | None = None
    montecarlo: bool = True  # false: theory only (e.g. a stream that overflows float32)
    # None: the sim's (profile's) sweeps; a list: those of them only (names); a table: its own
    sweeps: list[str] | dict[str, SweepValues] | None = None

    @field_validator("preset")
    @classmethod
    def _known(cls, v):
        if v not in presets.PRESETS:
            raise ValueError(f"unknown preset; allowed: {', '.join(presets.PRESETS)}")
        return v

    @field_validator("label")
    @classmethod
    def _drawable(cls, v):
        """A label is drawn in legends by matplotlib's mathtext: refuse one it cannot parse
        now, not after the simulations ran."""
        if v is not None and "$" in v:
            from matplotlib.mathtext import MathTextParser

            try:
                MathTextParser("path").parse(v)
            except ValueError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else "a parse error"
                raise ValueError(f"mathtext cannot draw it ({first}); allowed: plain text or "
                                 "matplotlib mathtext between $...$") from None
        return v

    @model_validator(mode="after")
    def _kwargs_allowed(self):
        allowed = preset_kwargs(self.preset)
        for key in self.kwargs:
            if key not in allowed:
                raise ValueError(f"{key!r} is not an argument of preset {self.preset!r}; "
                                 f"allowed: preset, label, montecarlo, sweeps, "
                                 f"{', '.join(allowed)}")
        for name in self.sweeps or ():
            _check_sweep_name(name, self)
        return self

    @property
    def own_sweeps(self) -> bool:
        """Whether this arch gives its own sweep values (an ``[arch.sweeps]`` table)."""
        return isinstance(self.sweeps, dict)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def name(self) -> str:
        return self.label or self.preset


def _check_sweep_name(name: str, arch: ArchSpec):
    """A sweep of ``arch`` is an argument of its preset and no reserved dim name."""
    if name in RESERVED_DIMS:
        raise ValueError(f"sweep {name!r} uses a reserved dim name; allowed: a preset "
                         "argument other than " + ", ".join(RESERVED_DIMS))
    allowed = preset_kwargs(arch.preset)
    if name not in allowed:
        raise ValueError(f"sweep {name!r} is not an argument of preset {arch.preset!r} (arch "
                         f"{arch.name!r}; an arch may have its own sweeps: `sweeps = [names]` "
                         f"or an [arch.sweeps] table); allowed: {', '.join(allowed)}")


class InputsSpec(_Strict):
    """Keyword arguments of :class:`sigprop.Inputs` (``n`` is overridden by ``batch_sizes``)."""

    q: float | list[float] = 1.0
    corr: float | list[list[float]] = 0.0
    mean: float | list[float] = 0.0
    n: int | None = None
    law: Literal["fixed", "gaussian"] = "fixed"

    def build(self, n: int | None = None) -> Inputs:
        return Inputs(q=self.q, corr=self.corr, mean=self.mean, n=n or self.n, law=self.law)


class ProfileSpec(_Strict):
    """Depth and Monte Carlo settings of one profile (``seeds = 0``: theory only)."""

    depth: int = Field(ge=1)
    mc_depth: int | None = Field(default=None, ge=1)  # Monte Carlo depth (default: depth)
    widths: list[int] = Field(default_factory=list)
    seeds: int = Field(default=0, ge=0)
    batch_sizes: list[int] | None = None
    sweeps: dict[str, SweepValues] | None = None
    dtype: Literal["float32", "float64"] = "float32"
    sampler: Literal["auto", "explicit", "conditional", "independent"] = "auto"

    @field_validator("widths")
    @classmethod
    def _widths(cls, v):
        if any(w < 2 for w in v):
            raise ValueError("every width must be an integer >= 2")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v):
        if v is not None and (not v or any(b < 1 for b in v)):
            raise ValueError("batch_sizes must be a non-empty list of integers >= 1")
        return v

    @model_validator(mode="after")
    def _mc(self):
        if self.seeds and not self.widths:
            raise ValueError("seeds > 0 needs at least one width (widths = [...])")
        if self.mc_depth is not None and self.mc_depth > self.depth:
            raise ValueError(f"mc_depth ({self.mc_depth}) must be <= depth ({self.depth})")
        return self

    @property
    def montecarlo(self) -> bool:
        return self.seeds > 0


class FigureSpec(_Strict):
    """One ``[[figure]]`` of a sim: the arguments of :func:`sigprop.plot` (theory and, when the
    profile has seeds, Monte Carlo of this sim), the output name and the caption."""

    name: str | None = Field(default=None, pattern=NAME)  # default: <sim>_<var>
    var: str = "q"
    x: str = "layer"
    hue: str | None = None
    col: str | None = None
    row: str | None = None
    sel: dict[str, int | float | str] = Field(default_factory=dict)
    estimator: str = "auto"
    xscale: str = "auto"
    yscale: str = "auto"
    max_points: int = Field(default=16, ge=2)
    sharey: bool = True
    xlabel: str | None = None
    ylabel: str | None = None
    titles: bool = True
    caption: str | None = None

    @field_validator("var")
    @classmethod
    def _var(cls, v):
        if v not in schema.NAMES:
            raise ValueError(f"unknown variable; allowed: {', '.join(schema.NAMES)}")
        return v

    @model_validator(mode="after")
    def _choices(self):
        from sigprop.analysis.compare import ESTIMATORS

        for key, allowed in (("estimator", ESTIMATORS), ("xscale", schema.AXIS_SCALES),
                             ("yscale", schema.AXIS_SCALES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} = {getattr(self, key)!r} is unknown; allowed: "
                                 f"{', '.join(allowed)}")
        return self

    def plot_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sigprop.plot` (all but the datasets)."""
        return self.model_dump(exclude={"name", "caption"})




class Disagreement(_Strict):
    """An expected disagreement confined to some points: ``why``, and ``where`` the points are
    (``arch`` labels, ``batch`` sizes); the rest of the variable is still held to the theory."""

    why: str
    where: dict[Literal["arch", "batch"], list[str] | list[int]] = Field(min_length=1)

    @field_validator("where")
    @classmethod
    def _labels(cls, v):
        for dim, labels in v.items():
            if not labels:
                raise ValueError(f"where.{dim} is empty; allowed: the {dim} labels it excludes")
        return v


class SimSpec(_Strict):
    """One experiment: architectures, inputs, sweeps, profiles and figures."""

    description: str
    arch: list[ArchSpec] = Field(min_length=1)
    inputs: InputsSpec = InputsSpec()
    sweeps: dict[str, SweepValues] = Field(default_factory=dict)
    root_seed: int = 0
    profiles: dict[str, ProfileSpec] = Field(min_length=1)
    figure: list[FigureSpec] = Field(default_factory=list)
    # variable -> why its theory and Monte Carlo are expected to disagree (sp.compare's
    # DISAGREE), everywhere or at some points (a Disagreement): `sigprop reproduce` fails on
    # any other (sigprop.figures.agreement)
    disagree: dict[str, str | Disagreement] = Field(default_factory=dict)

    @field_validator("disagree")
    @classmethod
    def _disagree(cls, v):
        from sigprop import schema

        for name, entry in v.items():
            why = entry if isinstance(entry, str) else entry.why
            if name not in schema.PRIMARY:
                raise ValueError(f"disagree names {name!r}; allowed: a variable sp.compare "
                                 f"judges ({', '.join(schema.PRIMARY)})")
            if not why.strip() or why.count("$") % 2:
                raise ValueError(f"disagree.{name} = {why!r} gives no reason or an unclosed $; "
                                 "allowed: why the theory and Monte Carlo are expected to "
                                 "disagree (the paper prints it; $...$ as LaTeX math)")
        return v

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, v):
        import re

        bad = [k for k in v if not re.match(NAME, k)]
        if bad:
            raise ValueError(f"profile name {bad[0]!r} is invalid; allowed: letters, digits, "
                             "'_', '-', '.' (e.g. quick, paper, laptop)")
        return v

    @field_validator("arch", mode="before")
    @classmethod
    def _listify(cls, v):
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _consistent(self):
        labels = [a.name for a in self.arch]
        if len(set(labels)) != len(labels):
            raise ValueError(f"architecture labels must be unique, got {labels}")
        batches = sorted({b for p in self.profiles.values() for b in p.batch_sizes or ()})
        for name, entry in self.disagree.items():
            where = getattr(entry, "where", {})
            for dim, known in (("arch", labels), ("batch", batches)):
                unknown = [v for v in where.get(dim, []) if v not in known]
                if unknown:
                    raise ValueError(f"disagree.{name}.where.{dim} names {unknown[0]!r}; allowed: "
                                     f"the sim's {dim} labels ({', '.join(map(str, known))})")
        for profile, prof in self.profiles.items():
            base = prof.sweeps or self.sweeps
            own = {a.name: self.arch_sweeps(a, base, profile) for a in self.arch}
            for a in self.arch:
                for name in own[a.name]:
                    _check_sweep_name(name, a)
            unused = [n for n in base if not any(n in own[a.name] for a in self.arch
                                                 if not a.own_sweeps)]
            if unused:
                raise ValueError(f"sweep {unused[0]!r} (profile {profile}) is swept by no arch; "
                                 "allowed: the sweeps that some arch uses")
            for a in self.arch:  # a dim swept by some archs, not by this one that takes it
                taken = [d for o in own.values() for d in o
                         if d not in own[a.name] and d in preset_kwargs(a.preset)]
                if taken:
                    raise ValueError(
                        f"arch {a.name!r} (preset {a.preset!r}) takes {taken[0]!r}, which another "
                        f"arch sweeps (profile {profile}), but is not swept over it: its one value "
                        f"would be shown at every {taken[0]}; allowed: give it a sweep of its own "
                        f"value (e.g. [arch.sweeps] {taken[0]} = [1.0]; NaN at the other values), "
                        "or put it in another sim")
        return self

    def arch_sweeps(self, arch: ArchSpec, base: dict[str, SweepValues],
                    profile: str) -> dict[str, SweepValues]:
        """The sweeps of ``arch`` under a profile whose sim-wide sweeps are ``base``: ``base``
        (the arch has no ``sweeps``), the named ones of it (a list), or its own (a table)."""
        if arch.sweeps is None:
            return dict(base)
        if arch.own_sweeps:
            return dict(arch.sweeps)
        missing = [n for n in arch.sweeps if n not in base]
        if missing:
            raise ValueError(f"arch {arch.name!r}: sweeps = {arch.sweeps} names {missing[0]!r}, "
                             f"which is no sweep of the sim (profile {profile}); allowed: "
                             f"{', '.join(base) or 'none (the sim has no [sweeps])'}, or a table "
                             "[arch.sweeps] of its own")
        return {n: base[n] for n in arch.sweeps}


class Sim:
    """A validated sim file: ``Sim.load(path)``; ``sim.config(profile)`` is what gets hashed."""

    def __init__(self, spec: SimSpec, name: str, path: Path | None = None):
        self.spec, self.name, self.path = spec, name, path

    @classmethod
    def load(cls, path) -> Sim:
        path = Path(path)
        if not path.is_file():
            raise SimConfigError(path, "file", str(path), "an existing sims/<name>.toml",
                                 "is a folder" if path.is_dir() else "not found")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise SimConfigError(path, "file", f"byte {e.start}", "a UTF-8 text file",
                                 "is not UTF-8") from None
        except OSError as e:
            raise SimConfigError(path, "file", str(path), "a readable file",
                                 f"cannot be read ({e.strerror})") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SimConfigError(path, "TOML", str(e), "valid TOML syntax", "does not parse") from None
        try:
            spec = SimSpec.model_validate(raw)
        except ValidationError as e:
            raise _explain(path, raw, e) from None
        sim = cls(spec, path.stem, path)
        sim._check_builds()
        sim.check_figures()
        return sim

    def profile(self, name: str) -> ProfileSpec:
        if name not in self.spec.profiles:
            raise SimConfigError(self.path or self.name, "profile", name,
                                 f"one of {', '.join(self.spec.profiles)} (the profiles it "
                                 "defines)", "is not defined")
        return self.spec.profiles[name]

    def figures(self) -> dict[str, FigureSpec]:
        """The sim's ``[[figure]]`` tables by output name (default ``<sim>_<var>``)."""
        return {f.name or f"{self.name}_{f.var}": f for f in self.spec.figure}

    def sweeps(self, profile: str, arch: ArchSpec | None = None) -> dict[str, Sweep]:
        """The sweeps of ``arch`` under ``profile`` (arch ``sweeps`` > profile ``sweeps`` > the
        sim's ``[sweeps]``); without ``arch``, the sweeps every arch shares (an error when the
        archs are swept differently)."""
        base = self.profile(profile).sweeps or self.spec.sweeps
        if arch is None:
            per_arch = {a.name: self.sweeps(profile, a) for a in self.spec.arch}
            if len({repr(s) for s in per_arch.values()}) > 1:
                raise ConfigError(f"{self.name}: sweeps of the archs (profile {profile})",
                                  {k: list(s) for k, s in per_arch.items()},
                                  "the same sweeps on every arch for one grid of all archs "
                                  "(sweep_run's zarr store; `sigprop theory`, `simulate` and "
                                  "`reproduce` run per-arch sweeps), or sim.sweeps(profile, "
                                  "arch) for one arch's")
            return next(iter(per_arch.values()))
        return self._resolve(self.spec.arch_sweeps(arch, base, profile))

    @staticmethod
    def _resolve(raw: dict[str, SweepValues]) -> dict[str, Sweep]:
        return {k: Sweep(k, v.values() if isinstance(v, GridSpec) else v) for k, v in raw.items()}

    def config(self, profile: str) -> dict:
        """The resolved, JSON-able config of one profile (what results are keyed on)."""
        d = self.spec.model_dump(mode="json", exclude={"figure", "disagree"})  # restyling (or
        # declaring an expected disagreement) reruns no sim
        d["profiles"] = {profile: d["profiles"][profile]}
        base = self.profile(profile).sweeps or self.spec.sweeps
        d["sweeps"] = {k: list(s.values) for k, s in self._resolve(base).items()}
        for a, spec in zip(d["arch"], self.spec.arch):  # an arch's own sweeps, resolved
            if spec.sweeps is None:
                del a["sweeps"]  # the configs (and cache keys) of sims without them unchanged
            else:
                a["sweeps"] = {k: list(s.values) for k, s in self.sweeps(profile, spec).items()}
        return {"sim": self.name, "profile": profile, **d}

    def batch_sizes(self, profile: str) -> list[int | None]:
        return self.profile(profile).batch_sizes or [None]

    def net(self, arch: ArchSpec, depth: int, sweeps: dict[str, Any], blocks: int | None = None):
        """The preset at ``depth``; ``blocks`` keeps only its first blocks (the same weights
        scales and depth-dependent constants, such as alpha = 1/sqrt(L) or DeepNorm's, so that
        a shallower Monte Carlo run is layer by layer the start of the theory's net)."""
        net = presets.PRESETS[arch.preset](depth=depth, **{**arch.kwargs, **sweeps})
        if blocks is None or blocks == depth:
            return net
        if not isinstance(net, Repeat) or blocks > depth:
            raise SimConfigError(self.path, "mc_depth", blocks,
                                 f"<= depth ({depth}) and an arch that is a plain stack of "
                                 f"blocks ({arch.name} is not, or is shorter)")
        return Repeat(net.block, blocks)

    def _figure_dims(self, var: str, profile: str) -> dict[str, list]:
        """The dims of ``var`` in this sim's datasets under ``profile`` (theory and, with seeds,
        Monte Carlo: what sp.plot draws), each with its labels."""
        prof = self.profile(profile)
        labels = {"arch": [a.name for a in self.spec.arch]}
        if prof.batch_sizes:
            labels["batch"] = list(prof.batch_sizes)
        for a in self.spec.arch:  # a sweep: the union of its values over the archs
            for k, v in self.spec.arch_sweeps(a, prof.sweeps or self.spec.sweeps, profile).items():
                have = labels.setdefault(k, [])
                have += [x for x in (v.values() if isinstance(v, GridSpec) else v) if x not in have]
        n = max(self.spec.inputs.build(b).n for b in self.batch_sizes(profile))
        labels.update({d: list(range(prof.depth + 1 if d == "layer" else n))
                       for d in schema.VARIABLES[var].dims})
        if prof.montecarlo and any(a.montecarlo for a in self.spec.arch):
            labels["width"] = list(prof.widths)
        return labels

    def check_figures(self, profile: str | None = None):
        """Each figure's x, hue, col, row and sel are distinct dims of its variable in this sim's
        datasets, each sel a label there, and each dim with several values (a sweep, arch,
        batch) is placed (sp.plot's rule: one left over becomes the hue); figure names are
        distinct. Without ``profile`` (at load): under every profile, but for the labels of
        ``layer`` and ``width`` (its depth and widths), checked once a profile is chosen."""
        later = PROFILE_DIMS if profile is None else ()
        for p in self.spec.profiles if profile is None else [profile]:
            for i, fig in enumerate(self.spec.figure):
                self._check_figure(f"figure.{i}", fig, p, later)
        names = [f.name or f"{self.name}_{f.var}" for f in self.spec.figure]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SimConfigError(self.path, "figure.name", twice[0], "a distinct name per figure "
                                 "(default <sim>_<var>)", "is used twice")

    def _check_figure(self, where: str, fig: FigureSpec, profile: str, later: tuple[str, ...]):
        """One figure under one profile; the dims in ``later`` wait for a chosen profile."""
        labels = self._figure_dims(fig.var, profile)
        of = f"(profile {profile})"
        roles = {k: getattr(fig, k) for k in ("x", "hue", "col", "row") if getattr(fig, k)}
        for key, dim in [*roles.items(), *((f"sel.{d}", d) for d in fig.sel)]:
            if dim not in labels and dim not in later:
                raise SimConfigError(self.path, f"{where}.{key}", dim,
                                     f"a dim of {fig.var} {of}: {', '.join(labels)}",
                                     "is not a dim of this sim's datasets")
        used = list(roles.values())
        if len(set(used)) != len(used):
            raise SimConfigError(self.path, where, roles, "distinct dims as x, hue, col and row",
                                 "places a dim twice")
        for d, v in fig.sel.items():
            if d in used:
                raise SimConfigError(self.path, f"{where}.sel.{d}", v, "a dim that is not x, hue, "
                                     "col or row", f"fixes {d}, which the figure draws")
            if d not in later and not any(_same(v, lab) for lab in labels[d]):
                raise SimConfigError(self.path, f"{where}.sel.{d}", v,
                                     f"one of {labels[d]} {of}", "is not a label of its datasets")
        left = [d for d, labs in labels.items() if d not in (*used, *fig.sel, *FREE_DIMS)
                and len(labs) > 1]
        if left and not (fig.hue is None and len(left) == 1):
            free = [r for r in ("hue", "col", "row") if getattr(fig, r) is None]
            hint = f"{free[0]} = {left[0]!r}" if free else f"sel = {{ {left[0]} = ... }}"
            raise SimConfigError(self.path, where, left, "each as x, hue, col or row, or fixed by "
                                 f"sel (e.g. {hint})",
                                 f"leaves dims with several values {of} without a place")

    def _check_builds(self):
        """Build every net and input once at depth 1 so value errors surface at load time."""
        for a in self.spec.arch:
            try:
                self.net(a, 1, {})
            except (ConfigError, TypeError) as e:
                why = f"{e.field}={e.value!r} is invalid" if isinstance(e, ConfigError) else e
                raise SimConfigError(self.path, f"arch '{a.name}'", a.kwargs, _allowed_of(e),
                                     f"does not build ({why})") from None
            for p in self.spec.profiles:  # sweeps (finite values) and batch sizes of each profile
                # (the top level's sweeps were named as the profile's)
                where = (f"arch '{a.name}'.sweeps" if a.own_sweeps else
                         f"profiles.{p}.sweeps" if self.profile(p).sweeps else "sweeps")
                try:
                    sweeps = self.sweeps(p, a)
                except ConfigError as e:
                    raise SimConfigError(self.path, f"{where} ({e.field})", e.value,
                                         e.allowed) from None
                try:  # every value of every sweep checked by the ops it reaches
                    self.net(a, 1, sweeps)
                except ConfigError as e:
                    raise SimConfigError(self.path, where, {k: list(v.values) for k, v in
                                                            sweeps.items()}, e.allowed,
                                         f"do not build for arch '{a.name}' ({e.field}="
                                         f"{e.value!r} is invalid)") from None
                except TypeError as e:  # a preset argument it cannot vectorise (DeepNorm's
                    # sigma_w1 = b * s1)
                    raise SimConfigError(self.path, where, list(sweeps),
                                         f"arguments that preset {a.preset!r} can sweep",
                                         f"do not build for arch '{a.name}' ({e})") from None
                for b in self.batch_sizes(p):
                    try:
                        inputs = self.spec.inputs.build(b)
                    except ConfigError as e:
                        raise SimConfigError(self.path, f"inputs ({e.field})", e.value,
                                             e.allowed) from None
                    self._check_batch(a, p, inputs)

    def _check_batch(self, arch: ArchSpec, profile: str, inputs: Inputs):
        """BatchNorm normalises each feature over the B inputs: B = 1 leaves 0/0 (all NaN)."""
        if inputs.n < 2 and any(isinstance(op, BatchNorm) for op in self.net(arch, 1, {}).walk()):
            raise SimConfigError(self.path, f"profiles.{profile}.batch_sizes", inputs.n,
                                 ">= 2 inputs (BatchNorm over one input is undefined)",
                                 f"does not suit arch '{arch.name}'")


def _same(a, b) -> bool:
    """Equal labels (floats within rounding, as sp.plot matches them)."""
    return a == b or (isinstance(a, float) and isinstance(b, float) and bool(np.isclose(a, b)))


def _allowed_of(e: Exception) -> str:
    return getattr(e, "allowed", "the preset's documented arguments")


def _explain(path, raw: dict, err: ValidationError) -> SimConfigError:
    """Turn pydantic's first error into one line naming the key, value and allowed values."""
    errors = err.errors()
    # an unknown key first, then our own checks (a union such as list | GridSpec also reports
    # that a dict is not a list), then pydantic's first complaint
    # the deepest loc: in a union (an arch's sweeps: a list of names or a table) the branch
    # that got furthest into the value
    e = next((x for x in errors if x["type"] == "extra_forbidden"),
             next((x for x in errors if x["type"] == "value_error"),
                  max(errors, key=lambda x: len(x["loc"]))))
    loc = [x for x in e["loc"] if not str(x).startswith(("function-", "list[", "float", "int",
                                                          "GridSpec", "tuple[", "dict[",
                                                          "union["))]
    key = ".".join(str(x) for x in loc) or "(top level)"
    if e["type"] == "extra_forbidden":
        return SimConfigError(path, key, e.get("input"), "keys " + ", ".join(_fields_at(loc[:-1])),
                              "is not a known key")
    if e["type"] == "missing":
        return SimConfigError(path, key, None, "a value (this key is required)", "is missing")
    msg = e["msg"].removeprefix("Value error, ")
    problem, _, allowed = msg.partition("; allowed: ")
    value = e.get("input")
    if isinstance(value, dict) and len(str(value)) > 120:
        value = "{...}"
    if allowed:
        return SimConfigError(path, key, value, allowed, f"is invalid: {problem}")
    return SimConfigError(path, key, value, msg, "is invalid")


_NESTED = {"arch": "ArchSpec", "inputs": "InputsSpec", "profiles": "profiles",
           "figure": "FigureSpec", "disagree": "disagree"}


def _fields_at(loc) -> list[str]:
    """Allowed keys of the table at ``loc`` (walking SimSpec's nested tables)."""
    model: Any = SimSpec
    for part in loc:
        if isinstance(part, int):
            continue
        if model == "profiles":
            model = ProfileSpec
        elif model == "disagree":  # (a variable's entry, then pydantic's name of its table)
            model = Disagreement if part == "Disagreement" else "disagree"
        elif model is SimSpec:
            model = globals().get(_NESTED.get(part, ""), _NESTED.get(part))
        else:
            model = GridSpec if part not in PROFILES else None
    if model == "profiles":
        return list(PROFILES)
    return list(model.model_fields) if isinstance(model, type) else []


def sim_paths(directory="sims") -> list[Path]:
    """The ``*.toml`` files of ``directory``, sorted; an error when there are none."""
    paths = sorted(Path(directory).glob("*.toml"))
    if not paths:
        raise ConfigError("sims directory", str(directory), "a folder with sims/<name>.toml files")
    return paths


def load_all(directory="sims") -> dict[str, Sim]:
    """Every ``sims/*.toml``, validated, by name (the first invalid one is an error)."""
    return {p.stem: Sim.load(p) for p in sim_paths(directory)}


def load_each(directory="sims") -> tuple[dict[str, Sim], dict[str, SigpropError]]:
    """Every ``sims/*.toml`` by name, and apart the invalid ones with their error (so one
    half-written file does not stop the others)."""
    sims, broken = {}, {}
    for path in sim_paths(directory):
        try:
            sims[path.stem] = Sim.load(path)
        except SigpropError as e:
            broken[path.stem] = e
    return sims, broken
