import pytest

from dae.config import Config, build_config, load_config_file, parse_duration, parse_override, save_config
from dae.errors import ResourceError, UsageError


def test_defaults_work():
    cfg = Config()
    assert cfg.model.name and cfg.train.noise.startswith("gaussian") and cfg.train.lr > 0


def test_layers_later_wins(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.01\n  batch_size: 32\nmodel:\n  name: strided\n")
    cfg = build_config(load_config_file(f), parse_override("train.lr=3e-4"))
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.batch_size == 32
    assert cfg.model.name == "strided"


def test_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('seed = 7\n[train]\nnoise = "gaussian:0.3"\n')
    cfg = build_config(load_config_file(f))
    assert cfg.seed == 7 and cfg.train.noise == "gaussian:0.3"


def test_override_keeps_noise_spec_verbatim():
    cfg = build_config(parse_override("train.noise=gaussian:0.3,clip=false"))
    assert cfg.train.noise == "gaussian:0.3,clip=false"


def test_model_kwargs_override_merges():
    cfg = build_config(
        {"model": {"name": "unet", "kwargs": {"width": 8}}}, parse_override("model.kwargs.depth=3")
    )
    assert cfg.model.kwargs == {"width": 8, "depth": 3}


def test_two_cli_kwargs_overrides_both_apply():
    # The CLI merges dotted overrides before building: the second must not drop the first.
    from dae.cli import _collect_overrides, _train_config, build_parser

    args, rest = build_parser().parse_known_args(["train"])
    cfg = _train_config(args, _collect_overrides(["--model.kwargs.width=32", "--model.kwargs.depth=3"]))
    assert cfg.model.kwargs == {"width": 32, "depth": 3}


def test_recipe_sets_dataset_and_plain_optimisation():
    from dae.cli import _train_config, build_parser

    args, _ = build_parser().parse_known_args(["train", "--recipe", "tf-intro-fashion-0.2"])
    cfg = _train_config(args, [])
    assert cfg.data.dataset == "fashion-mnist"
    assert (cfg.train.schedule, cfg.train.warmup_steps, cfg.train.grad_clip, cfg.train.precision) == (
        "constant",
        0,
        None,
        "fp32",
    )
    args, _ = build_parser().parse_known_args(["train", "--recipe", "unet-fast"])
    assert _train_config(args, []).train.schedule == "cosine"  # ours keep dae's defaults


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config field 'train.lrr'"),
        ("train.batch_size=abc", "train.batch_size"),
        ("train.epochs=1.5", "train.epochs"),
        ("train=3", "section"),
        ("nonsense", "bad override"),
    ],
)
def test_override_errors_name_the_field(override, fragment):
    with pytest.raises(UsageError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        build_config(parse_override(override))


@pytest.mark.parametrize(
    "text, flags, fragment",
    [
        ("model: dncnn\n", [], "config field model is a section"),
        ("data: fashion-mnist\n", ["--dataset", "mnist"], "config field data is a section"),
        ("train: 5\n", ["--steps", "3"], "config field train is a section"),
        ("train:\n  noise:\n", [], "train.noise: cannot use None"),
        ("train:\n  noise: [gaussian]\n", [], "train.noise: cannot use"),
    ],
)
def test_a_config_file_value_where_a_section_or_spec_belongs_is_refused(tmp_path, text, flags, fragment):
    # Once these were dropped in favour of the flags' sections (training the wrong model or data), or read
    # as the text "None", i.e. no noise at all; either way the run went ahead without a word.
    from dae.cli import _train_config, build_parser

    f = tmp_path / "c.yaml"
    f.write_text(text)
    args, rest = build_parser().parse_known_args(["train", "--config", str(f), *flags])
    with pytest.raises(UsageError, match=fragment):
        _train_config(args, rest)


@pytest.mark.parametrize("text", ["model:\n", "model:\n  # name: fc\ntrain:\n  steps: 2\n"])
def test_an_empty_section_in_a_config_file_sets_nothing(tmp_path, text):
    from dae.cli import _train_config, build_parser

    f = tmp_path / "c.yaml"
    f.write_text(text)
    for flags, model in (([], "unet"), (["--model", "fc"], "fc")):
        args, rest = build_parser().parse_known_args(["train", "--config", str(f), *flags])
        assert _train_config(args, rest).model.name == model
    assert build_config({"model": None}).model.name == "unet"


@pytest.mark.parametrize("override", ["train.noise=null", "model.name=~", "data.dataset=null"])
def test_null_for_a_text_field_is_refused(override):
    with pytest.raises(UsageError, match="cannot use None"):
        build_config(parse_override(override))


def test_a_library_dict_with_a_value_for_a_section_is_a_usage_error():
    from dae.train import resolve_config

    with pytest.raises(UsageError, match="config field model is a section"):
        resolve_config({"model": "dncnn", "recipe": "tf-upsample-0.5"})  # was an AttributeError
    with pytest.raises(UsageError, match="config field train is a section"):
        resolve_config({"train": 5})


def test_bad_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config_file(f)
    with pytest.raises(ResourceError, match="cannot read config file .*missing.yaml: No such file"):
        load_config_file(tmp_path / "missing.yaml")  # exit 5 as for every missing file (was 2)


@pytest.mark.parametrize(
    "text, where",
    [
        # the problem and its place, not PyYAML's "while parsing" context
        ("train: [1, 2\n", "line 2, column 1"),
        ("train:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n", "duplicate key 'lr' (line 4, column 3)"),
        ("model:\n  name: fc\nmodel:\n  name: unet\n", "duplicate key 'model' (line 3"),
    ],
)
def test_yaml_errors_say_what_and_where(tmp_path, text, where):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match="not valid YAML") as e:
        load_config_file(f)
    assert where in str(e.value) and "\n" not in str(e.value)


def test_a_yaml_merge_may_override_what_it_merges(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base: &b\n  lr: 0.1\n  steps: 3\ntrain:\n  <<: *b\n  lr: 0.2\n")
    assert load_config_file(f)["train"] == {"lr": 0.2, "steps": 3}


def test_a_repeated_key_in_an_override_is_refused():
    with pytest.raises(UsageError, match=r"cannot use .* as dict \(found duplicate key 'width'"):
        build_config(parse_override("model.kwargs={width: 4, width: 8}"))


def test_duration():
    assert parse_duration("2m") == 120 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(UsageError):
        parse_duration("two minutes")


def test_saved_config_round_trips(tmp_path):
    cfg = build_config({"train": {"lr": 0.005, "steps": 10}, "model": {"kwargs": {"width": 4}}})
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(load_config_file(tmp_path / "config.yaml"))
    assert again == cfg


def test_time_budget_takes_a_duration_in_files_and_dicts_as_on_the_command_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  time_budget: 2m\n")
    assert build_config(load_config_file(f)).train.time_budget == 120
    assert build_config({"train": {"time_budget": "90s"}}).train.time_budget == 90
    assert build_config({"train": {"time_budget": 30}}).train.time_budget == 30
    assert build_config({"train": {"time_budget": "none"}}).train.time_budget is None
    assert build_config({"train": {"time_budget": " none "}}).train.time_budget is None
    f.write_text("train:\n  time_budget: 1e3\n")  # YAML reads 1e3 as a string; it is still a number
    assert build_config(load_config_file(f)).train.time_budget == 1000
    assert parse_duration("1e3") == parse_duration("1000") and parse_duration("1.5e1m") == 900  # as overrides
    with pytest.raises(UsageError, match=r"config field train\.time_budget: bad duration 'soon'"):
        build_config({"train": {"time_budget": "soon"}})


@pytest.mark.parametrize(
    "text, value",
    [
        ("010", 10),  # YAML 1.1 (PyYAML's default) reads octal 8
        ("0o17", 15),
        ("0x1f", 31),
        ("1e-3", 0.001),  # YAML 1.1 reads the string "1e-3"
        ("off", "off"),  # YAML 1.1 reads False, which `noise: off` turned into the noise spec "False"
        ("no", "no"),
        ("true", True),
        ("2026-11-25", "2026-11-25"),  # YAML 1.1 reads a date
        (".inf", float("inf")),
    ],
)
def test_config_yaml_reads_scalars_as_yaml_1_2_does(tmp_path, text, value):
    f = tmp_path / "c.yaml"
    f.write_text(f"a: {text}\n")
    assert load_config_file(f) == {"a": value}
    assert parse_override(f"train.steps={text}") == {"train": {"steps": value}}


@pytest.mark.parametrize("text", ["010", "off", "yes", "1e3", "2026-11-25", "0x1f", "true", "1_000", ""])
def test_written_yaml_reads_back_the_same_here_and_in_yaml_1_1_readers(text, tmp_path):
    import yaml

    from dae.config import dump_yaml

    written = dump_yaml({"note": text})  # not a text field: only the writer's quoting keeps it text
    (tmp_path / "c.yaml").write_text(written)
    assert load_config_file(tmp_path / "c.yaml") == {"note": text}
    assert yaml.safe_load(written) == {"note": text}


def test_a_saved_run_name_that_looks_like_a_number_stays_a_name(tmp_path):
    cfg = build_config({"name": "1e3", "train": {"noise": "gaussian:0.5"}})
    save_config(cfg, tmp_path / "config.yaml")
    assert build_config(load_config_file(tmp_path / "config.yaml")).name == "1e3"


def test_a_toml_suffix_in_capitals_is_read_as_toml(tmp_path):
    f = tmp_path / "C.TOML"
    f.write_text("seed = 7\n[train]\nlr = 0.01\n")
    assert load_config_file(f) == {"seed": 7, "train": {"lr": 0.01}}


def test_a_config_file_too_large_to_be_one_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    import dae.config

    monkeypatch.setattr(dae.config, "MAX_CONFIG_BYTES", 64)
    f = tmp_path / "big.yaml"
    f.write_text("# " + "x" * 100 + "\nseed: 1\n")
    with pytest.raises(UsageError, match=r"big.yaml is larger than .*not a config file"):
        load_config_file(f)
    (tmp_path / "ok.yaml").write_text("seed: 1\n")
    assert load_config_file(tmp_path / "ok.yaml") == {"seed": 1}


def test_a_text_field_keeps_a_plain_value_as_written_as_an_older_dae_wrote_it(tmp_path):
    # yaml.safe_dump (YAML 1.1) wrote these unquoted, as it reads them as text; YAML 1.2 reads numbers.
    f = tmp_path / "config.yaml"
    f.write_text("name: 3e-4\nout: 0o17\ntrain:\n  noise: +.5\n  lr: 3e-4\n  steps: 010\n")
    cfg = build_config(load_config_file(f))
    assert (cfg.name, cfg.out, cfg.train.noise) == ("3e-4", "0o17", "+.5")
    assert (cfg.train.lr, cfg.train.steps) == (3e-4, 10)  # number fields read numbers
    assert build_config(parse_override("name=1e3")).name == "1e3"


@pytest.mark.parametrize("text", ["seed: !!int 0b11\n", "seed: !!int abc\n", "train: {lr: !!float abc}\n"])
def test_an_explicit_tag_that_cannot_be_read_is_a_usage_error(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UsageError, match=r"c.yaml is not valid YAML"):
        load_config_file(f)
