"""Run configuration: nested dataclasses with working defaults, a YAML/TOML file for defaults, dotted overrides win."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from dae.checks import FALSE_WORDS, TRUE_WORDS
from dae.errors import ResourceError, UsageError


@dataclass
class DataConfig:
    dataset: str = "mnist"
    data_dir: str | None = None  # None: DAE_DATA_DIR, the cache, /usr/share/datasets, then download
    limit: int | None = None  # train on the first N training images only (quick runs)
    val_size: int = 1000  # held out of the training split for validation, from its end (a tenth at most;
    # for a folder, whole pictures spread over it: at least one picture, so with few pictures a larger share)
    patch_size: int = 64  # folder datasets: training crop size
    patches_per_image: int = 16  # folder datasets: crops of each training picture, drawn afresh each epoch


@dataclass
class ModelConfig:
    name: str = "unet"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    noise: str = "gaussian:0.5"
    loss: str = "bce"  # bce (on logits) | mse | l1; bce: mse through a sigmoid can stall at "all background"
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 3e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant; cosine decays over steps, epochs or the time budget
    warmup_steps: int = 50
    batch_size: int = 64
    epochs: int | None = None
    steps: int | None = None
    # Seconds of the training loop (loading the data before it is not counted); the CLI accepts 90s, 2m, 1h.
    time_budget: float | None = None
    val_every: int | None = None  # steps between validation passes; None: once per epoch (and at the end)
    grad_clip: float | None = 1.0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto (bf16 where GPU or CPU has it natively, else fp32) | fp32 | bf16 | fp16
    threads: int | None = None  # CPU threads; None: torch's default
    channels_last: bool = True
    compile: bool = False  # torch.compile the training forward; on a 2-core CPU it pays only on long runs
    keep_memory: bool = True  # keep freed memory for the next step instead of returning it to the OS (glibc)
    keep_last: int = 2  # checkpoint generations kept besides best


@dataclass
class Config:
    """A run's whole set-up: sections data, model and train, plus the run's name, folder, recipe and seeds.

    dae.train takes a Config whole, or a nested dict laid over the defaults (and over a recipe's set-up when it
    names one); `dae train` flags and --section.field=value overrides build the same dict. Each field's
    comment in dae/config.py says what it does.

    Example:
        >>> cfg = Config()
        >>> cfg.train.noise, cfg.model.name
        ('gaussian:0.5', 'unet')
    """

    name: str | None = None
    out: str | None = None  # run directory; default runs/<name>
    recipe: str | None = None
    seed: int = 0
    eval_seed: int = 1234  # fixes the noisy validation set (and a folder's validation crops)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields given in seconds that also take '90s', '2m', '1h'.
DURATION_FIELDS = ("train.time_budget",)


def _text_fields(cls: type, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, hint in get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out |= _text_fields(hint, f"{prefix}{name}.")
        elif hint is str or (get_origin(hint) is not None and set(get_args(hint)) == {str, type(None)}):
            out.add(f"{prefix}{name}")
    return out


# The dotted fields that hold text (name, out, train.noise, ...): a value there is the text as written.
TEXT_FIELDS = frozenset(_text_fields(Config))
_NONE_WORDS = ("none", "null", "")


def parse_duration(text: str | float | int) -> float:
    """Seconds from '90', '90s', '2m', '1.5h'."""
    if isinstance(text, int | float):
        return float(text)
    # 1e3 too, as the dotted override (a plain number) takes it.
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(s|m|h)?\s*", str(text))
    if not m:
        raise UsageError(f"bad duration {text!r}; use e.g. 90s, 2m or 1h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _duration_or_number(text: str, where: str) -> str | float:
    """'90s', '2m', '1h' as seconds, as on the command line; numbers (a quoted '1e3', a TOML string) and
    none-words are left to the field's own conversion."""
    word = text.strip()
    if word.lower() in _NONE_WORDS:
        return word
    try:
        return float(word)
    except ValueError:
        pass
    try:
        return parse_duration(word)
    except UsageError as e:
        raise UsageError(f"config field {where}: {e}") from None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, with a message naming the field."""
    origin, args = get_origin(annotation), get_args(annotation)
    if args and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = get_origin(annotation), get_args(annotation)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in {"1", *TRUE_WORDS}:
                return True
            if str(value).lower() in {"0", *FALSE_WORDS}:
                return False
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if value is None or isinstance(value, (dict, list)):
                raise ValueError  # str(None) is "None", which a noise spec would read as no noise
            return str(value)
        if origin is dict:
            if isinstance(value, str):
                value = _load_yaml(value)
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, yaml.YAMLError) as e:
        why = f" ({_parse_problem(e)})" if isinstance(e, yaml.YAMLError) else ""  # e.g. a repeated key
        raise UsageError(
            f"config field {where}: cannot use {value!r} as {getattr(annotation, '__name__', annotation)}{why}"
        ) from None
    return value


def _update(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise UsageError(
                f"unknown config field {where!r}; valid: {', '.join(sorted(prefix + n for n in names))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if value is None:
                continue  # an empty YAML section sets nothing
            if not isinstance(value, dict):
                raise UsageError(f"config field {where} is a section; give {where}.<field>=value")
            _update(current, value, prefix=f"{where}.")
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(obj, key, {**current, **value})  # model.kwargs.width=32 adds to, not replaces, the kwargs
        else:
            if where in DURATION_FIELDS and isinstance(value, str):
                value = _duration_or_number(value, where)
            setattr(obj, key, _coerce(value, hints[key], where))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with two changes a config file needs.

    Repeated keys are refused, as the YAML spec says; PyYAML keeps the last one silently, which turns a
    pasted-twice `lr:` line into a run that trains with a value the user may not have meant.
    Plain scalars are read as YAML 1.2 reads them, not YAML 1.1 (PyYAML's): only true/false are booleans,
    so `noise: off` or `name: no` stay words; `010` is ten, not octal eight; `1e-3` is a number, not a
    string; dates stay strings.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then overriding a merged key is what merges are for
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        # YAML 1.2's octal and hex are 0o17 and 0x1f; a leading zero alone means nothing.
        return int(text, 0) if text.lstrip("+-")[:2] in ("0o", "0x") else int(text, 10)


_TAG = "tag:yaml.org,2002:"
_YAML11_SCALARS = {_TAG + name for name in ("bool", "int", "float", "timestamp")}
_YAML12_RESOLVERS = [  # the YAML 1.2 core schema's booleans, integers and floats
    (_TAG + "bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), "tTfF"),
    (_TAG + "int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), "-+0123456789"),
    (
        _TAG + "float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        "-+.0123456789",
    ),
]
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_SCALARS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _first in _YAML12_RESOLVERS:
    _Loader.add_implicit_resolver(_tag, _rx, list(_first))
_Loader.add_constructor(_TAG + "int", _Loader.construct_yaml_int)


class _Dumper(yaml.SafeDumper):
    """Quotes every string that YAML 1.1 or 1.2 would read as something else ("off", "010", "1e3"), so that
    what dae writes reads back the same here and in any other YAML tool."""


for _tag, _rx, _first in _YAML12_RESOLVERS:
    _Dumper.add_implicit_resolver(_tag, _rx, list(_first))


def _load_yaml(text: str | bytes, text_fields: Collection[str] = ()) -> Any:
    """YAML as a config holds it; a plain scalar at one of the dotted `text_fields` stays the text it is written
    as: a run named 3e-4 in a config.yaml that an older dae wrote unquoted (YAML 1.1 read it as text) must not
    come back named 0.0003."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _as_text(node, text_fields)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _as_text(node: yaml.Node, text_fields: Collection[str], prefix: str = "") -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        where = f"{prefix}{key.value}"
        if isinstance(value, yaml.MappingNode):
            _as_text(value, text_fields, f"{where}.")
        elif (
            isinstance(value, yaml.ScalarNode)
            and value.style is None  # plain, not quoted
            and where in text_fields
            and value.tag in (_TAG + "int", _TAG + "float", _TAG + "bool")
        ):
            value.tag = _TAG + "str"


def dump_yaml(data: Any) -> str:
    """`data` as YAML that load_config_file (and YAML 1.1 readers) read back unchanged, keys in their order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _parse_problem(e: Exception) -> str:
    """The one line of a parser's error worth showing. PyYAML's first line is its context ("while parsing a
    block mapping"); the problem and where it is come after."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and e.problem and mark is not None:
        return f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(e).splitlines()[0]


MAX_CONFIG_BYTES = 2**20


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML (by its .toml suffix, in any case) config file into a nested dict."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            # Read no more than a config can be: `--config /dev/zero` (or a dataset named by mistake) would
            # otherwise be read whole into memory first.
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        # A missing or unreadable file, as for every other file dae is given to read.
        raise ResourceError(f"cannot read config file {path}: {e.strerror}") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise UsageError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a config file"
        )
    kind = "TOML" if path.suffix.lower() == ".toml" else "YAML"
    try:
        data = tomllib.loads(text.decode()) if kind == "TOML" else _load_yaml(text, TEXT_FIELDS)
    # ValueError: an explicit tag PyYAML cannot construct (!!int abc).
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"config file {path} is not valid {kind}: {_parse_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_override(text: str) -> dict[str, Any]:
    """'train.lr=3e-4' -> {'train': {'lr': 3e-4}} (values parsed as YAML scalars)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"bad override {text!r}; use section.field=value, e.g. train.lr=3e-4")
    try:
        value = _load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and key.endswith(("noise", "name", "dataset", "data_dir")):
        value = raw  # keep spec strings like 'gaussian:0.3' verbatim
    elif isinstance(value, int | float) and key.lstrip("-") in TEXT_FIELDS:
        value = raw  # a text field takes a number as typed, as in a file: --name=1e3 is not named 1000.0
    out: dict[str, Any] = {}
    node = out
    parts = key.lstrip("-").split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge two nested dicts; `extra` wins.

    A section in one and a plain value in the other is an error, not a silent replacement: a config file's
    `model: dncnn` under a flag's `model.name` would otherwise train the flag's model without a word.
    """
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and k in out and out[k] is None:
            out[k] = {}  # an empty YAML section (`model:` with nothing under it) is an empty section
        if v is None and isinstance(out.get(k), dict):
            continue
        if k in out and isinstance(v, dict) != isinstance(out[k], dict):
            where = f"{prefix}{k}"
            raise UsageError(f"config field {where} is a section; give {where}.<field>=value")
        out[k] = merge(out[k], v, f"{prefix}{k}.") if isinstance(v, dict) and k in out else v
    return out


def build_config(*layers: dict[str, Any]) -> Config:
    """Defaults, then each layer in order (recipe, file, CLI flags, dotted overrides), later layers win."""
    cfg = Config()
    for layer in layers:
        _update(cfg, layer)
    return cfg


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from `to_dict()` output (e.g. a checkpoint's record)."""
    return build_config(d)


def save_config(cfg: Config, path: str | Path) -> None:
    from dae.fileio import atomic_write_text

    atomic_write_text(path, dump_yaml(cfg.to_dict()))
